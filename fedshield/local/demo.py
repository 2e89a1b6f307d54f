"""`fedshield demo` / `fedshield run`: a whole federation on this machine, as separate processes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..crypto import create_keys, write_key_pair
from ..crypto.keys import PUBLIC_FILE, SECRET_FILE
from ..fairness import fairness_indices
from ..learning.data import base_model_path, silo_split
from ..learning.workloads import workload_for
from ..security.auth import create_tokens
from ..security.certs import issue_all
from ..security.tls import client_context
from ..spec.commands import ClientCredentials, ServerCredentials, aggregator_command, silo_command, torchrun_program
from ..spec.federation import DataSpec, FederationConfig, LoraSpec, ModelSpec, SiloSpec, TrainingSpec, config_yaml

LLM_DEMO_MODEL = "smollm2-135m-instruct"  # a packaged model (``fedshield models list``)
LLM_DEMO_SILOS = ("emergency", "general-practice", "childrens-clinic")  # the synthetic triage task's three domains


def with_declared_samples(config: FederationConfig) -> FederationConfig:
    """``config`` with every silo's agreed sample count: the size of its training data (FedAvg weights use it)."""
    silos = tuple(s.model_copy(update={"samples": len(silo_split(config, s.name).train)}) for s in config.silos)
    return config.model_copy(update={"silos": silos})


def demo_config(rounds: int | None = None, llm: bool = False, models_dir: str | Path = "models") -> FederationConfig:
    """The demo's federation: the tiny model on synthetic recommendation data, or (``llm``) SmolLM2-135M-Instruct,
    imported once into ``models_dir``, learning the synthetic triage task (instruction workload) at three clinics."""
    overrides: dict[str, Any] = {"rounds": rounds} if rounds else {}
    if not llm:
        return with_declared_samples(FederationConfig(**overrides))
    from ..learning.models import import_model

    model, _ = import_model(LLM_DEMO_MODEL, Path(models_dir) / LLM_DEMO_MODEL)
    return with_declared_samples(FederationConfig(
        name="triage", workload="instruction", silos=tuple(SiloSpec(name=s) for s in LLM_DEMO_SILOS),
        model=ModelSpec(path=str(model)), lora=LoraSpec(target_modules=("q_proj", "k_proj", "v_proj", "o_proj")),
        training=TrainingSpec(learning_rate=2e-3, batch_size=4, local_steps=6), data=DataSpec(val_fraction=0.15),
        **({"rounds": 4} | overrides),
    ))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_local_ports(config: FederationConfig) -> FederationConfig:
    """Give the aggregator and every process a free loopback port for HTTP and /metrics."""
    silos = tuple(s.model_copy(update={"metrics_port": s.metrics_port or free_port()}) for s in config.silos)
    return config.model_copy(update={
        "aggregator_port": free_port(), "aggregator_metrics_port": config.aggregator_metrics_port or free_port(), "silos": silos,
    })


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc; none where it cannot be read)."""
    try:
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        return []
    return [d for c in children for d in (c, *_descendants(c))]


SECURITY = ("mtls", "token", "none")
PROGRAM = (sys.executable, "-m", "fedshield.cli")  # this interpreter, whatever is on PATH
SILO_GROUP_RESTARTS = 3  # a silo with nodes > 1: whole-group restarts torchrun makes when one rank fails


class Federation:
    """The aggregator and silo processes of one local run, and their files under ``out``.

    ``security``: "mtls" (default: freshly issued CA, server and per-silo client certificates in
    ``out/certs``), "token" (TLS plus per-silo bearer tokens in ``out/tokens``), or "none" (plain
    HTTP, silo names in URLs trusted: for tests that need to see the traffic).
    """

    def __init__(self, config: FederationConfig, out: Path, security: str = "mtls", silo_port: int | None = None):
        if security not in SECURITY:
            raise ValueError(f"security must be one of {SECURITY}")
        self.config, self.out, self.security = config, out, security
        self.procs: dict[str, subprocess.Popen] = {}
        self._args: dict[str, list[str]] = {}
        self.logs = out / "logs"
        self.certs = out / "certs"
        scheme = "http" if security == "none" else "https"
        self.url = f"{scheme}://127.0.0.1:{config.aggregator_port}"
        # Where silos connect: the aggregator, or a port in front of it (a fault-injecting proxy in tests).
        self.silo_url = f"{scheme}://127.0.0.1:{silo_port or config.aggregator_port}"

    def _credentials(self, fresh: bool = True) -> tuple[ServerCredentials, dict[str, ClientCredentials]]:
        """Issue this run's certificates (and tokens): the aggregator's credentials and each silo's.

        ``fresh=False`` (resuming a run) keeps the run's CA and tokens and reissues certificates under that CA.
        """
        if self.security == "none":
            return ServerCredentials(), {s: ClientCredentials() for s in self.config.silo_names}
        if fresh:
            shutil.rmtree(self.certs, ignore_errors=True)
        issued = issue_all(self.certs, self.config.silo_names)
        if self.security == "mtls":
            return ServerCredentials(issued["server_cert"], issued["server_key"], client_ca=issued["ca"]), {
                s: ClientCredentials(issued["ca"], f["cert"], f["key"]) for s, f in issued["silos"].items()}
        tokens = self.out / "tokens"
        if fresh or not (tokens / "tokens.json").exists():
            shutil.rmtree(tokens, ignore_errors=True)
            create_tokens(tokens, self.config.silo_names)
        return ServerCredentials(issued["server_cert"], issued["server_key"], token_file=str(tokens / "tokens.json")), {
            s: ClientCredentials(issued["ca"], token_file=str(tokens / "silos" / f"{s}.token")) for s in self.config.silo_names}

    def http(self, **kw) -> httpx.Client:
        """An HTTP client for this run's aggregator that trusts its CA (no client identity)."""
        verify = client_context(self.certs / "ca.crt") if self.security != "none" else True
        return httpx.Client(base_url=self.url, verify=verify, **kw)

    def _spawn(self, name: str, args: list[str]) -> None:
        self._args[name] = args
        # Each process is its own torch.distributed world (or torchrun's): never inherit this process's rendezvous.
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        with open(self.logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)

    def kill(self, name: str) -> None:
        """SIGKILL one process (fault injection), and its children: a multi-rank silo's torchrun with all its ranks
        (torchrun starts each rank in a session of its own)."""
        proc = self.procs[name]
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def restart(self, name: str) -> None:
        """Start a process again with the arguments it had: it resumes from its own state."""
        self._spawn(name, self._args[name])

    def start(self, resume: bool = False, silos: tuple[str, ...] | None = None) -> None:
        """Start the aggregator, then the ``silos`` (default: all). ``resume`` keeps the run's state, keys and CA."""
        if not resume:
            for stale in ("state", "silos", "logs"):
                shutil.rmtree(self.out / stale, ignore_errors=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        keys_dir = self.out / "keys"
        if not (keys_dir / SECRET_FILE).exists():
            write_key_pair(create_keys(), keys_dir)
        config_path = self.out / "config.yaml"
        config_path.write_text(config_yaml(self.config))
        base_model_path(self.config, self.out / "model-cache")  # build the tiny model once, before the silos race for it
        server, self._silo_credentials = self._credentials(fresh=not resume)
        self._spawn("aggregator", aggregator_command(str(config_path), str(keys_dir / PUBLIC_FILE), str(self.out / "state"), server,
                                                     program=PROGRAM))
        self.wait_healthy()
        self.start_silos(self.config.silo_names if silos is None else silos)

    def start_silos(self, silos: tuple[str, ...]) -> None:
        """Start silo agents (after :meth:`start`): each resumes from its own work directory. A silo with ``nodes`` N > 1
        runs as N ranks on this machine under torchrun (``torch.distributed.run``, gloo without GPUs)."""
        nodes = {s.name: s.nodes for s in self.config.silos}
        for silo in silos:
            program = PROGRAM if nodes[silo] == 1 else torchrun_program(
                sys.executable, "fedshield.cli", nodes[silo], master_port=free_port(), max_restarts=SILO_GROUP_RESTARTS)
            self._spawn(silo, silo_command(str(self.out / "config.yaml"), silo, str(self.out / "keys" / SECRET_FILE),
                                           str(self.out / "silos" / silo), self.silo_url, self._silo_credentials[silo],
                                           model_cache=str(self.out / "model-cache"), program=program))


    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self.http(timeout=1.0) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    time.sleep(0.2)
        raise TimeoutError("the aggregator did not become healthy")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code not in (None, 0):
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {code}; its log ends:\n{tail}")

    def silos_done(self) -> bool:
        """Every silo process started has exited cleanly."""
        return all(self.procs[s].poll() == 0 for s in self.config.silo_names if s in self.procs)

    def records(self) -> list[dict]:
        out = []
        for silo in self.config.silo_names:
            path = self.out / "silos" / silo / "metrics.jsonl"
            if path.exists():
                out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return out

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def round_table(config: FederationConfig, round: int, rows: list[dict]) -> Table:
    """One round's table: the workload's metrics of the global model at each silo, then bytes and times."""
    table = Table(title=f"round {round}")
    table.add_column("silo", no_wrap=True)
    columns = workload_for(config).columns
    personal = ["mix w", "personal"] if config.aggregation.personalise else []
    for col in [c.header for c in columns] + personal + ["up B", "down B", "enc s", "dec s", "round s"]:
        table.add_column(col, justify="right", no_wrap=True)
    for r in sorted(rows, key=lambda r: r["silo"]):
        mixed = [_number(r.get("mix_weight")), _number(r.get("personal_score"))] if personal else []
        table.add_row(r["silo"], *(c.render(r.get("metrics") or {}) for c in columns), *mixed, f"{r['upload_bytes']:,}",
                      f"{r['download_bytes']:,}", f"{r['encrypt_s']:.3f}", f"{r['decrypt_s']:.3f}", f"{r['round_s']:.1f}")
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def build_report(config: FederationConfig, records: list[dict], wall_s: float) -> dict:
    rounds: list[dict[str, Any]] = []
    for r in range(config.rounds):
        rows = {x["silo"]: x for x in records if x["round"] == r}
        if not rows:
            continue
        rounds.append({
            "round": r,
            "mean_score": _mean(x["score"] for x in rows.values()),
            "mean_personal_score": _mean(x.get("personal_score") for x in rows.values()),
            "silos": {s: {k: x.get(k) for k in ("val_loss", "score", "metric", "metrics", "start_score", "start_metrics", "train_loss", "upload_bytes",
                                                 "download_bytes", "encrypt_s", "decrypt_s", "kept", "round_s", "weight", "lr_scale",
                                                 "epsilon", "epsilon_unit", "mix_weight", "personal_score", "personal_metrics")}
                      | {"loss": x["val_loss"]} for s, x in sorted(rows.items())},
        })
    metric = next((x["metric"] for x in records), None)
    return {
        "name": config.name,
        "rounds": rounds,
        "summary": {
            "rounds": len(rounds),
            "silos": list(config.silo_names),
            "workload": config.workload,
            "metric": metric,
            "model": config.model.path or "tiny (random-initialised demo model)",
            "start_mean_score": _mean(x.get("start_score") for x in rounds[0]["silos"].values()) if rounds else None,
            "first_mean_score": rounds[0]["mean_score"] if rounds else None,
            "final_fairness": fairness_indices({s: x["score"] for s, x in rounds[-1]["silos"].items()}) if rounds else None,
            "final_mean_score": rounds[-1]["mean_score"] if rounds else None,
            "personalise": config.aggregation.personalise,
            "final_mean_personal_score": rounds[-1]["mean_personal_score"] if rounds else None,
            "final_personal_fairness": _personal_fairness(rounds[-1]) if rounds else None,
            "upload_bytes_total": sum(x["upload_bytes"] for x in records),
            "download_bytes_total": sum(x["download_bytes"] for x in records),
            "wall_s": wall_s,
        },
        "config": config.model_dump(mode="json"),
    }


def _personal_fairness(round: dict) -> dict | None:
    """Fairness indices of the personal adapters' scores of one round (None without personalisation)."""
    scores = {s: x["personal_score"] for s, x in round["silos"].items() if x.get("personal_score") is not None}
    return fairness_indices(scores) if scores else None


def plot_scores(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for silo in report["summary"]["silos"]:
        points = [(r["round"], r["silos"][silo]["score"]) for r in report["rounds"] if silo in r["silos"]]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=silo)
    ax.plot([r["round"] for r in report["rounds"]], [r["mean_score"] for r in report["rounds"]], "k--", label="mean")
    personal = [(r["round"], r["mean_personal_score"]) for r in report["rounds"] if r.get("mean_personal_score") is not None]
    if personal:
        ax.plot([p[0] for p in personal], [p[1] for p in personal], "k:", marker="x", label="mean personal (PPLR)")
    start = report["summary"]["start_mean_score"]
    if start is not None:
        ax.axhline(start, color="grey", linewidth=0.8, linestyle=":", label="before round 0")
    metric = report["summary"]["metric"] or "score"
    ax.set_xlabel("round")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"FedShield: per-silo {metric} ({report['summary']['workload']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LOG_WIDTH = 160  # columns of the round tables when stdout is a file or pipe (rich would cut them at 80)

_SECURITY_NOTE = {"mtls": "mutual TLS, certificates in certs/", "token": "TLS + bearer tokens", "none": "plain HTTP, no identities"}


def run_local(config: FederationConfig, out: str | Path, console: Console | None = None, timeout_s: float = 3600.0,
              security: str = "mtls") -> dict:
    """Run the federation to the end; write ``report.json`` and ``scores.png`` into ``out``."""
    console = console or Console(width=None if sys.stdout.isatty() else LOG_WIDTH)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = with_local_ports(config)
    federation = Federation(config, out, security=security)
    start = time.monotonic()
    shown: set[int] = set()
    try:
        console.print(f"[bold]FedShield[/bold]: {len(config.silos)} silos, {config.rounds} rounds, {config.workload} workload on "
                      f"{config.model.path or 'the tiny demo model'}, pruning {config.privacy.pruning}, CKKS encryption; "
                      f"files in {out}")
        federation.start()
        console.print(f"aggregator {federation.url} ({_SECURITY_NOTE[security]})  metrics: aggregator :{config.aggregator_metrics_port}, "
                      + ", ".join(f"{s.name} :{s.metrics_port}" for s in config.silos))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("silo rounds", total=config.rounds * len(config.silos))
            while not federation.silos_done():
                federation.check_alive()
                if time.monotonic() - start > timeout_s:
                    raise TimeoutError(f"the federation did not finish within {timeout_s} s")
                records = federation.records()
                progress.update(task, completed=len(records))
                for r in range(config.rounds):
                    rows = [x for x in records if x["round"] == r]
                    if r not in shown and len(rows) == len(config.silos):
                        progress.console.print(round_table(config, r, rows))
                        shown.add(r)
                time.sleep(0.5)
        federation.check_alive()
        records = federation.records()
        for r in range(config.rounds):
            rows = [x for x in records if x["round"] == r]
            if r not in shown and rows:
                console.print(round_table(config, r, rows))
    finally:
        federation.stop()
    report = build_report(config, records, time.monotonic() - start)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_scores(report, out / "scores.png")
    s = report["summary"]
    before = f"{s['start_mean_score']:.3f} before round 0 ({'zero-shot' if config.model.path else 'untrained'}), " \
        if s["start_mean_score"] is not None else ""
    console.print(f"[bold]done[/bold] in {s['wall_s']:.0f} s: mean {s['metric']} {before}{s['first_mean_score']:.3f} after round 0 -> "
                  f"{s['final_mean_score']:.3f} after round {len(report['rounds']) - 1}; "
                  f"{s['upload_bytes_total']:,} bytes up, {s['download_bytes_total']:,} down. "
                  + (f"personal adapters (PPLR warm-up): mean {s['metric']} {s['final_mean_personal_score']:.3f}, in "
                     f"{out / 'silos'}/<silo>/adapter-personal. " if s["final_mean_personal_score"] is not None else "")
                  + f"report: {out / 'report.json'}, plot: {out / 'scores.png'}; adapters: {out / 'silos'}/<silo>/adapter")
    return report
