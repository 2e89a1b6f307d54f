"""Who is calling: a silo identity from the client certificate (mutual TLS) or from a bearer token.

Token file (aggregator side) is JSON ``{"<silo>": "sha256:<hex>"}``: only hashes of the
tokens are stored. A presented token is hashed and compared with *every* silo's hash in
constant time (``hmac.compare_digest``), so timing tells neither the token nor the silo.
Silo side, a token file holds the bare token (one line).

Pinning (mutual TLS): a CA such as a cluster-wide cert-manager issuer may sign certificates for
many federations, so a Common Name alone does not make a silo. An aggregator given its
federation (``namespace/name``) accepts a client certificate as silo ``<cn>`` only if it also
carries the URI SAN ``silo_uri(namespace, name, cn)``. Observers (the operator) are named by URI
SAN too and may only read status and the unlearning ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .tls import certificate_identity, certificate_uris

TOKEN_PREFIX = "sha256:"
TRUST_DOMAIN = "fedshield.io"


def silo_uri(namespace: str, federation: str, silo: str) -> str:
    """The URI SAN that makes a client certificate silo ``silo`` of federation ``namespace/federation``."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/federation/{federation}/silo/{silo}"


def observer_uri(namespace: str, service_account: str) -> str:
    """The URI SAN of an observer (the operator's ServiceAccount) at aggregators."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def hash_token(token: str) -> str:
    return TOKEN_PREFIX + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenStore:
    hashes: dict[str, str]  # silo -> "sha256:<hex>"

    @classmethod
    def load(cls, path: str | Path) -> TokenStore:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not all(isinstance(v, str) and v.startswith(TOKEN_PREFIX) for v in data.values()):
            raise ValueError(f"{path}: expected a JSON object silo -> 'sha256:<hex>'")
        return cls(dict(data))

    def identify(self, token: str) -> str | None:
        presented = hash_token(token).encode()
        found = None
        for silo, stored in self.hashes.items():
            if hmac.compare_digest(presented, stored.encode()) and found is None:
                found = silo
        return found


def create_tokens(directory: str | Path, silos: list[str] | tuple[str, ...]) -> Path:
    """A random token per silo (``silos/<name>.token``, mode 0600) and the aggregator's ``tokens.json`` of hashes."""
    directory = Path(directory)
    (directory / "silos").mkdir(parents=True, exist_ok=True)
    hashes = {}
    for silo in silos:
        token = secrets.token_urlsafe(32)
        fd = os.open(directory / "silos" / f"{silo}.token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        hashes[silo] = hash_token(token)
    path = directory / "tokens.json"
    path.write_text(json.dumps(hashes, indent=2))
    return path


def read_token(path: str | Path) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path} holds no token")
    return token


@dataclass(frozen=True)
class Authenticator:
    """Resolves a request's silo identity. ``required`` is False only for plain-HTTP test runs."""

    mutual_tls: bool = False
    tokens: TokenStore | None = None
    federation: str | None = None  # "namespace/name": a silo certificate must carry silo_uri() of it (None: the CN suffices)
    observers: frozenset[str] = frozenset()  # URI SANs of read-only observers

    @property
    def required(self) -> bool:
        return self.mutual_tls or self.tokens is not None

    @staticmethod
    def _peer(scope: dict) -> str | None:
        chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
        return chain[0] if chain else None

    def is_observer(self, scope: dict) -> bool:
        """Whether the caller presented a verified certificate naming one of the observers."""
        pem = self._peer(scope) if self.mutual_tls else None
        return pem is not None and any(uri in self.observers for uri in certificate_uris(pem))

    def identify(self, scope: dict, authorization: str | None) -> tuple[str | None, str]:
        """(silo, "") when authenticated, else (None, why)."""
        pem = self._peer(scope) if self.mutual_tls else None
        if pem is not None:
            silo = certificate_identity(pem)
            if not silo:
                return None, "the client certificate has no single Common Name"
            if self.federation is not None:
                namespace, _, name = self.federation.partition("/")
                if silo_uri(namespace, name, silo) not in certificate_uris(pem):
                    return None, f"the client certificate is not pinned to federation {self.federation} (URI SAN {silo_uri(namespace, name, silo)})"
            return silo, ""
        if self.tokens is not None and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None, "the Authorization header must be 'Bearer <token>'"
            silo = self.tokens.identify(token.strip())
            return (silo, "") if silo else (None, "unknown bearer token")
        wanted = " or ".join(w for w, on in (("a client certificate", self.mutual_tls), ("a bearer token", self.tokens)) if on)
        return None, f"this aggregator requires {wanted}"
