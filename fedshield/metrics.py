"""Every Prometheus metric FedShield exports, in one place (the catalogue is docs/metrics.md).

One registry per process kind, so no process exports another's series: ``SILO`` is
served by silo agents, ``AGGREGATOR`` by the aggregator, ``OPERATOR`` by the operator.
Names follow Prometheus conventions: base units, ``_total`` for counters, ``_seconds``
and ``_bytes``. Label values are bounded: silo names and error codes, never rounds.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

SILO = CollectorRegistry(auto_describe=True)
AGGREGATOR = CollectorRegistry(auto_describe=True)
OPERATOR = CollectorRegistry(auto_describe=True)

CRYPTO_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROUND_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
S: dict[str, Any] = {"labelnames": ["silo"], "registry": SILO}
A: dict[str, Any] = {"registry": AGGREGATOR}
A_SILO: dict[str, Any] = {"labelnames": ["silo"], "registry": AGGREGATOR}

# --- silo agent: communication --------------------------------------------------------
SILO_UPLOAD_BYTES = Counter("fedshield_silo_upload_bytes_total", "Encrypted update bytes the silo uploaded (accepted uploads).", **S)
SILO_DOWNLOAD_BYTES = Counter("fedshield_silo_download_bytes_total", "Aggregate bytes the silo downloaded.", **S)
SILO_CIPHERTEXTS = Counter("fedshield_silo_ciphertexts_uploaded_total", "CKKS ciphertexts in the silo's accepted uploads.", **S)
SILO_KEPT_PARAMETERS = Gauge("fedshield_silo_kept_parameters", "Update coordinates sent in the last round (after pruning).", **S)
SILO_SHARED_PARAMETERS = Gauge("fedshield_silo_shared_parameters", "Length of the shared update vector (private modules excluded).", **S)
SILO_UPLOAD_PLAIN_RATIO = Gauge(
    "fedshield_silo_upload_plain_ratio", "Last upload's bytes over the dense fp32 update's (4 bytes per shared parameter).", **S)

# --- silo agent: crypto cost ------------------------------------------------------------
SILO_ENCRYPT_SECONDS = Histogram("fedshield_silo_encrypt_seconds", "Time to encrypt one update.", buckets=CRYPTO_BUCKETS, **S)
SILO_DECRYPT_SECONDS = Histogram("fedshield_silo_decrypt_seconds", "Time to decrypt one aggregate.", buckets=CRYPTO_BUCKETS, **S)

# --- silo agent: rounds, training, quality -----------------------------------------------
SILO_ROUND = Gauge("fedshield_silo_round", "Last round the silo completed (-1 before the first).", **S)
SILO_ROUND_SECONDS = Histogram("fedshield_silo_round_seconds", "Wall time of one round at the silo.", buckets=ROUND_BUCKETS, **S)
SILO_TRAIN_LOSS = Gauge("fedshield_silo_train_loss", "Mean local training loss in the last round.", **S)
SILO_TRAIN_TOKENS = Counter("fedshield_silo_train_tokens_total", "Prompt tokens processed by local training.", **S)
SILO_TOKENS_PER_SECOND = Gauge("fedshield_silo_train_tokens_per_second", "Local training throughput in the last round.", **S)
SILO_VALIDATION_SCORE = Gauge("fedshield_silo_validation_score", "The workload's headline validation score (in [0, 1], higher is better: "
                              "AUC, exact match or token accuracy) of the current global model on the silo's data.", **S)
SILO_VALIDATION_LOSS = Gauge("fedshield_silo_validation_loss", "The workload's validation loss (log-loss, or response-token cross-"
                             "entropy) of the current global model on the silo's data.", **S)
SILO_WORKLOAD = Gauge("fedshield_silo_workload_info", "1, labelled with the silo's workload and the metric its score is.",
                      ["silo", "workload", "metric"], registry=SILO)

# --- aggregator: communication ----------------------------------------------------------
UPLOAD_BYTES = Counter("fedshield_aggregator_received_bytes_total", "Bytes of accepted uploads, per silo.", **A_SILO)
UPLOADS_ACCEPTED = Counter("fedshield_aggregator_uploads_accepted_total", "Uploads accepted (retries not counted).", **A_SILO)
UPLOADS_REJECTED = Counter("fedshield_aggregator_requests_rejected_total", "Requests refused, by error code.", ["error"], **A)
AGGREGATE_BYTES = Gauge("fedshield_aggregator_aggregate_bytes", "Size of the last published aggregate.", **A)

# --- aggregator: crypto cost and rounds ---------------------------------------------------
AGGREGATE_SECONDS = Histogram("fedshield_aggregator_aggregate_seconds", "Time to write one round's aggregate.", buckets=CRYPTO_BUCKETS, **A)
CURRENT_ROUND = Gauge("fedshield_round", "The open round (the number of rounds once finished).", **A)
ROUNDS_PLANNED = Gauge("fedshield_rounds_planned", "Rounds the federation runs.", **A)
ROUNDS_CLOSED = Counter("fedshield_rounds_closed_total", "Rounds the aggregator closed.", **A)
ROUND_DURATION = Histogram("fedshield_round_duration_seconds", "Time from a round's opening to its closing.", buckets=ROUND_BUCKETS, **A)
SILOS_REPORTING = Gauge("fedshield_round_silos_reporting", "Uploads accepted in the open round.", **A)
SILOS_EXPECTED = Gauge("fedshield_round_silos_expected", "Silos expected to upload (joined, not withdrawn).", **A)
STRAGGLERS = Gauge("fedshield_round_stragglers", "Expected silos missing from the last closed round.", **A)
STRAGGLER_ROUNDS = Counter("fedshield_silo_missed_rounds_total", "Rounds that closed without the silo's upload.", **A_SILO)

# --- aggregator: fairness and privacy (what silos reported with the last closed round) ---
REPORTED_SCORE = Gauge("fedshield_reported_validation_score", "Headline validation score a silo reported with its last upload.", **A_SILO)
REPORTED_LOSS = Gauge("fedshield_reported_validation_loss", "Validation loss a silo reported with its last upload.", **A_SILO)
FAIRNESS_JAIN = Gauge("fedshield_fairness_jain_index", "Jain's index of the reported validation scores (1 = equal).", **A)
FAIRNESS_GAP = Gauge("fedshield_fairness_score_gap", "Best minus worst reported validation score.", **A)
FAIRNESS_WORST = Gauge("fedshield_fairness_worst_silo", "1 for the silo with the lowest reported score, 0 for the others.", **A_SILO)
AGGREGATION_WEIGHT = Gauge("fedshield_aggregation_weight", "A silo's weight in the open round's plan.", **A_SILO)
LR_SCALE = Gauge("fedshield_lr_scale", "A silo's learning-rate scale in the open round's plan.", **A_SILO)
EPSILON_SPENT = Gauge("fedshield_epsilon_spent", "Differential-privacy epsilon a silo reported spent, labelled with what it protects "
                      "(unit: silo, record or user; unknown for an upload stored before units were reported).",
                      ["silo", "unit"], registry=AGGREGATOR)
SILO_WITHDRAWN = Gauge("fedshield_silo_withdrawn", "1 when a silo stopped contributing (e.g. budget spent).", **A_SILO)


# --- aggregator: unlearning (from the audit ledger, so they survive restarts) -------------
ADAPTER_VERSION = Gauge("fedshield_adapter_version", "Global adapters published: closed rounds plus unlearnings.", **A)
UNLEARNINGS = Gauge("fedshield_unlearning_completed", "Unlearnings a silo has completed.", **A_SILO)
UNLEARNED_USERS = Gauge("fedshield_unlearning_users_forgotten", "Users forgotten by a silo's unlearnings, in all.", **A_SILO)
UNLEARNING_SECONDS = Gauge("fedshield_unlearning_last_duration_seconds", "Time the silo's last unlearning took.", **A_SILO)
UNLEARNING_TIMESTAMP = Gauge("fedshield_unlearning_last_timestamp_seconds", "Unix time the silo's last unlearning was published.", **A_SILO)


# --- operator (labels: the custom resource kind, its phase, the child kind) ----------------
OPERATOR_REFRESH_SECONDS = Histogram("fedshield_operator_status_refresh_seconds", "Time to observe children and compute one status.",
                                     ["kind"], buckets=CRYPTO_BUCKETS, registry=OPERATOR)
OPERATOR_RESOURCES = Gauge("fedshield_operator_resources", "Custom resources the operator follows, by kind and phase.",
                           ["kind", "phase"], registry=OPERATOR)
OPERATOR_CHILDREN_APPLIED = Counter("fedshield_operator_children_applied_total", "Child objects the operator created or updated.",
                                    ["kind"], registry=OPERATOR)


def serve_metrics(port: int | None, registry: CollectorRegistry = AGGREGATOR) -> None:
    """Expose ``registry`` on ``port`` at /metrics (no-op when None)."""
    if port is not None:
        start_http_server(port, registry=registry)
