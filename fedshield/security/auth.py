"""Who is calling: a silo identity from the client certificate (mutual TLS) or from a bearer token.

Token file (aggregator side) is JSON ``{"<silo>": "sha256:<hex>"}``: only hashes of the
tokens are stored. A presented token is hashed and compared with *every* silo's hash in
constant time (``hmac.compare_digest``), so timing tells neither the token nor the silo.
Silo side, a token file holds the bare token (one line).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .tls import certificate_identity

TOKEN_PREFIX = "sha256:"


def hash_token(token: str) -> str:
    return TOKEN_PREFIX + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenStore:
    hashes: dict[str, str]  # silo -> "sha256:<hex>"

    @classmethod
    def load(cls, path: str | Path) -> "TokenStore":
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

    @property
    def required(self) -> bool:
        return self.mutual_tls or self.tokens is not None

    def identify(self, scope: dict, authorization: str | None) -> tuple[str | None, str]:
        """(silo, "") when authenticated, else (None, why)."""
        if self.mutual_tls:
            chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain") or []
            if chain:
                silo = certificate_identity(chain[0])
                return (silo, "") if silo else (None, "the client certificate has no single Common Name")
        if self.tokens is not None and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None, "the Authorization header must be 'Bearer <token>'"
            silo = self.tokens.identify(token.strip())
            return (silo, "") if silo else (None, "unknown bearer token")
        wanted = " or ".join(w for w, on in (("a client certificate", self.mutual_tls), ("a bearer token", self.tokens)) if on)
        return None, f"this aggregator requires {wanted}"
