"""The metric catalogue is the one source of names: the dashboard, the chart and the docs use it."""

from __future__ import annotations

import re
from pathlib import Path

from fedshield import metrics
from fedshield.dashboard import dashboard_json, expressions

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bfedshield_[a-z_]+\b")
SUFFIXES = ("_bucket", "_sum", "_count")
REGISTRIES = (metrics.SILO, metrics.AGGREGATOR, metrics.OPERATOR)


def catalogue() -> dict[str, str]:
    """Exported family name -> type, for both registries."""
    out = {}
    for registry in REGISTRIES:
        for family in registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = family.type
    return out


def used_names(text: str) -> set[str]:
    names = set()
    for name in METRIC.findall(text):
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in catalogue():
                name = name[: -len(suffix)]
        names.add(name)
    return names


def test_names_follow_prometheus_conventions():
    for name, kind in catalogue().items():
        assert name.startswith("fedshield_"), name
        assert (kind == "counter") == name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)\b", name), name


def test_labels_are_bounded():
    for registry in REGISTRIES:
        for collector in registry._collector_to_names:  # noqa: SLF001 - the registered metric objects
            # workload and metric: the registry's workloads and their headline metrics; unit: silo|record|user|unknown; closed sets
            assert set(getattr(collector, "_labelnames", ())) <= {"silo", "error", "kind", "phase", "workload", "metric", "unit"}, collector


def test_no_series_is_exported_by_two_kinds_of_process():
    names = [{f.name for f in registry.collect()} for registry in REGISTRIES]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not a & b


def test_dashboard_uses_only_catalogued_metrics_and_covers_each_area():
    used = used_names("\n".join(expressions()))
    assert used <= set(catalogue()), used - set(catalogue())
    for needed in ("fedshield_silo_upload_bytes_total", "fedshield_silo_encrypt_seconds", "fedshield_round_stragglers",
                   "fedshield_silo_validation_score", "fedshield_aggregation_weight", "fedshield_lr_scale",
                   "fedshield_epsilon_spent", "fedshield_silo_train_tokens_per_second"):
        assert needed in used


def test_chart_ships_the_generated_dashboard():
    shipped = ROOT / "charts" / "fedshield-operator" / "dashboards" / "fedshield.json"
    assert shipped.read_text() == dashboard_json(), "regenerate with: fedshield dashboard > " + str(shipped.relative_to(ROOT))


def test_docs_list_every_metric_and_no_other():
    text = (ROOT / "docs" / "metrics.md").read_text()
    documented = used_names(text)
    assert documented == set(catalogue()), (set(catalogue()) - documented, documented - set(catalogue()))


def documented_labels() -> dict[str, str]:
    """Each metric row of docs/metrics.md's tables: name -> its labels column."""
    row = re.compile(r"^\| `(fedshield_[a-z_]+)` \| [a-z]+ \| ([^|]*) \|", re.M)
    return {m.group(1): m.group(2).strip() for m in row.finditer((ROOT / "docs" / "metrics.md").read_text())}


def test_docs_give_every_metrics_labels():
    rows = documented_labels()
    for registry in REGISTRIES:
        for collector in registry._collector_to_names:  # noqa: SLF001 - the registered metric objects
            name = collector._name + ("_total" if collector._type == "counter" else "")  # noqa: SLF001
            assert rows.get(name) == (", ".join(collector._labelnames) or "–"), name  # noqa: SLF001
