"""Mean AUC under DP-LoRA at epsilon = inf, 8 and 2 (delta 1e-5) on the fairness benchmark's split.

Prints one JSON object: {"epsilon_inf": {...}, "epsilon_8": {...}, "epsilon_2": {...}}.
"""

from __future__ import annotations

import json
import sys

from federation_split import config, run

from fedshield.config import DPSpec, PrivacySpec

CLIP_NORM = 1.0


def main() -> dict:
    out = {"clip_norm": CLIP_NORM, "delta": 1e-5, "epsilon_inf": run(config())}
    for eps in (8, 2):
        cfg = config(privacy=PrivacySpec(pruning=0.5, dp=DPSpec(enabled=True, clip_norm=CLIP_NORM, target_epsilon=eps)))
        out[f"epsilon_{eps}"] = run(cfg) | {"noise_multiplier": round(cfg.dp_budget().noise_multiplier, 4)}
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
