"""`fedshield unlearn --run-dir`: federated unlearning on a finished local run.

The run's aggregator is started again on its state; the forgetting silo runs E2URec in
this process and uploads the encrypted replacement; as many other silos of the run as
``privacy.unlearning_approvals`` asks approve its exact SHA-256, each over HTTP with its own
credentials (as ``fedshield approve`` would); every other silo agent is started once,
applies the published replacement and exits. The audit record is printed and
appended to ``<run>/unlearning.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import load_config
from ..crypto import load_keys
from ..crypto.keys import SECRET_FILE
from ..security.certs import silo_files
from ..silo_agent.agent import SiloAgent
from ..silo_agent.approval import approve_all
from ..silo_agent.forget import ForgetRequest, forget_and_upload, wait_published
from ..unlearning import UnlearningSpec
from ..wire.client import AggregatorClient, ClientSecurity
from ..wire.unlearning import UnlearningRecord
from .demo import Federation, free_port


def run_security(run_dir: Path) -> str:
    """How the run was secured, from what it left behind."""
    if (run_dir / "tokens" / "tokens.json").exists():
        return "token"
    return "mtls" if (run_dir / "certs" / "ca.crt").exists() else "none"


def silo_security(run_dir: Path, security: str, silo: str) -> ClientSecurity | None:
    if security == "none":
        return None
    files = silo_files(run_dir / "certs", silo)
    if security == "token":
        return ClientSecurity(ca=str(files.ca), token=(run_dir / "tokens" / "silos" / f"{silo}.token").read_text().strip())
    return ClientSecurity(ca=str(files.ca), cert=str(files.cert), key=str(files.key))


def approve_locally(url: str, run_dir: Path, security: str, silos: tuple[str, ...], version: int, sha256: str,
                    needed: int) -> None:
    """The first ``needed`` of ``silos`` approve unlearning ``version`` (exactly ``sha256``), each with its own credentials."""
    clients = {s: AggregatorClient(url, security=silo_security(run_dir, security, s)) for s in silos[:needed]}
    try:
        approve_all(clients, version, sha256, needed)
    finally:
        for client in clients.values():
            client.close()


def unlearn_local(run_dir: str | Path, silo: str, request: ForgetRequest, spec: UnlearningSpec = UnlearningSpec(),
                  timeout_s: float = 1800.0) -> UnlearningRecord:
    """Forget ``request``'s users at ``silo`` of the finished local run in ``run_dir``; every silo applies the result."""
    run_dir = Path(run_dir)
    if not (run_dir / "state" / "state.db").exists():
        raise FileNotFoundError(f"{run_dir} holds no finished local run (no state/state.db)")
    config = load_config(run_dir / "config.yaml")
    if silo not in config.silo_names:
        raise ValueError(f"silo {silo!r} is not in the run's federation ({', '.join(config.silo_names)})")
    silos = tuple(s.model_copy(update={"metrics_port": None}) for s in config.silos)
    config = config.model_copy(update={"aggregator_port": free_port(), "aggregator_metrics_port": None, "silos": silos})
    security = run_security(run_dir)
    federation = Federation(config, run_dir, security=security)
    try:
        federation.start(resume=True, silos=())
        agent = SiloAgent(config, silo, load_keys(run_dir / "keys" / SECRET_FILE), run_dir / "silos" / silo, federation.url,
                          model_cache=run_dir / "model-cache", security=silo_security(run_dir, security, silo))
        uploaded = forget_and_upload(agent, request, spec)
        others = tuple(s for s in config.silo_names if s != silo)
        if uploaded.receipt.pending:
            approve_locally(federation.url, run_dir, security, others, uploaded.version, uploaded.receipt.sha256,
                            config.privacy.unlearning_approvals)
        record = wait_published(agent, uploaded.version, timeout_s=60.0)
        federation.start_silos(others)
        deadline = time.monotonic() + timeout_s
        while not federation.silos_done():
            federation.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("the other silos did not apply the unlearning in time")
            time.sleep(0.5)
    finally:
        federation.stop()
    with open(run_dir / "unlearning.jsonl", "a", encoding="utf-8") as fh:
        fh.write(record.model_dump_json() + "\n")
    return record
