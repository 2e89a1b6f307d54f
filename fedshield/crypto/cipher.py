"""Encrypt a silo's kept update values, sum uploads homomorphically, decrypt the aggregate.

The three steps of a round, as the three parties see them:

- silo: :func:`encrypt_update` pre-scales by the silo's aggregation weight,
  quantises, packs and encrypts with the *public* key;
- aggregator: :class:`EncryptedSum` adds uploads slot by slot with a public
  context, one upload at a time (memory does not grow with the number of silos);
- silo: :func:`decrypt_envelope` decrypts with the secret key and divides by the
  sum of the contributors' weights, giving their weighted average.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts

from .compact import compact, expand
from .envelope import AGGREGATE_SILO, EnvelopeHeader, EnvelopeReader, envelope_bytes
from .errors import CiphertextError, FormatError, LengthMismatchError, SecretKeyMissingError
from .keys import Keys
from .packing import dequantise, pack, quantise, unpack
from .params import PackingParams

WEIGHT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class EncryptedUpdate:
    """An upload ready to send, and the values it stands for (for error feedback)."""

    data: bytes
    sent: np.ndarray
    encrypt_s: float


def encrypt_update(
    keys: Keys,
    values: np.ndarray,
    *,
    weight: float,
    round: int,
    silo: str,
    packing: PackingParams | None = None,
    layout: str | None = None,
    rng: np.random.Generator | None = None,
) -> EncryptedUpdate:
    """Encrypt the kept values of one silo's update for one round.

    ``sent`` holds what the aggregate will count for this silo (clipped to
    ``packing.value_bound`` and rounded to the quantisation step), so that
    ``values - sent`` can be carried to the next round as error feedback. Under
    ``packing.rounding == "stochastic"`` the rounding draws from ``rng`` (OS entropy if None).
    """
    packing = packing or PackingParams()
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise LengthMismatchError("an update needs at least one value")
    if not np.all(np.isfinite(values)):
        raise ValueError("update values must be finite (found NaN or infinity)")
    ckks = keys.params
    start = time.perf_counter()
    step = packing.step(ckks)
    if packing.rounding == "stochastic":
        rng = rng or np.random.default_rng()
    else:
        rng = None
    ints = quantise(values, weight, packing.value_bound, step, rng)
    slots = pack(ints, packing.digits_per_slot, packing.radix(ckks), ckks.slots)
    blobs = [compact(ts.ckks_vector(keys.context, row).serialize()) for row in slots]
    header = EnvelopeHeader(
        kind="update",
        fingerprint=keys.fingerprint,
        round=round,
        silo=silo,
        count=values.size,
        n_ciphertexts=len(blobs),
        ckks=ckks,
        packing=packing,
        weight=weight,
        layout=layout,
    )
    data = envelope_bytes(header, blobs)
    return EncryptedUpdate(data, dequantise(ints, weight, step), time.perf_counter() - start)


def _load_ciphertext(keys: Keys, blob: bytes, index: int, silo: str) -> ts.CKKSVector:
    try:
        vec = ts.ckks_vector_from(keys.context, expand(blob, keys.params.slots, 2.0**keys.params.scale_bits))
    except Exception as exc:  # TenSEAL raises ValueError or RuntimeError on bad data
        raise CiphertextError(f"ciphertext {index} from silo {silo!r} does not load under this key set: {exc}") from None
    if vec.size() != keys.params.slots:
        raise CiphertextError(f"ciphertext {index} from silo {silo!r} has {vec.size()} slots, expected {keys.params.slots}")
    (raw,) = vec.data.ciphertext()
    if raw.size() != 2 or raw.scale != 2.0**keys.params.scale_bits:
        raise CiphertextError(
            f"ciphertext {index} from silo {silo!r} has {raw.size()} polynomials at scale {raw.scale}, "
            f"expected 2 at 2^{keys.params.scale_bits}"
        )
    return vec


@dataclass
class EncryptedSum:
    """Streaming homomorphic sum of one round's uploads (public context suffices).

    Each :meth:`add` either takes a whole upload or, on any error, leaves the sum
    exactly as it was.
    """

    keys: Keys
    round: int
    count: int
    packing: PackingParams = field(default_factory=PackingParams)
    layout: str | None = None
    contributors: list[str] = field(default_factory=list)
    weight_sum: float = 0.0
    _sum: list[ts.CKKSVector] | None = None

    def add(self, upload: EnvelopeReader) -> None:
        head = upload.header
        head.check(fingerprint=self.keys.fingerprint, round=self.round, count=self.count, layout=self.layout)
        if head.kind != "update":
            raise FormatError(f"expected a silo update, got an envelope of kind {head.kind!r}")
        if head.ckks != self.keys.params or head.packing != self.packing:
            raise FormatError(f"upload from silo {head.silo!r} uses other CKKS or packing parameters than this round")
        if head.silo in self.contributors:
            raise FormatError(f"silo {head.silo!r} is already in this round's sum")
        if len(self.contributors) >= self.packing.max_silos:
            raise FormatError(f"the sum already holds max_silos={self.packing.max_silos} uploads")
        if self.weight_sum + head.weight > 1.0 + WEIGHT_TOLERANCE:
            raise FormatError(
                f"weights would sum to {self.weight_sum + head.weight:.6f} > 1 with silo {head.silo!r}; "
                "the packing only tolerates weights summing to at most 1"
            )
        # Load (and so validate) the whole upload before touching the running sum.
        incoming = [_load_ciphertext(self.keys, blob, i, head.silo) for i, blob in enumerate(upload.ciphertexts())]
        if self._sum is None:
            self._sum = incoming
        else:
            for acc, vec in zip(self._sum, incoming, strict=True):
                acc += vec
        self.contributors.append(head.silo)
        self.weight_sum += head.weight

    def header(self) -> EnvelopeHeader:
        if self._sum is None:
            raise ValueError("no upload has been added to this round's sum")
        return EnvelopeHeader(
            kind="aggregate",
            fingerprint=self.keys.fingerprint,
            round=self.round,
            silo=AGGREGATE_SILO,
            count=self.count,
            n_ciphertexts=len(self._sum),
            ckks=self.keys.params,
            packing=self.packing,
            weight=min(self.weight_sum, 1.0),
            contributors=tuple(self.contributors),
            layout=self.layout,
        )

    def to_bytes(self) -> bytes:
        header = self.header()
        return envelope_bytes(header, [compact(vec.serialize()) for vec in self._sum or []])


def decrypt_envelope(
    keys: Keys,
    envelope: EnvelopeReader,
    *,
    round: int | None = None,
    count: int | None = None,
    layout: str | None = None,
) -> np.ndarray:
    """Decrypt an aggregate (or an update) to the weighted average of what was sent."""
    if not keys.has_secret_key:
        raise SecretKeyMissingError("this context holds no secret key: only a silo can decrypt")
    head = envelope.header
    head.check(fingerprint=keys.fingerprint, round=round, count=count, layout=layout)
    if head.ckks != keys.params:
        raise FormatError("envelope uses other CKKS parameters than this key set")
    slot_values = np.concatenate(
        [np.asarray(_load_ciphertext(keys, blob, i, head.silo).decrypt()) for i, blob in enumerate(envelope.ciphertexts())]
    )
    ints = unpack(slot_values, head.packing.digits_per_slot, head.packing.radix(keys.params), head.count)
    return ints.astype(np.float64) * (head.packing.step(keys.params) / head.weight)
