"""FedAvg against dynamic balance on a non-IID 5-silo split, same seeds and rounds.

Prints one JSON object: {"fedavg": {...}, "dynamic_balance": {...}, "gap_reduction": ..}.
Target: the max-min AUC gap at least 30% smaller, with mean AUC no lower than FedAvg's.
"""

from __future__ import annotations

import json
import sys

from federation_split import config, run

from fedshield.config import AggregationSpec


def main() -> dict:
    fedavg = run(config())
    balanced = run(config(aggregation=AggregationSpec(strategy="dynamic_balance", q=1.0, gamma=1.0, min_silos=5)))
    reduction = 1 - balanced["gap"] / fedavg["gap"] if fedavg["gap"] else 0.0
    return {"fedavg": fedavg, "dynamic_balance": balanced, "gap_reduction": round(reduction, 4),
            "target": {"gap_reduction": ">= 0.30", "mean_auc": ">= fedavg"},
            "met": reduction >= 0.30 and balanced["mean_auc"] >= fedavg["mean_auc"]}


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
