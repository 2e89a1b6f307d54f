"""CKKS key sets: create, split into secret (silos) and public (aggregator), save, load.

A key file is a framed record (see ``framing``) holding the TenSEAL context and a
header with the parameters and the key-set fingerprint. The fingerprint is the
SHA-256 of the serialised public context (parameters and public key), so the secret
and the public file of one key set share it, and any other key set differs.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import tenseal as ts

from .errors import FormatError, KeyMismatchError
from .framing import iter_records, read_header, verify_digest, write_framed
from .params import CkksParams

KEY_MAGIC = b"FSHK"
SECRET_FILE = "secret.ckks"
PUBLIC_FILE = "public.ckks"
_MAX_CONTEXT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Keys:
    """A TenSEAL CKKS context with its parameters and fingerprint."""

    context: ts.Context
    params: CkksParams
    fingerprint: str

    @property
    def has_secret_key(self) -> bool:
        return bool(self.context.is_private())

    def public(self) -> Keys:
        """The same key set without the secret key (what the aggregator gets)."""
        ctx = self.context.copy()
        if ctx.is_private():
            ctx.make_context_public()
        return Keys(ctx, self.params, self.fingerprint)

    def to_bytes(self) -> bytes:
        blob = self.context.serialize(
            save_public_key=True,
            save_secret_key=self.has_secret_key,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        header = {
            "kind": "secret" if self.has_secret_key else "public",
            "fingerprint": self.fingerprint,
            "params": self.params.model_dump(mode="json"),
        }
        out = io.BytesIO()
        write_framed(out, KEY_MAGIC, header, [blob])
        return out.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically; secret files are created readable by the owner only."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        mode = 0o600 if self.has_secret_key else 0o644
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.to_bytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path


def fingerprint_of(context: ts.Context) -> str:
    """SHA-256 (hex, 32 chars) of the public part of a context."""
    public = context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(public).hexdigest()[:32]


def create_keys(params: CkksParams | None = None) -> Keys:
    """A new key set holding the secret key."""
    params = params or CkksParams()
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bits),
        encryption_type=ts.ENCRYPTION_TYPE.ASYMMETRIC,
    )
    ctx.global_scale = 2.0**params.scale_bits
    ctx.auto_rescale = False  # one data level: only additions ever happen
    return Keys(ctx, params, fingerprint_of(ctx))


def keys_from_bytes(data: bytes) -> Keys:
    """Load a key file's bytes, checking checksum, parameters and fingerprint."""
    src = io.BytesIO(data)
    header = read_header(src, KEY_MAGIC, "key file")
    verify_digest(src, 1, _MAX_CONTEXT_BYTES, "key file")
    src.seek(0)
    read_header(src, KEY_MAGIC, "key file")
    (blob,) = iter_records(src, 1, _MAX_CONTEXT_BYTES, "key file")
    try:
        params = CkksParams.model_validate(header.get("params"))
        ctx = ts.context_from(blob)
    except Exception as exc:  # pydantic or TenSEAL parse errors
        raise FormatError(f"key file is unreadable: {exc}") from None
    ctx.global_scale = 2.0**params.scale_bits
    ctx.auto_rescale = False
    fingerprint = fingerprint_of(ctx)
    if fingerprint != header.get("fingerprint"):
        raise KeyMismatchError(
            f"key file claims fingerprint {header.get('fingerprint')!r} but its key is {fingerprint}"
        )
    if (header.get("kind") == "secret") != ctx.is_private():
        raise FormatError(f"key file says {header.get('kind')!r} but {'holds' if ctx.is_private() else 'lacks'} a secret key")
    return Keys(ctx, params, fingerprint)


def load_keys(path: str | os.PathLike[str]) -> Keys:
    return keys_from_bytes(Path(path).read_bytes())


def write_key_pair(keys: Keys, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``secret.ckks`` (silos) and ``public.ckks`` (aggregator) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return keys.save(out / SECRET_FILE), keys.public().save(out / PUBLIC_FILE)
