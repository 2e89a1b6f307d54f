"""Load: 100 concurrent ~10 MB uploads over mutual TLS to one aggregator process on loopback.

Prints one JSON object: {"uploads": 100, "upload_mb": 10, "accepted": .., "peak_rss_mb": .., "wall_s": .., "retries": ..}.
Target: every upload accepted with the aggregator's peak RSS (VmHWM) <= 1 GB.

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

from fedshield.config import FederationConfig, PrivacySpec, SiloSpec
from fedshield.crypto import EnvelopeReader, create_keys, encrypt_update, write_key_pair
from fedshield.crypto.envelope import ENVELOPE_MAGIC
from fedshield.crypto.framing import write_framed
from fedshield.crypto.keys import PUBLIC_FILE
from fedshield.crypto.params import PackingParams
from fedshield.demo import free_port
from fedshield.security.certs import issue_all, silo_files
from fedshield.security.tls import client_context
from fedshield.wire.client import AggregatorClient, ClientSecurity
from fedshield.wire.messages import JoinRequest, UploadMetadata

LAYOUT = "load-benchmark"
VALUES_PER_CIPHERTEXT = 8192  # 4096 slots x 2 digits


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def envelopes(keys, silos: list[str], kept: int, out: Path) -> dict[str, Path]:
    """One encryption, re-framed per silo (same records, that silo's header, a fresh checksum)."""
    values = np.random.default_rng(0).uniform(-1e-2, 1e-2, kept)
    template = encrypt_update(keys, values, weight=1 / len(silos), round=0, silo=silos[0], layout=LAYOUT,
                              packing=PackingParams(max_silos=len(silos)))
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


def run(uploads: int = 100, upload_mb: float = 10.0) -> dict:
    silos = [f"silo-{i:03d}" for i in range(uploads)]
    with tempfile.TemporaryDirectory(prefix="fedshield-load-") as tmp:
        root = Path(tmp)
        keys = create_keys()
        probe = encrypt_update(keys, np.zeros(VALUES_PER_CIPHERTEXT), weight=0.5, round=0, silo="probe", layout=LAYOUT)
        per_ciphertext = len(probe.data)
        kept = math.ceil(upload_mb * 2**20 / per_ciphertext) * VALUES_PER_CIPHERTEXT
        config = FederationConfig(
            name="load", rounds=1, silos=tuple(SiloSpec(name=s) for s in silos), aggregator_port=free_port(),
            privacy=PrivacySpec(pruning=0.5, packing=PackingParams(max_silos=uploads)),
        )
        (root / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        write_key_pair(keys, root / "keys")
        issued = issue_all(root / "certs", silos)
        files = envelopes(keys, silos, kept, root / "envelopes")
        size = files[silos[0]].stat().st_size
        log = open(root / "aggregator.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedshield.cli", "aggregator", "--config", str(root / "config.yaml"),
             "--public-key", str(root / "keys" / PUBLIC_FILE), "--state-dir", str(root / "state"),
             "--tls-cert", issued["server_cert"], "--tls-key", issued["server_key"], "--client-ca", issued["ca"]],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{config.aggregator_port}"
        try:
            _wait_healthy(url, root / "certs" / "ca.crt", proc)
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
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
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
    text = json.dumps(result)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["accepted"] == args.uploads and result["peak_rss_mb"] <= 1024
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
