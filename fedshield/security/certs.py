"""A small certificate authority for local runs: CA, aggregator server certificate, per-silo client certificates.

A silo's identity is the **Common Name** of its client certificate's subject, which must be
exactly the silo's name (a DNS label). The same name is also written as a DNS SAN so that
certificates issued by cert-manager (``commonName`` + ``dnsNames``) look the same.
Keys are ECDSA P-256; files are PEM, private keys written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .auth import silo_uri

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "aggregator.crt", "aggregator.key"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class SiloFiles:
    """What a silo needs for mutual TLS: the CA to trust, its certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / CA_KEY} is not an EC private key")
    return cert, key


def create_ca(directory: Path, name: str = "FedShield local CA", days: int = 365) -> Issued:
    """A self-signed CA (path length 0: it signs leaf certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = Issued(directory / CA_CERT, directory / CA_KEY)
    _write_key(issued.key, key)
    _write_cert(issued.cert, cert)
    return issued


def _san(hosts: tuple[str, ...] | list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(directory: Path, common_name: str, hosts: tuple[str, ...] | list[str], *, server: bool, stem: str,
          days: int = 90, not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
          uris: tuple[str, ...] | list[str] = ()) -> Issued:
    """A leaf certificate signed by the CA in ``directory``, written as ``<stem>.crt`` / ``<stem>.key``."""
    ca_cert, ca_key = load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(not_after or start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san(hosts) + [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write_key(issued.key, key)
    _write_cert(issued.cert, cert)
    return issued


def issue_server(directory: Path, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS) -> Issued:
    return issue(directory, "fedshield-aggregator", hosts, server=True, stem="aggregator")


def issue_silo(directory: Path, silo: str, federation: str | None = None, **validity) -> SiloFiles:
    """A client certificate whose CN (and DNS SAN) is the silo's name; pinned to ``federation`` ("namespace/name") by its URI SAN."""
    uris: list[str] = []
    if federation:
        namespace, name = federation.split("/", 1)
        uris = [silo_uri(namespace, name, silo)]
    issued = issue(directory, silo, [silo], server=False, stem=f"silos/{silo}", uris=uris, **validity)
    return SiloFiles(directory / CA_CERT, issued.cert, issued.key)


def issue_observer(directory: Path, uri: str, name: str = "fedshield-operator") -> SiloFiles:
    """A client certificate for a read-only observer (the operator), named by its URI SAN."""
    issued = issue(directory, name, [], server=False, stem=f"observers/{name}", uris=[uri])
    return SiloFiles(directory / CA_CERT, issued.cert, issued.key)


def silo_files(directory: Path, silo: str) -> SiloFiles:
    return SiloFiles(directory / CA_CERT, directory / "silos" / f"{silo}.crt", directory / "silos" / f"{silo}.key")


def issue_all(directory: str | Path, silos: list[str] | tuple[str, ...], hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS,
              federation: str | None = None) -> dict:
    """CA (created unless present), server certificate for ``hosts``, one client certificate per silo (pinned to
    ``federation``, "namespace/name", when given)."""
    directory = Path(directory)
    if not (directory / CA_CERT).exists():
        create_ca(directory)
    server = issue_server(directory, hosts)
    return {
        "ca": str(directory / CA_CERT), "server_cert": str(server.cert), "server_key": str(server.key),
        "silos": {s: {"cert": str(f.cert), "key": str(f.key)} for s in silos for f in [issue_silo(directory, s, federation)]},
    }
