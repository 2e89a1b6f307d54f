"""Load: 100 concurrent ~10 MB uploads over mutual TLS to one aggregator process on loopback.

Prints one JSON object: {"uploads": 100, "upload_mb": 10, "accepted": .., "peak_rss_mb": .., "wall_s": .., "retries": ..}.
Target: every upload accepted with the aggregator's peak RSS (VmHWM) <= 1 GB.

Two more lines, each against its own aggregator process:

- ``status_ms_at_4000_rounds``: the median time of ``GET /v1/status`` (as a silo) against a ledger of
  4,000 closed rounds. Target <= 20 ms (a summary and one page: independent of the run's length).
- ``slow_body``: one silo opens a 10 MB upload and sends its body a kilobyte at a time; meanwhile 8
  other silos upload 10 MB each. Target: all 8 accepted while the slow one holds (only) its own slot,
  which the aggregator ends with a 408 once the body is overdue.

The federation has 100 silos, so each upload is a distinct, valid one: its own silo name,
its own client certificate, the planned weight (1/100). To keep the benchmark's own cost
down, one update is encrypted once and its ciphertext records are re-framed under each
silo's header (with a correct checksum). The aggregator cannot tell and does the same work
for each: stream to disk, SHA-256, header and checksum checks, loading every ciphertext
(slot count, scale) and adding it to the running sum; the 100th upload closes the round and
writes the aggregate. The silos run as threads of this process with the real AggregatorClient
(Retry-After honoured, backoff with jitter), each streaming its envelope from a file.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from fedshield.aggregator.store import Store
from fedshield.config import FederationConfig, PrivacySpec, SiloSpec
from fedshield.crypto import EnvelopeReader, create_keys, encrypt_update, write_key_pair
from fedshield.crypto.envelope import ENVELOPE_MAGIC
from fedshield.crypto.framing import write_framed
from fedshield.crypto.keys import PUBLIC_FILE
from fedshield.crypto.noise import max_summable
from fedshield.crypto.params import CkksParams, PackingParams
from fedshield.local.demo import PROGRAM, free_port
from fedshield.security.certs import issue_all, silo_files
from fedshield.security.tls import client_context
from fedshield.spec.commands import ServerCredentials, aggregator_command
from fedshield.wire.client import AggregatorClient, ClientSecurity
from fedshield.wire.messages import JoinRequest, UploadMetadata

LAYOUT = "load-benchmark"
VALUES_PER_CIPHERTEXT = 8192  # 4096 slots x 2 digits


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def envelopes(keys, silos: list[str], kept: int, out: Path, max_silos: int | None = None) -> dict[str, Path]:
    """One encryption, re-framed per silo (same records, that silo's header, a fresh checksum)."""
    values = np.random.default_rng(0).uniform(-1e-2, 1e-2, kept)
    template = encrypt_update(keys, values, weight=1 / len(silos), round=0, silo=silos[0], layout=LAYOUT,
                              packing=PackingParams(max_silos=max_silos or len(silos)))
    reader = EnvelopeReader.from_bytes(template.data)
    records = list(reader.ciphertexts())
    header = reader.header.model_dump(mode="json")
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for silo in silos:
        paths[silo] = out / f"{silo}.fshe"
        with open(paths[silo], "wb") as fh:
            write_framed(fh, ENVELOPE_MAGIC, {**header, "silo": silo}, records)
    return paths


def scale_bits_for(silos: int) -> int:
    """The smallest CKKS scale (from 18) whose noise budget covers a sum of ``silos`` uploads."""
    return next(b for b in range(18, 31) if max_summable(b) >= max(silos, 16))


def start_aggregator(root: Path, config: FederationConfig, keys, silos: list[str]) -> tuple[subprocess.Popen, str, dict]:
    """An aggregator process over mutual TLS on ``root``'s state (config, keys and certificates written there)."""
    (root / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    write_key_pair(keys, root / "keys")
    issued = issue_all(root / "certs", silos)
    log = open(root / "aggregator.log", "wb")
    proc = subprocess.Popen(
        aggregator_command(str(root / "config.yaml"), str(root / "keys" / PUBLIC_FILE), str(root / "state"),
                           ServerCredentials(issued["server_cert"], issued["server_key"], client_ca=issued["ca"]), program=PROGRAM),
        stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"https://127.0.0.1:{config.aggregator_port}"
    try:
        _wait_healthy(url, root / "certs" / "ca.crt", proc, timeout_s=300)
    except BaseException:
        stop(proc)
        raise
    return proc, url, issued


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def status_at_rounds(rounds: int = 4000, calls: int = 21) -> float:
    """Median ms of GET /v1/status (as a silo) against a ledger of ``rounds`` closed rounds."""
    silos = ["bank-a", "bank-b"]
    with tempfile.TemporaryDirectory(prefix="fedshield-status-") as tmp:
        root = Path(tmp)
        store = Store(root / "state")
        for silo in silos:
            store.add_silo(silo, 100, 1000, LAYOUT)
        meta = json.dumps({"samples": 100, "train_loss": 0.5, "val_loss": 0.5, "val_auc": 0.7, "epsilon": 1.0})
        rows = []
        for r in range(rounds):
            rows.append(("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?)", (r, 1.0, 2.0, json.dumps(silos), 1.0, 0.1)))
            rows += [("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)", (r, s, "0" * 64, 10, meta, 1.0 + r)) for s in silos]
        store._transaction(rows)
        store.close()
        config = FederationConfig(name="status", rounds=rounds + 1, silos=tuple(SiloSpec(name=s) for s in silos),
                                  aggregator_port=free_port())
        proc, url, _ = start_aggregator(root, config, create_keys(), silos)
        try:
            mine = silo_files(root / "certs", "bank-a")
            with httpx.Client(base_url=url, verify=client_context(mine.ca, mine.cert, mine.key), timeout=30) as http:
                http.get("/v1/status").raise_for_status()
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    body = http.get("/v1/status").json()
                    times.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.06)  # under the per-silo request rate
            assert body["summary"]["rounds_closed"] == rounds
        finally:
            stop(proc)
        return float(np.median(times))


def slow_body(honest: int = 8, upload_mb: float = 10.0, slow_s: float = 20.0) -> dict:
    """A slow-body silo holds its own upload slot while ``honest`` others upload ``upload_mb`` each."""
    silos = ["slow"] + [f"honest-{i}" for i in range(honest)]
    with tempfile.TemporaryDirectory(prefix="fedshield-slow-") as tmp:
        root = Path(tmp)
        keys = create_keys()
        probe = encrypt_update(keys, np.zeros(VALUES_PER_CIPHERTEXT), weight=0.5, round=0, silo="probe", layout=LAYOUT)
        kept = math.ceil(upload_mb * 2**20 / len(probe.data)) * VALUES_PER_CIPHERTEXT
        config = FederationConfig(name="slow", rounds=1, silos=tuple(SiloSpec(name=s) for s in silos), aggregator_port=free_port(),
                                  privacy=PrivacySpec(pruning=0.5, packing=PackingParams(max_silos=16)))
        files = envelopes(keys, silos, kept, root / "envelopes", max_silos=16)
        proc, url, _ = start_aggregator(root, config, keys, silos)
        try:
            clients = {s: AggregatorClient(url, timeout_s=300, security=ClientSecurity(ca=f.ca, cert=f.cert, key=f.key))
                       for s in silos for f in [silo_files(root / "certs", s)]}
            for silo, client in clients.items():
                client.join(JoinRequest(silo=silo, samples=100, vector_size=2 * kept, layout=LAYOUT))
            data = files["slow"].read_bytes()
            outcome: dict = {}
            released = threading.Event()

            def trickle():  # until the aggregator has given the slot back (then this client gives up too)
                for i in range(0, len(data), 1024):
                    if released.is_set():
                        return
                    yield data[i:i + 1024]
                    time.sleep(1.0)

            def slow_upload() -> None:
                f = silo_files(root / "certs", "slow")
                t0 = time.perf_counter()
                try:
                    with httpx.Client(base_url=url, verify=client_context(f.ca, f.cert, f.key), timeout=120) as http:
                        r = http.put("/v1/rounds/0/uploads/slow", content=trickle(), params={"samples": 100},
                                     headers={"content-length": str(len(data)), "content-type": "application/octet-stream"})
                        outcome["status"] = r.status_code
                        outcome["error"] = r.json().get("error")
                except Exception as exc:  # the client gave up mid-body (it stops once its slot was freed)
                    outcome["status"], outcome["error"] = None, type(exc).__name__
                outcome["held_s"] = round(time.perf_counter() - t0, 1)

            slow = threading.Thread(target=slow_upload)
            slow.start()
            time.sleep(2.0)  # the slow body is streaming: its slot is taken
            results: dict = {}

            def upload(silo: str) -> None:
                try:
                    results[silo] = clients[silo].upload(0, silo, files[silo], UploadMetadata(samples=100))
                except Exception as exc:
                    results[silo] = exc

            t0 = time.perf_counter()
            threads = [threading.Thread(target=upload, args=(s,)) for s in silos[1:]]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            honest_s = time.perf_counter() - t0
            slow_still_streaming = slow.is_alive()
            # The slow silo's slot: a second upload of it is 429 upload_in_progress while held, anything else once freed.
            f = silo_files(root / "certs", "slow")
            with httpx.Client(base_url=url, verify=client_context(f.ca, f.cert, f.key), timeout=30) as http:
                while time.perf_counter() - t0 < 300:
                    probe = http.put("/v1/rounds/0/uploads/slow", content=b"not an envelope", params={"samples": 100})
                    error = probe.json().get("error")
                    if error == "rate_limited":  # the probe's own upload rate: wait and ask again
                        time.sleep(float(probe.headers.get("retry-after", "1")))
                        continue
                    if error != "upload_in_progress":
                        break
                    time.sleep(1.0)
            outcome["slot_released_after_s"] = round(time.perf_counter() - t0 + 2.0, 1)
            released.set()
            slow.join(300)
        finally:
            for client in locals().get("clients", {}).values():
                client.close()
            stop(proc)
        completed = sum(1 for r in results.values() if not isinstance(r, Exception))
        return {"honest_uploads": honest, "honest_completed": completed, "honest_wall_s": round(honest_s, 2),
                "slow_still_streaming_when_they_finished": slow_still_streaming, "slow_outcome": outcome}


def waiting_silos(silos: int = 20, seconds: float = 10.0) -> float:
    """Requests per waiting silo per second: ``silos`` silos wait ``seconds`` for the aggregate of a round that stays open."""
    names = [f"silo-{i:03d}" for i in range(silos)]
    with tempfile.TemporaryDirectory(prefix="fedshield-wait-") as tmp:
        root = Path(tmp)
        config = FederationConfig(name="wait", rounds=1, silos=tuple(SiloSpec(name=s) for s in names), aggregator_port=free_port(),
                                  privacy=PrivacySpec(packing=PackingParams(max_silos=max(16, silos))))
        proc, url, _ = start_aggregator(root, config, create_keys(CkksParams(scale_bits=scale_bits_for(silos))), names)
        calls: dict[str, int] = {s: 0 for s in names}
        clients = {s: AggregatorClient(url, timeout_s=60, security=ClientSecurity(ca=f.ca, cert=f.cert, key=f.key))
                   for s in names for f in [silo_files(root / "certs", s)]}
        try:
            for silo, client in clients.items():
                client.join(JoinRequest(silo=silo, samples=100, vector_size=1000, layout=LAYOUT))

            def wait(silo: str) -> None:
                client, real = clients[silo], clients[silo]._call

                def counted(send, **kw):
                    calls[silo] += 1
                    return real(send, **kw)

                client._call = counted  # type: ignore[method-assign]
                try:
                    client.aggregate(0, timeout_s=seconds)
                except TimeoutError:
                    pass

            threads = [threading.Thread(target=wait, args=(s,)) for s in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for client in clients.values():
                client.close()
            stop(proc)
        return sum(calls.values()) / (silos * seconds)


def run(uploads: int = 100, upload_mb: float = 10.0) -> dict:
    silos = [f"silo-{i:03d}" for i in range(uploads)]
    with tempfile.TemporaryDirectory(prefix="fedshield-load-") as tmp:
        root = Path(tmp)
        keys = create_keys(CkksParams(scale_bits=scale_bits_for(uploads)))
        probe = encrypt_update(keys, np.zeros(VALUES_PER_CIPHERTEXT), weight=0.5, round=0, silo="probe", layout=LAYOUT)
        per_ciphertext = len(probe.data)
        kept = math.ceil(upload_mb * 2**20 / per_ciphertext) * VALUES_PER_CIPHERTEXT
        config = FederationConfig(
            name="load", rounds=1, silos=tuple(SiloSpec(name=s) for s in silos), aggregator_port=free_port(),
            privacy=PrivacySpec(pruning=0.5, packing=PackingParams(max_silos=uploads)),
        )
        files = envelopes(keys, silos, kept, root / "envelopes")
        size = files[silos[0]].stat().st_size
        proc, url, _ = start_aggregator(root, config, keys, silos)
        try:
            clients = {s: AggregatorClient(url, timeout_s=300, security=ClientSecurity(ca=f.ca, cert=f.cert, key=f.key))
                       for s in silos for f in [silo_files(root / "certs", s)]}
            for silo, client in clients.items():
                client.join(JoinRequest(silo=silo, samples=100, vector_size=2 * kept, layout=LAYOUT))
            idle_rss = peak_rss_mb(proc.pid)
            results: dict[str, object] = {}
            start_line = threading.Barrier(len(silos) + 1)

            def upload(silo: str) -> None:
                start_line.wait()
                try:
                    results[silo] = clients[silo].upload(0, silo, files[silo], UploadMetadata(samples=100))
                except Exception as exc:  # reported, not raised: the benchmark counts what was accepted
                    results[silo] = exc

            threads = [threading.Thread(target=upload, args=(s,)) for s in silos]
            for t in threads:
                t.start()
            start_line.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            first = silo_files(root / "certs", silos[0])
            with httpx.Client(base_url=url, verify=client_context(first.ca, first.cert, first.key)) as http:
                status = http.get("/v1/status").json()
            peak = peak_rss_mb(proc.pid)
        finally:
            for client in locals().get("clients", {}).values():
                client.close()
            stop(proc)
            log_tail = (root / "aggregator.log").read_text(errors="replace")[-2000:]
        failures = {s: repr(r) for s, r in results.items() if isinstance(r, Exception)}
        if failures:
            print(log_tail, file=sys.stderr)
        accepted = sum(1 for r in results.values() if not isinstance(r, Exception) and not r.duplicate)
        closed = status["closed"][0]["contributors"] if status["closed"] else []
        return {
            "uploads": uploads, "upload_mb": upload_mb, "accepted": accepted, "peak_rss_mb": round(peak, 1), "wall_s": round(wall, 2),
            "retries": sum(c.retried for c in clients.values()), "upload_bytes": size, "ciphertexts_per_upload": kept // VALUES_PER_CIPHERTEXT,
            "aggregator_idle_rss_mb": round(idle_rss, 1), "round_closed_with": len(closed),
            "max_concurrent_uploads": config.limits.max_concurrent_uploads, "transport": "mutual TLS (loopback)",
            "failures": failures,
        }


def _wait_healthy(url: str, ca: Path, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(verify=client_context(ca), timeout=1) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the aggregator exited with {proc.returncode}")
            try:
                if http.get(f"{url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
    raise TimeoutError("the aggregator did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--upload-mb", type=float, default=10.0)
    parser.add_argument("--out", default=None, help="also write the JSON here (e.g. benchmarks/results/load.json)")
    args = parser.parse_args(argv)
    result = run(args.uploads, args.upload_mb)
    result["status_ms_at_4000_rounds"] = round(status_at_rounds(4000), 2)
    result["slow_body"] = slow_body(8, args.upload_mb)
    result["wait_requests_per_silo_s"] = round(waiting_silos(20, 10.0), 3)
    text = json.dumps(result)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = (result["accepted"] == args.uploads and result["peak_rss_mb"] <= 1024 and result["status_ms_at_4000_rounds"] <= 20
          and result["slow_body"]["honest_completed"] == 8 and result["wait_requests_per_silo_s"] <= 0.5)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
