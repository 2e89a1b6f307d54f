"""Every Prometheus metric FedShield exports, in one place (names follow Prometheus conventions).

Label values are bounded: silo names only, never round numbers.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

CRYPTO_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# communication
UPLOAD_BYTES = Counter("fedshield_upload_bytes_total", "Encrypted update bytes uploaded by a silo.", ["silo"])
DOWNLOAD_BYTES = Counter("fedshield_download_bytes_total", "Aggregate bytes downloaded by a silo.", ["silo"])
UPLOADS_ACCEPTED = Counter("fedshield_uploads_accepted_total", "Uploads the aggregator accepted.", ["silo"])
UPLOADS_REJECTED = Counter("fedshield_uploads_rejected_total", "Uploads the aggregator refused, by reason.", ["reason"])
KEPT_PARAMETERS = Gauge("fedshield_kept_parameters", "Update coordinates sent this round (after pruning).", ["silo"])
TOTAL_PARAMETERS = Gauge("fedshield_shared_parameters", "Length of the shared update vector.", ["silo"])

# crypto cost
ENCRYPT_SECONDS = Histogram("fedshield_encrypt_seconds", "Time a silo spends encrypting one update.", ["silo"], buckets=CRYPTO_BUCKETS)
DECRYPT_SECONDS = Histogram("fedshield_decrypt_seconds", "Time a silo spends decrypting one aggregate.", ["silo"], buckets=CRYPTO_BUCKETS)
AGGREGATE_SECONDS = Histogram("fedshield_aggregate_seconds", "Time to write one round's aggregate.", buckets=CRYPTO_BUCKETS)

# rounds
CURRENT_ROUND = Gauge("fedshield_current_round", "The round in progress.")
ROUNDS_CLOSED = Counter("fedshield_rounds_closed_total", "Rounds the aggregator closed.")
ROUND_SECONDS = Histogram("fedshield_round_seconds", "Wall time of one round at a silo.", ["silo"], buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800))

# privacy and fairness
EPSILON_SPENT = Gauge("fedshield_epsilon_spent", "Differential-privacy epsilon a silo has spent.", ["silo"])
SILO_WITHDRAWN = Gauge("fedshield_silo_withdrawn", "1 when a silo stopped contributing (e.g. budget spent).", ["silo"])
AGGREGATION_WEIGHT = Gauge("fedshield_aggregation_weight", "A silo's weight in the current round.", ["silo"])
LR_SCALE = Gauge("fedshield_lr_scale", "A silo's learning-rate scale in the current round.", ["silo"])

# training and quality
TRAIN_LOSS = Gauge("fedshield_train_loss", "Mean local training loss in the last round.", ["silo"])
VALIDATION_AUC = Gauge("fedshield_validation_auc", "Validation AUC of the global model at a silo.", ["silo"])
VALIDATION_LOSS = Gauge("fedshield_validation_loss", "Validation log-loss of the global model at a silo.", ["silo"])


def serve_metrics(port: int | None) -> None:
    """Expose /metrics on ``port`` (no-op when None)."""
    if port is not None:
        start_http_server(port)
