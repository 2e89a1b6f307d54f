"""The dashboard proven against a real Prometheus scraping a real local federation.

Prometheus (Debian package `prometheus`) scrapes the aggregator and the three silos on
loopback every second; every PromQL expression of the dashboard must parse and return
data; the communication and fairness figures of the run's report.json must equal what
Prometheus answers.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from rich.console import Console

from fedshield.config import DPSpec, FederationConfig, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.dashboard import expressions
from fedshield.local.demo import free_port, run_local, with_local_ports
from fedshield.security.certs import silo_files
from fedshield.security.tls import client_context

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and os.environ.get("FEDSHIELD_REQUIRE_TOOLS") != "1":
    pytest.skip("prometheus is not installed (CI installs the Debian package)", allow_module_level=True)

GRAFANA_VARIABLES = {"$silo": ".*", "$__rate_interval": "5m", "$__range": "1h"}
ROUNDS = 3


class Prometheus:
    """A real Prometheus server on loopback with static scrape targets."""

    def __init__(self, workdir: Path, targets: dict[str, list[int]]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
                               for job, ports in targets.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError("prometheus did not become ready")

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        body = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
        return body["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def refuse_one_request(out: Path) -> None:
    """Silo a's certificate used to upload as silo b: the aggregator refuses it (and counts it)."""
    port = yaml.safe_load((out / "config.yaml").read_text())["aggregator_port"]
    files = silo_files(out / "certs", "a")
    with httpx.Client(verify=client_context(files.ca, files.cert, files.key)) as client:
        response = client.put(f"https://127.0.0.1:{port}/v1/rounds/0/uploads/b", params={"samples": 1}, content=b"x")
    assert response.status_code == 403 and response.json()["error"] == "identity_mismatch"


def test_every_dashboard_query_returns_data_and_matches_the_report(tmp_path, monkeypatch):
    config = with_local_ports(FederationConfig(
        name="prometheus-check", rounds=ROUNDS, silos=(SiloSpec(name="a"), SiloSpec(name="b"), SiloSpec(name="c")),
        training=TrainingSpec(local_steps=4, batch_size=8),
        privacy=PrivacySpec(pruning=0.5, dp=DPSpec(enabled=True, clip_norm=1.0, noise_multiplier=1.0)),
    ))
    monkeypatch.setenv("FEDSHIELD_METRICS_LINGER_S", "30")  # the silos' final values stay scrapeable
    prometheus = Prometheus(tmp_path, {"aggregator": [config.aggregator_metrics_port], "silo": [s.metrics_port for s in config.silos]})
    out = tmp_path / "run"
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(report=run_local(config, out, console=Console(file=io.StringIO()))))
    try:
        runner.start()
        deadline = time.monotonic() + 600
        finished = f"count(fedshield_silo_round == {ROUNDS - 1}) == 3 and on() fedshield_round == {ROUNDS}"
        while not prometheus.query(finished):
            assert runner.is_alive() or "report" in result, "the federation ended before Prometheus saw its end"
            assert time.monotonic() < deadline, "the federation did not finish in time"
            time.sleep(1)
        refuse_one_request(out)
        time.sleep(3)  # a few scrapes after the last change
        at = time.time()

        for expr in expressions():
            series = prometheus.query(substitute(expr), at)
            assert series, f"no data for {expr}"
            assert any(math.isfinite(float(s["value"][1])) for s in series), f"only NaN/Inf for {expr}: {series}"
        answers = {
            "upload": prometheus.value("sum(fedshield_silo_upload_bytes_total)", at),
            "received": prometheus.value("sum(fedshield_aggregator_received_bytes_total)", at),
            "download": prometheus.value("sum(fedshield_silo_download_bytes_total)", at),
            "per_silo_upload": {s["metric"]["silo"]: float(s["value"][1]) for s in prometheus.query("fedshield_silo_upload_bytes_total", at)},
            "score": {s["metric"]["silo"]: float(s["value"][1]) for s in prometheus.query("fedshield_silo_validation_score", at)},
            "epsilon": {s["metric"]["silo"]: float(s["value"][1]) for s in prometheus.query("fedshield_epsilon_spent", at)},
            "fairness": {title: prometheus.query(substitute(expr), at) for title, expr in _fairness_exprs().items()},
        }
        runner.join(timeout=120)
    finally:
        prometheus.stop()
    assert not runner.is_alive() and "report" in result
    report = json.loads((out / "report.json").read_text())
    summary, last = report["summary"], report["rounds"][-1]["silos"]

    # communication: report == silo counters == aggregator counters
    assert answers["upload"] == summary["upload_bytes_total"] == answers["received"]
    assert answers["download"] == summary["download_bytes_total"]
    for silo in config.silo_names:
        assert answers["per_silo_upload"][silo] == sum(r["silos"][silo]["upload_bytes"] for r in report["rounds"])

    # fairness: the dashboard's PromQL over the silos' scores (AUC here) == report.json's final fairness
    assert answers["score"] == pytest.approx({s: x["score"] for s, x in last.items()}, rel=1e-12)
    assert {x["metric"] for x in last.values()} == {"auc"}
    fairness = summary["final_fairness"]
    assert float(answers["fairness"]["Jain's index"][0]["value"][1]) == pytest.approx(fairness["jain"], rel=1e-9)
    assert float(answers["fairness"]["Max–min score gap"][0]["value"][1]) == pytest.approx(fairness["gap"], rel=1e-9, abs=1e-12)
    assert answers["fairness"]["Worst silo"][0]["metric"]["silo"] == fairness["worst_silo"]

    # privacy: the epsilon each silo reported with its last upload
    assert answers["epsilon"] == pytest.approx({s: x["epsilon"] for s, x in last.items()}, rel=1e-12)


def _fairness_exprs() -> dict[str, str]:
    from fedshield.dashboard import ROWS

    panels = {p.title: p for title, row in ROWS if title == "Fairness" for p in row}
    return {title: panels[title].exprs[0][0] for title in ("Jain's index", "Max–min score gap", "Worst silo")}
