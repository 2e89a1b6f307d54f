"""The Grafana dashboard, generated from one list of panels (``fedshield dashboard``).

Built with Grafana Labs' typed builders (``grafana-foundation-sdk``, pinned to the
Grafana 11.6 schema), so the JSON follows Grafana's own schema rather than ours.

The chart ships the JSON (charts/fedshield-operator/dashboards/fedshield.json, a test
keeps it equal to this output). Every expression uses metric names from
``fedshield.metrics``; a test evaluates each one against a real Prometheus.
Grafana variables used: ``$datasource``, ``$silo`` (multi-value regex),
``$__rate_interval`` and ``$__range``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh

SILO = 'silo=~"$silo"'


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"


def _score(fn: str) -> str:
    return f"{fn}(fedshield_silo_validation_score{{{SILO}}})"


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Communication", (
        Panel("Uploaded bytes per silo", "Encrypted update bytes each silo uploaded over the dashboard's range.",
              ((f"sum by (silo) (last_over_time(fedshield_silo_upload_bytes_total{{{SILO}}}[$__range]))", "{{silo}}"),),
              "bytes", "stat"),
        Panel("Downloaded bytes per silo", "Aggregate bytes each silo downloaded over the dashboard's range.",
              ((f"sum by (silo) (last_over_time(fedshield_silo_download_bytes_total{{{SILO}}}[$__range]))", "{{silo}}"),),
              "bytes", "stat"),
        Panel("Upload rate at the aggregator", "Accepted upload bytes per second, by silo.",
              (("sum by (silo) (rate(fedshield_aggregator_received_bytes_total[$__rate_interval]))", "{{silo}}"),), "Bps"),
        Panel("Kept parameters", "Share of the shared update vector sent in the last round (after pruning).",
              ((f"fedshield_silo_kept_parameters{{{SILO}}} / fedshield_silo_shared_parameters{{{SILO}}}", "{{silo}}"),), "percentunit"),
        Panel("Upload size vs dense fp32", "Last upload's bytes over 4 bytes per shared parameter (below 1: smaller than plain).",
              ((f"fedshield_silo_upload_plain_ratio{{{SILO}}}", "{{silo}}"),), "percentunit"),
        Panel("Ciphertexts uploaded", "CKKS ciphertexts in accepted uploads over the dashboard's range.",
              ((f"sum by (silo) (last_over_time(fedshield_silo_ciphertexts_uploaded_total{{{SILO}}}[$__range]))", "{{silo}}"),),
              "short", "stat"),
    )),
    ("Crypto cost", (
        Panel("Encrypt seconds (p50, p95)", "Time a silo spends encrypting one update.",
              (("histogram_quantile(0.5, sum by (le) (rate(fedshield_silo_encrypt_seconds_bucket[$__rate_interval])))", "p50"),
               ("histogram_quantile(0.95, sum by (le) (rate(fedshield_silo_encrypt_seconds_bucket[$__rate_interval])))", "p95")), "s"),
        Panel("Decrypt seconds (p50, p95)", "Time a silo spends decrypting one aggregate.",
              (("histogram_quantile(0.5, sum by (le) (rate(fedshield_silo_decrypt_seconds_bucket[$__rate_interval])))", "p50"),
               ("histogram_quantile(0.95, sum by (le) (rate(fedshield_silo_decrypt_seconds_bucket[$__rate_interval])))", "p95")), "s"),
        Panel("Homomorphic aggregation seconds (mean)", "Aggregator time to write one round's encrypted sum.",
              (("sum(rate(fedshield_aggregator_aggregate_seconds_sum[$__rate_interval])) / "
                "sum(rate(fedshield_aggregator_aggregate_seconds_count[$__rate_interval]))", "mean"),), "s"),
    )),
    ("Rounds", (
        Panel("Round", "The open round and the rounds planned.",
              (("fedshield_round", "open round"), ("fedshield_rounds_planned", "planned")), "short", "stat"),
        Panel("Round duration (p50, max bucket)", "Time from a round's opening to its closing.",
              (("histogram_quantile(0.5, sum by (le) (rate(fedshield_round_duration_seconds_bucket[$__rate_interval])))", "p50"),
               ("histogram_quantile(0.99, sum by (le) (rate(fedshield_round_duration_seconds_bucket[$__rate_interval])))", "p99")), "s"),
        Panel("Silos reporting", "Uploads accepted in the open round, of the silos expected.",
              (("fedshield_round_silos_reporting", "reporting"), ("fedshield_round_silos_expected", "expected")), "short"),
        Panel("Stragglers", "Silos missing from the last closed round; rounds each silo missed.",
              (("fedshield_round_stragglers", "last round"), ("sum by (silo) (fedshield_silo_missed_rounds_total)", "{{silo}} missed")),
              "short"),
        Panel("Silo progress", "Last round each silo completed.", ((f"fedshield_silo_round{{{SILO}}}", "{{silo}}"),), "short"),
        Panel("Refused requests", "Requests the aggregator refused, by error code.",
              (("sum by (error) (increase(fedshield_aggregator_requests_rejected_total[$__range]))", "{{error}}"),), "short", "stat"),
    )),
    ("Fairness", (
        Panel("Validation score per silo", "The workload's headline score (AUC, exact match or token accuracy: see each silo's "
              "fedshield_silo_workload_info) of the current global model on each silo's validation data.",
              ((f"fedshield_silo_validation_score{{{SILO}}}", "{{silo}}"),), "short"),
        Panel("Jain's index", "(Σx)² / (n·Σx²) over the silos' validation scores (1 = equal).",
              ((f"{_score('sum')} ^ 2 / ({_score('count')} * sum(fedshield_silo_validation_score{{{SILO}}} ^ 2))", "Jain"),),
              "short", "stat"),
        Panel("Max–min score gap", "Best minus worst silo's validation score.", ((f"{_score('max')} - {_score('min')}", "gap"),),
              "short", "stat"),
        Panel("Worst silo", "The silo with the lowest validation score.",
              ((f"bottomk(1, fedshield_silo_validation_score{{{SILO}}})", "{{silo}}"),), "short", "stat"),
        Panel("Aggregation weights", "Each silo's weight in the open round (FedAvg or dynamic balance).",
              (("fedshield_aggregation_weight", "{{silo}}"),), "percentunit"),
        Panel("Learning-rate scales", "Each silo's learning-rate scale in the open round (dynamic balance).",
              (("fedshield_lr_scale", "{{silo}}"),), "short"),
        Panel("Reported fairness (drives dynamic balance)", "Jain's index and gap of the scores silos report with uploads (of the global "
              "model each started the round from).",
              (("fedshield_fairness_jain_index", "Jain"), ("fedshield_fairness_score_gap", "gap")), "short"),
    )),
    ("Privacy", (
        Panel("Epsilon spent", "Differential-privacy epsilon each silo reported spent (DP-LoRA), per the unit it protects "
              "(a silo's round, a record or a user).",
              (("fedshield_epsilon_spent", "{{silo}} (per {{unit}})"),), "short"),
        Panel("Withdrawn silos", "1 when a silo stopped contributing (e.g. its budget is spent).",
              (("fedshield_silo_withdrawn", "{{silo}}"),), "short"),
    )),
    ("Training", (
        Panel("Tokens per second", "Local training throughput in the last round.",
              ((f"fedshield_silo_train_tokens_per_second{{{SILO}}}", "{{silo}}"),), "short"),
        Panel("Training loss", "Mean local training loss in the last round.",
              ((f"fedshield_silo_train_loss{{{SILO}}}", "{{silo}}"),), "short"),
        Panel("Validation loss", "Log-loss of the global model on each silo's validation data.",
              ((f"fedshield_silo_validation_loss{{{SILO}}}", "{{silo}}"),), "short"),
    )),
)


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard, in panel order."""
    return [expr for _, panels in ROWS for p in panels for expr, _ in p.exprs]


def _datasource() -> DataSourceRef:
    return DataSourceRef(type_val="prometheus", uid="${datasource}")


def _panel(p: Panel) -> timeseries.Panel | stat.Panel:
    builder = (timeseries.Panel() if p.kind == "timeseries" else stat.Panel()) if p.kind in ("timeseries", "stat") else None
    if builder is None:
        raise ValueError(f"panel {p.title!r}: unknown kind {p.kind!r}")
    builder = builder.title(p.title).description(p.description).datasource(_datasource()).unit(p.unit).height(8).span(8)
    for i, (expr, legend) in enumerate(p.exprs):
        builder = builder.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)).datasource(_datasource())
        )
    return builder


def _silo_variable() -> QueryVariable:
    query = "label_values(fedshield_silo_round, silo)"
    return (
        QueryVariable("silo").label("Silo").datasource(_datasource()).query({"query": query, "refId": "silos"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
        .current(VariableOption(text="All", value="$__all"))
    )


def builder() -> Dashboard:
    """The dashboard as a grafana-foundation-sdk builder (rows of panels, three per line)."""
    out = (
        Dashboard("FedShield federation").uid("fedshield").tags(["fedshield"]).editable().refresh("30s")
        .time("now-6h", "now").timezone("").version(1)
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(_silo_variable())
    )
    for title, panels in ROWS:
        out = out.with_row(Row(title).collapsed(False))
        for p in panels:
            out = out.with_panel(_panel(p))
    return out


def dashboard() -> dict:
    """The Grafana dashboard model, as JSON-ready data (panel ids assigned in order)."""
    model = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(builder().build()))
    for i, panel in enumerate(model["panels"], start=1):
        panel["id"] = i
    return model


def dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"
