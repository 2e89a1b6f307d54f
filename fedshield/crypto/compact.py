"""Drop the 4 always-zero bits of every ciphertext coefficient: 8 bytes -> 7.5 bytes.

SEAL stores each coefficient (a residue below a prime of at most 60 bits) in a
64-bit word and TenSEAL's zstd pass cannot see the pattern, so 1/16 of every
serialised ciphertext is zeros. This module rewrites one TenSEAL ``CKKSVector``
serialisation as

    SEAL ciphertext head (73 bytes of members + 24 bytes of array header) | coefficients, 60 bits each

and back. The layout it relies on is SEAL 4's (the one TenSEAL 0.3.18 ships):

    TenSEAL proto:  field 1 size (packed uint32) | field 2 SEAL blob | field 3 scale (double)
    SEAL blob:      16-byte header (magic 0xA15E, compression mode, total size) | body
    body:           parms_id (32) | is_ntt_form (1) | size, N, L (3 x u64) | scale (f64)
                    | correction factor (u64) | array: 16-byte header | count (u64) | count x u64

Anything else is refused with a :class:`CiphertextError`, never guessed at.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from .errors import CiphertextError

SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compression, reserved, total size
_MEMBERS = struct.Struct("<32sBQQQdQ")  # parms_id, is_ntt_form, size, N, L, scale, correction factor
HEAD_BYTES = _MEMBERS.size + _SEAL_HEADER.size + 8
COMPRESSION_NONE, COMPRESSION_ZSTD = 0, 2
_MAX_BODY = 1 << 26


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while i < len(buf) and shift < 64:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i
    raise CiphertextError("malformed TenSEAL serialisation (bad varint)")


def _seal_blob(tenseal_bytes: bytes) -> bytes:
    """The SEAL ciphertext inside a TenSEAL CKKSVector serialisation (field 2)."""
    i, blob = 0, None
    while i < len(tenseal_bytes):
        key, i = _read_varint(tenseal_bytes, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            length, i = _read_varint(tenseal_bytes, i)
            if field == 2:
                blob = tenseal_bytes[i : i + length]
            i += length
        elif wire == 1:
            i += 8
        elif wire == 0:
            _, i = _read_varint(tenseal_bytes, i)
        else:
            raise CiphertextError(f"unexpected protobuf wire type {wire} in TenSEAL serialisation")
    if blob is None:
        raise CiphertextError("TenSEAL serialisation holds no ciphertext")
    return blob


def _seal_body(blob: bytes) -> bytes:
    if len(blob) < _SEAL_HEADER.size:
        raise CiphertextError("SEAL ciphertext shorter than its header")
    magic, header_size, _, _, compression, _, total = _SEAL_HEADER.unpack_from(blob)
    if magic != SEAL_MAGIC or header_size != _SEAL_HEADER.size or total != len(blob):
        raise CiphertextError("not a SEAL ciphertext (bad magic, header size or length)")
    body = blob[_SEAL_HEADER.size :]
    if compression == COMPRESSION_ZSTD:
        try:
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=_MAX_BODY)
        except zstandard.ZstdError as exc:
            raise CiphertextError(f"SEAL ciphertext does not decompress: {exc}") from None
    if compression == COMPRESSION_NONE:
        return body
    raise CiphertextError(f"SEAL compression mode {compression} is not supported")


def _coefficient_count(head: bytes) -> int:
    _, _, size, degree, levels, _, _ = _MEMBERS.unpack_from(head)
    count = struct.unpack_from("<Q", head, HEAD_BYTES - 8)[0]
    if count != size * degree * levels or count > _MAX_BODY // 8:
        raise CiphertextError(f"SEAL ciphertext holds {count} coefficients, expected {size}x{degree}x{levels}")
    return int(count)


def _row_views(buf: bytes | bytearray | memoryview, offset: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Two unaligned uint64 views of 15-byte rows: bytes 0-7 and bytes 7-14 of each row."""
    first = np.ndarray((rows,), dtype="<u8", buffer=buf, offset=offset, strides=(15,))
    last = np.ndarray((rows,), dtype="<u8", buffer=buf, offset=offset + 7, strides=(15,))
    return first, last


def compact(tenseal_bytes: bytes) -> bytes:
    """A TenSEAL CKKSVector serialisation, rewritten with 60-bit coefficients.

    Each pair of coefficients (a, b) becomes 15 bytes: ``a | b << 60`` (8 bytes)
    followed by ``b >> 4`` (7 bytes).
    """
    body = _seal_body(_seal_blob(tenseal_bytes))
    head = body[:HEAD_BYTES]
    count = _coefficient_count(head) if len(head) == HEAD_BYTES else -1
    if len(body) != HEAD_BYTES + 8 * count:
        raise CiphertextError("SEAL ciphertext layout is not the one this build knows (SEAL 4)")
    pairs = np.frombuffer(body, dtype="<u8", offset=HEAD_BYTES).reshape(-1, 2)
    if count % 2 or (pairs >> np.uint64(60)).any():
        raise CiphertextError("SEAL coefficients do not fit in 60 bits")
    out = bytearray(HEAD_BYTES + pairs.shape[0] * 15)
    out[:HEAD_BYTES] = head
    first, last = _row_views(out, HEAD_BYTES, pairs.shape[0])
    last[:] = (pairs[:, 0] >> np.uint64(56)) | (pairs[:, 1] << np.uint64(4))
    first[:] = pairs[:, 0] | (pairs[:, 1] << np.uint64(60))
    return bytes(out)


def expand(record: bytes, slots: int, scale: float) -> bytes:
    """Inverse of :func:`compact`: a TenSEAL CKKSVector serialisation of ``slots`` values."""
    head = record[:HEAD_BYTES]
    if len(head) != HEAD_BYTES:
        raise CiphertextError("compact ciphertext shorter than its head")
    count = _coefficient_count(head)
    if count % 2 or len(record) != HEAD_BYTES + count // 2 * 15:
        raise CiphertextError(f"compact ciphertext has {len(record)} bytes, its head announces {count} coefficients")
    # The coefficient array's own SEAL header carries the SEAL version: reuse it.
    _, _, major, minor, _, _, _ = _SEAL_HEADER.unpack_from(head, _MEMBERS.size)
    blob_len = _SEAL_HEADER.size + HEAD_BYTES + 8 * count
    size_field = _varint(slots)
    prefix = b"\x0a" + _varint(len(size_field)) + size_field + b"\x12" + _varint(blob_len)
    prefix += _SEAL_HEADER.pack(SEAL_MAGIC, _SEAL_HEADER.size, major, minor, COMPRESSION_NONE, 0, blob_len) + head
    out = bytearray(len(prefix) + 8 * count + 9)
    out[: len(prefix)] = prefix
    out[len(prefix) + 8 * count :] = b"\x19" + struct.pack("<d", scale)
    first, last = _row_views(record, HEAD_BYTES, count // 2)
    pairs = np.ndarray((count // 2, 2), dtype="<u8", buffer=out, offset=len(prefix))
    np.bitwise_and(first, np.uint64((1 << 60) - 1), out=pairs[:, 0])
    np.bitwise_or(first >> np.uint64(60), (last >> np.uint64(8)) << np.uint64(4), out=pairs[:, 1])
    return bytes(out)
