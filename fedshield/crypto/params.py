"""CKKS and packing parameters, with the arithmetic that ties them together.

Why these defaults (docs/crypto.md has the measurements):

- ``poly_degree=8192, coeff_mod_bits=(60, 60)``: one 60-bit data prime plus the
  special prime. The aggregator only adds, so one level is all we need, and a
  serialised ciphertext costs 2 polynomials x N coefficients x 8 bytes whatever the
  prime's size: 32 bytes per slot. 120 bits of modulus is far under the 218 bits that
  128-bit security allows at N=8192 (HomomorphicEncryption.org standard).
- ``scale_bits=18``: measured noise of a fresh public-key encryption at N=8192 is
  about 2**-16 of the scale; a sum of 16 stays below 0.1 of one integer step, so
  slot values decrypt to exact integers after rounding.
- The 60-bit prime leaves ``60 - 18 - 2 = 40`` bits of integer payload per slot,
  packed with two 20-bit signed digits: two quantised values travel in each slot.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# Largest total coefficient modulus (bits) for 128-bit classical security, per the
# HomomorphicEncryption.org standard (the table SEAL enforces as sec_level 128).
MAX_COEFF_BITS_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}

# Decrypted slots are decoded through float64: its 53-bit mantissa caps the payload.
FLOAT64_EXACT_BITS = 53


class CkksParams(BaseModel):
    """Parameters of the CKKS key set (fixed when the keys are created)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    poly_degree: int = Field(8192, description="Polynomial modulus degree N; N/2 slots per ciphertext.")
    coeff_mod_bits: tuple[int, ...] = Field(
        (60, 60), description="Bit sizes of the coefficient primes; the last is the special prime."
    )
    scale_bits: int = Field(18, ge=10, le=40, description="log2 of the CKKS encoding scale.")

    @model_validator(mode="after")
    def _secure_and_usable(self) -> CkksParams:
        limit = MAX_COEFF_BITS_128.get(self.poly_degree)
        if limit is None:
            raise ValueError(f"poly_degree must be one of {sorted(MAX_COEFF_BITS_128)}")
        if len(self.coeff_mod_bits) < 2:
            raise ValueError("coeff_mod_bits needs a data prime and a special prime (SEAL refuses one prime)")
        if any(not 20 <= b <= 60 for b in self.coeff_mod_bits):
            raise ValueError("each coefficient prime must have 20 to 60 bits")
        if sum(self.coeff_mod_bits) > limit:
            raise ValueError(
                f"coeff_mod_bits sum to {sum(self.coeff_mod_bits)} bits: over the {limit} bits "
                f"that 128-bit security allows at poly_degree {self.poly_degree}"
            )
        if self.payload_bits < 8:
            raise ValueError("scale_bits leaves fewer than 8 payload bits in the first data prime")
        return self

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def payload_bits(self) -> int:
        """Bits of signed integer a slot carries: first prime less scale, sign and margin."""
        return min(self.coeff_mod_bits[0] - self.scale_bits - 2, FLOAT64_EXACT_BITS - 2)


class PackingParams(BaseModel):
    """How update values become integers and share slots (same for every silo of a run).

    A silo pre-scales its values by its aggregation weight ``w`` (weights of one round
    sum to at most 1), clips them to ``value_bound``, rounds them to multiples of
    ``step`` and packs ``digits_per_slot`` of them into one slot as signed base-``radix``
    digits. Digit sums over up to ``max_silos`` uploads never carry into the next digit.
    camelCase aliases: it is also ``privacy.packing`` of a FederatedFinetune (fedshield/spec).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)

    value_bound: float = Field(
        2.0**-4, gt=0, description="Largest |value| sent in one round; the excess stays in error feedback."
    )
    digits_per_slot: int = Field(2, ge=1, le=4, description="Quantised values packed into one CKKS slot.")
    rounding: Literal["nearest", "stochastic"] = Field(
        "nearest", description="Rounding to the quantisation step; stochastic is unbiased (error feedback carries the rest)."
    )
    max_silos: int = Field(16, ge=1, le=1024, description="Most uploads one aggregate may sum (a federation raises it to its silo count).")

    def digit_bits(self, ckks: CkksParams) -> int:
        return ckks.payload_bits // self.digits_per_slot

    def radix(self, ckks: CkksParams) -> int:
        return 1 << self.digit_bits(ckks)

    def levels(self, ckks: CkksParams) -> int:
        """Largest |integer| one silo of weight 1 may send.

        A silo of weight ``w`` sends at most ``ceil(w * levels) < w * levels + 1`` (nearest
        or stochastic rounding), so ``n <= max_silos`` uploads whose weights sum to at most 1
        sum to less than ``levels + max_silos = radix / 2``: no digit sum carries.
        """
        levels = self.radix(ckks) // 2 - self.max_silos
        if levels < 16:
            raise ValueError(
                f"{self.digits_per_slot} digits per slot leave only {levels} quantisation levels "
                f"for {self.max_silos} silos: use fewer digits or silos"
            )
        return levels

    def step(self, ckks: CkksParams) -> float:
        """Quantisation step: one integer unit, in update units."""
        return self.value_bound / self.levels(ckks)

    def values_per_ciphertext(self, ckks: CkksParams) -> int:
        return ckks.slots * self.digits_per_slot

    def ciphertexts_for(self, count: int, ckks: CkksParams) -> int:
        return -(-count // self.values_per_ciphertext(ckks))
