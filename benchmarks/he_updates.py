"""Encrypted LoRA updates: FedShield's pruned, packed CKKS against a naive dense baseline.

Adapter: Llama-2-7B-shaped LoRA (r=16 on q, k, v, o; 32 layers of width 4096:
16.8M parameters) with synthetic values of realistic scale (|x| <= 1e-2); no model
is needed. ``--quick`` uses 4 layers of width 1024, r=8 (262k parameters).

- fedshield: the round's shared mask keeps a fraction 1-p of the coordinates; each of
  10 silos quantises, packs 2 values per slot and encrypts only those (N=8192,
  one 60-bit data prime); the aggregator sums with the public context; a silo decrypts.
- fedshield_4digits: the same with 4 values per slot and stochastic rounding.
- naive_flare: one TenSEAL ckks_vector per tensor, N=8192, coeff [60, 40, 40], scale 2^40,
  dense, weighted by a plaintext multiply per upload at the aggregator (NVIDIA FLARE's
  HE settings).
- naive_fedshield_llm: FedShield-LLM's reference settings: one ckks_vector per tensor,
  N=8192, coeff [60, 40, 40, 60], scale 2^40, dense (pruned coordinates are encrypted
  zeros), summed, then one plaintext multiply by 1/n.
  The naive costs do not depend on the values, so each is measured once, with the 10
  silos' uploads being copies of one silo's ciphertexts, and reported for every pruning
  level.

Each FedShield row splits its byte gain over each baseline into packing (the baseline's
bytes per value over FedShield's bytes per kept value) and sparsity (all values over kept
ones); their product is the whole gain.

Times: encrypt_s is one silo's encryption (silos encrypt in parallel); aggregate_s
covers parsing, checking and summing all 10 uploads and serialising the aggregate;
decrypt_s is one silo's decryption. Prints one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import sys
import time

import numpy as np
import tenseal as ts

from fedshield.crypto import EncryptedSum, EnvelopeReader, PackingParams, create_keys, decrypt_envelope, encrypt_update
from fedshield.updates import round_mask

SILOS = 10
PRUNING = (0.0, 0.5, 0.9, 0.99)


def adapter_shapes(layers: int, width: int, rank: int) -> list[tuple[str, tuple[int, int]]]:
    shapes = []
    for layer in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            prefix = f"model.layers.{layer}.self_attn.{proj}"
            shapes.append((f"{prefix}.lora_A.weight", (rank, width)))
            shapes.append((f"{prefix}.lora_B.weight", (width, rank)))
    return shapes


def synthetic_updates(size: int, silos: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    updates = [np.clip(rng.normal(0.0, 3e-3, size), -1e-2, 1e-2) for _ in range(silos)]
    samples = rng.integers(500, 5000, silos)
    weights = samples / samples.sum()
    last_global_update = rng.normal(0.0, 1e-3, size)  # the shared score every silo holds
    return updates, weights, last_global_update


FEDSHIELD_PACKINGS = {
    "fedshield": PackingParams(),
    "fedshield_4digits": PackingParams(digits_per_slot=4, rounding="stochastic"),
}
NAIVE = {
    "naive_flare": {"coeff_mod_bits": [60, 40, 40], "scale_bits": 40, "weighting": "plaintext multiply per upload"},
    "naive_fedshield_llm": {"coeff_mod_bits": [60, 40, 40, 60], "scale_bits": 40, "weighting": "sum, then one multiply by 1/n"},
}


def bench_fedshield(keys, public, updates, weights, score, pruning: float, seed: int, method: str = "fedshield") -> dict:
    size = updates[0].size
    packing = FEDSHIELD_PACKINGS[method]
    mask = round_mask(size, pruning, round=1, seed=seed, score=score)
    uploads = [
        encrypt_update(public, x[mask], weight=float(w), round=1, silo=f"silo-{i}", packing=packing,
                       rng=np.random.default_rng([seed, i]))
        for i, (x, w) in enumerate(zip(updates, weights, strict=False))
    ]
    start = time.perf_counter()
    total = EncryptedSum(public, round=1, count=mask.size, packing=packing)
    for upload in uploads:
        total.add(EnvelopeReader.from_bytes(upload.data))
    aggregate = total.to_bytes()
    aggregate_s = time.perf_counter() - start
    start = time.perf_counter()
    result = decrypt_envelope(keys, EnvelopeReader.from_bytes(aggregate), round=1, count=mask.size)
    decrypt_s = time.perf_counter() - start
    expected = sum(w * x[mask] for w, x in zip(weights, updates, strict=False)) / weights.sum()
    upload_bytes = int(np.mean([len(u.data) for u in uploads]))
    return {
        "method": method,
        "digits_per_slot": packing.digits_per_slot,
        "rounding": packing.rounding,
        "pruning": pruning,
        "kept": int(mask.size),
        "upload_bytes": upload_bytes,
        "download_bytes": len(aggregate),
        "bytes_per_kept_param": round(upload_bytes / mask.size, 3),
        "encrypt_s": round(float(np.mean([u.encrypt_s for u in uploads])), 4),
        "aggregate_s": round(aggregate_s, 4),
        "decrypt_s": round(decrypt_s, 4),
        "max_abs_error": float(np.abs(result - expected).max()),
    }


@contextlib.contextmanager
def quiet_stdout():
    """TenSEAL warns on stdout for every large vector (from Python or C++); keep stdout for the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def bench_naive(shapes, update: np.ndarray, weights: np.ndarray, method: str = "naive_flare") -> dict:
    settings = NAIVE[method]
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=settings["coeff_mod_bits"])
    ctx.global_scale = 2.0 ** settings["scale_bits"]
    public = ctx.copy()
    public.make_context_public()
    tensors, offset = [], 0
    for _, shape in shapes:
        n = shape[0] * shape[1]
        tensors.append(update[offset : offset + n])
        offset += n
    start = time.perf_counter()
    upload = [ts.ckks_vector(public, t).serialize() for t in tensors]
    encrypt_s = time.perf_counter() - start
    start = time.perf_counter()
    total = None
    per_upload = method == "naive_flare"
    for w in weights:  # every silo's upload is a copy of this one: the cost is value-independent
        loaded = [ts.ckks_vector_from(public, blob) for blob in upload]
        if per_upload:
            loaded = [vec * float(w) for vec in loaded]
        total = loaded if total is None else [a + b for a, b in zip(total, loaded, strict=False)]
        del loaded
    if not per_upload:  # FedShield-LLM: an unweighted mean
        total = [vec * (1.0 / len(weights)) for vec in total]
    aggregate = [vec.serialize() for vec in total]
    aggregate_s = time.perf_counter() - start
    start = time.perf_counter()
    result = np.concatenate([np.asarray(ts.ckks_vector_from(ctx, blob).decrypt()) for blob in aggregate])
    decrypt_s = time.perf_counter() - start
    upload_bytes = sum(map(len, upload))
    expected = update * weights.sum() if per_upload else update
    return {
        "ckks": {"poly_degree": 8192, **{k: settings[k] for k in ("coeff_mod_bits", "scale_bits")}},
        "weighting": settings["weighting"],
        "upload_bytes": upload_bytes,
        "download_bytes": sum(map(len, aggregate)),
        "encrypt_s": round(encrypt_s, 4),
        "aggregate_s": round(aggregate_s, 4),
        "decrypt_s": round(decrypt_s, 4),
        "max_abs_error": float(np.abs(result - expected).max()),
    }


def byte_gains(row: dict, naive: dict, size: int) -> dict:
    """How much smaller than a naive upload, split into packing and sparsity (their product is the total)."""
    packing = (naive["upload_bytes"] / size) / (row["upload_bytes"] / row["kept"])
    sparsity = size / row["kept"]
    return {"total": round(naive["upload_bytes"] / row["upload_bytes"], 3), "packing": round(packing, 3), "sparsity": round(sparsity, 3)}


def run(quick: bool, seed: int = 0, skip_naive: bool = False) -> dict:
    layers, width, rank = (4, 1024, 8) if quick else (32, 4096, 16)
    shapes = adapter_shapes(layers, width, rank)
    size = sum(a * b for _, (a, b) in shapes)
    keys = create_keys()
    public = keys.public()
    updates, weights, score = synthetic_updates(size, SILOS, seed)
    results = []
    for method in FEDSHIELD_PACKINGS:
        for pruning in PRUNING:
            results.append(bench_fedshield(keys, public, updates, weights, score, pruning, seed, method))
            print(f"{method} p={pruning}: {results[-1]}", file=sys.stderr)
    if not skip_naive:
        naives = {}
        for method in NAIVE:
            with quiet_stdout():
                naives[method] = bench_naive(shapes, updates[0], weights, method)
            print(f"{method} (dense, measured once): {naives[method]}", file=sys.stderr)
        for row in results:
            row["gain_over"] = {method: byte_gains(row, naive, size) for method, naive in naives.items()}
        for method, naive in naives.items():
            for pruning in PRUNING:
                kept = max(1, round(size * (1 - pruning)))
                results.append(
                    {"method": method, "pruning": pruning, "kept": kept, **naive,
                     "bytes_per_value": round(naive["upload_bytes"] / size, 3),
                     "bytes_per_kept_param": round(naive["upload_bytes"] / kept, 3)}
                )
    return {
        "params": size,
        "silos": SILOS,
        "adapter": {"layers": layers, "width": width, "rank": rank, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "fedshield_ckks": keys.params.model_dump(mode="json"),
        "naive_note": "dense; measured once and reported for every pruning level (zeros are encrypted too)",
        "gain_note": "gain_over[baseline]: total = packing x sparsity; packing = baseline bytes per value / FedShield bytes per kept value",
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small adapter (262k parameters), under a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true", help="measure FedShield only")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, args.seed, args.skip_naive)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
