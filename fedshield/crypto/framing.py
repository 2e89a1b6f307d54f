"""Binary framing shared by FedShield's files: magic, version, JSON header, records, checksum.

Layout::

    magic (4 bytes) | version (u16, big-endian) | header length (u32) | header (UTF-8 JSON)
    record*: length (u32) | bytes
    sha256 of everything before it (32 bytes)
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from .errors import ChecksumError, FormatError

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
_PREFIX = struct.Struct(">4sHI")
_LENGTH = struct.Struct(">I")
DIGEST_BYTES = 32


def write_framed(out: BinaryIO, magic: bytes, header: dict[str, Any], records: Iterable[bytes]) -> int:
    """Write a framed file to ``out``; returns the number of bytes written."""
    digest = hashlib.sha256()
    written = 0

    def emit(chunk: bytes) -> None:
        nonlocal written
        out.write(chunk)
        digest.update(chunk)
        written += len(chunk)

    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    emit(_PREFIX.pack(magic, FORMAT_VERSION, len(header_bytes)))
    emit(header_bytes)
    for record in records:
        emit(_LENGTH.pack(len(record)))
        emit(record)
    out.write(digest.digest())
    return written + DIGEST_BYTES


def _read_exact(src: BinaryIO, n: int, what: str) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise FormatError(f"truncated: expected {n} bytes of {what}, got {len(data)}")
    return data


def read_header(src: BinaryIO, magic: bytes, what: str) -> dict[str, Any]:
    """Read and check the prefix and JSON header; ``src`` is left at the first record."""
    prefix = src.read(_PREFIX.size)
    if len(prefix) != _PREFIX.size:
        raise FormatError(f"truncated: not a {what} (only {len(prefix)} bytes)")
    got_magic, version, header_len = _PREFIX.unpack(prefix)
    if got_magic != magic:
        raise FormatError(f"not a {what}: magic {got_magic!r}, expected {magic!r}")
    if version != FORMAT_VERSION:
        raise FormatError(f"{what} format version {version} is not supported (this build reads {FORMAT_VERSION})")
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"{what} header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    raw = _read_exact(src, header_len, f"{what} header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{what} header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{what} header must be a JSON object")
    return header


def iter_records(src: BinaryIO, count: int, max_record: int, what: str) -> Iterator[bytes]:
    """Yield ``count`` length-prefixed records, refusing any longer than ``max_record``."""
    for i in range(count):
        (length,) = _LENGTH.unpack(_read_exact(src, _LENGTH.size, f"{what} record {i} length"))
        if length > max_record:
            raise FormatError(f"{what} record {i} has {length} bytes, over the limit of {max_record}")
        yield _read_exact(src, length, f"{what} record {i}")


def verify_digest(src: BinaryIO, record_count: int, max_record: int, what: str) -> None:
    """Stream the whole framed file from its start and check structure and checksum.

    Reads in bounded chunks, so memory stays small whatever the file size. Leaves
    ``src`` at its end.
    """
    src.seek(0)
    digest = hashlib.sha256()
    prefix = _read_exact(src, _PREFIX.size, f"{what} prefix")
    digest.update(prefix)
    header_len = _PREFIX.unpack(prefix)[2]
    digest.update(_read_exact(src, header_len, f"{what} header"))
    for i in range(record_count):
        length_bytes = _read_exact(src, _LENGTH.size, f"{what} record {i} length")
        digest.update(length_bytes)
        (length,) = _LENGTH.unpack(length_bytes)
        if length > max_record:
            raise FormatError(f"{what} record {i} has {length} bytes, over the limit of {max_record}")
        remaining = length
        while remaining:
            chunk = _read_exact(src, min(remaining, 1 << 20), f"{what} record {i}")
            digest.update(chunk)
            remaining -= len(chunk)
    stored = _read_exact(src, DIGEST_BYTES, f"{what} checksum")
    if src.read(1):
        raise FormatError(f"{what} has trailing bytes after its checksum")
    if stored != digest.digest():
        raise ChecksumError(f"{what} checksum mismatch: the bytes were corrupted or altered")
