"""The versioned, self-describing container for encrypted updates and aggregates.

An envelope is a framed file (see ``framing``) whose JSON header says what it holds
(kind, format version, key fingerprint, round, silo, value count, ciphertext count,
packing, weights) and whose records are serialised TenSEAL CKKS vectors. Readers
stream it: the checksum pass and the ciphertext pass each hold one record at a time.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import FormatError, KeyMismatchError, LengthMismatchError, RoundMismatchError
from .framing import FORMAT_VERSION, iter_records, read_header, verify_digest, write_framed
from .params import CkksParams, PackingParams

ENVELOPE_MAGIC = b"FSHE"
SILO_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label, like a Kubernetes name
AGGREGATE_SILO = "aggregate"


def max_ciphertext_bytes(ckks: CkksParams) -> int:
    """Upper bound of one serialised ciphertext: 2 polynomials x N x 8 bytes per prime, plus framing."""
    return 2 * ckks.poly_degree * 8 * len(ckks.coeff_mod_bits) + 4096


class EnvelopeHeader(BaseModel):
    """Plaintext metadata that travels with the ciphertexts (everything here is public)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    kind: Literal["update", "aggregate"]
    fingerprint: str = Field(pattern=r"^[0-9a-f]{32}$")
    round: int = Field(ge=0)
    silo: str
    count: int = Field(ge=1, description="Number of values (kept coordinates) encrypted.")
    n_ciphertexts: int = Field(ge=1)
    ckks: CkksParams
    packing: PackingParams
    weight: float = Field(gt=0, le=1, description="Update: the silo's aggregation weight. Aggregate: their sum.")
    contributors: tuple[str, ...] = ()
    layout: str | None = Field(None, description="Digest of the update vector's layout (names, shapes).")

    @model_validator(mode="after")
    def _consistent(self) -> EnvelopeHeader:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is not supported (this build reads {FORMAT_VERSION})")
        if self.kind == "update" and not SILO_NAME.match(self.silo):
            raise ValueError(f"silo name {self.silo!r} is not a DNS label")
        if self.kind == "aggregate" and (self.silo != AGGREGATE_SILO or not self.contributors):
            raise ValueError("an aggregate names silo 'aggregate' and at least one contributor")
        expected = self.packing.ciphertexts_for(self.count, self.ckks)
        if self.n_ciphertexts != expected:
            raise ValueError(f"{self.count} values need {expected} ciphertexts, header says {self.n_ciphertexts}")
        return self

    def check(
        self,
        *,
        fingerprint: str,
        round: int | None = None,
        count: int | None = None,
        layout: str | None = None,
    ) -> None:
        """Raise a named error when this envelope is not the one expected."""
        if self.fingerprint != fingerprint:
            raise KeyMismatchError(
                f"envelope from silo {self.silo!r} was encrypted under key set {self.fingerprint}, not {fingerprint}"
            )
        if round is not None and self.round != round:
            raise RoundMismatchError(f"envelope from silo {self.silo!r} is for round {self.round}, expected round {round}")
        if count is not None and self.count != count:
            raise LengthMismatchError(f"envelope from silo {self.silo!r} holds {self.count} values, expected {count}")
        if layout is not None and self.layout is not None and self.layout != layout:
            raise LengthMismatchError(f"envelope layout {self.layout} differs from the expected {layout}")


class EnvelopeReader:
    """Checked, streaming access to an envelope held in a file or in memory.

    Opening verifies structure and checksum in one bounded-memory pass; only then
    are ciphertexts handed out, one at a time.
    """

    def __init__(self, src: BinaryIO):
        self._src = src
        try:
            self.header = EnvelopeHeader.model_validate(read_header(src, ENVELOPE_MAGIC, "envelope"))
        except ValidationError as exc:
            raise FormatError(f"envelope header is invalid: {_first_error(exc)}") from None
        self._max_record = max_ciphertext_bytes(self.header.ckks)
        verify_digest(src, self.header.n_ciphertexts, self._max_record, "envelope")

    @classmethod
    def from_bytes(cls, data: bytes) -> EnvelopeReader:
        return cls(io.BytesIO(data))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EnvelopeReader:
        return cls(open(path, "rb"))

    def ciphertexts(self) -> Iterator[bytes]:
        self._src.seek(0)
        read_header(self._src, ENVELOPE_MAGIC, "envelope")
        yield from iter_records(self._src, self.header.n_ciphertexts, self._max_record, "envelope")

    def close(self) -> None:
        self._src.close()

    def __enter__(self) -> EnvelopeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_envelope(out: BinaryIO, header: EnvelopeHeader, ciphertexts: Iterator[bytes] | list[bytes]) -> int:
    return write_framed(out, ENVELOPE_MAGIC, header.model_dump(mode="json"), ciphertexts)


def envelope_bytes(header: EnvelopeHeader, ciphertexts: list[bytes]) -> bytes:
    out = io.BytesIO()
    write_envelope(out, header, ciphertexts)
    return out.getvalue()


def save_envelope(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomic write (temporary file, fsync, rename): a crash never leaves half an envelope."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "header"
    return f"{where}: {err.get('msg')}"
