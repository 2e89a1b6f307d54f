"""TLS for the aggregator (server side) and the silo client.

Server: TLS 1.2+, the aggregator's certificate, and (for mutual TLS) the CA that signs silo
certificates with ``CERT_OPTIONAL``: a client that presents a certificate must present a valid
one (else the handshake fails), and one that presents none still reaches /healthz and /readyz
but gets 401 on every /v1 route. Liveness probes need no client certificate that way.

uvicorn does not put the peer certificate into the ASGI scope, so ``TLSH11Protocol`` (passed
as uvicorn's ``http`` protocol class) fills the ASGI TLS extension,
``scope["extensions"]["tls"]["client_cert_chain"]``, once per connection after the handshake.
The app reads only that standard key, so it does not depend on uvicorn internals.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ServerTLS:
    cert: Path
    key: Path
    client_ca: Path | None = None  # None: server-side TLS only (identities from bearer tokens)


def server_context(tls: ServerTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.client_ca is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None) -> ssl.SSLContext:
    """Trust only ``ca`` for the aggregator's certificate; present ``cert``/``key`` for mutual TLS."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def uvicorn_ssl_options(tls: ServerTLS | None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run``: the SSL context and the TLS-aware protocol."""
    if tls is None:
        return {}
    context = server_context(tls)
    return {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key),
            "ssl_context_factory": lambda _config, _default: context, "http": TLSH11Protocol}


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection (None when it is not TLS)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    cipher = ssl_object.cipher()
    return {"server_cert": None, "client_cert_chain": chain, "client_cert_name": None, "client_cert_error": None,
            "tls_version": None, "cipher_suite": None, "fedshield_tls_version": ssl_object.version(),
            "fedshield_cipher": cipher[0] if cipher else None}


class TLSH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the ASGI TLS extension (with the verified peer certificate) to each request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is None:
            return
        app = self.app

        async def with_tls(scope, receive, send):
            scope.setdefault("extensions", {})
            scope["extensions"] = {**(scope["extensions"] or {}), "tls": tls}
            await app(scope, receive, send)

        self.app = with_tls


@functools.lru_cache(maxsize=1024)
def certificate_uris(pem: str) -> tuple[str, ...]:
    """The URI subject alternative names of a certificate (where a federation pins its silos' identities)."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


@functools.lru_cache(maxsize=1024)
def certificate_identity(pem: str) -> str | None:
    """A client certificate's identity: the Common Name of its subject (None without exactly one CN)."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else None
