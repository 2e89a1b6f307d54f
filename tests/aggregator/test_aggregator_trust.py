"""What the aggregator trusts, over real HTTP against a running aggregator (real TenSEAL, real uvicorn).

Each finding of the review is a test: the hostile request is refused (a 4xx naming the field) or
survived, the aggregator's state is unchanged, and where the federation goes on it finishes with the
fault-free result. Findings: self-declared weights, a one-silo aggregate, a plan that fails while a
round opens, a failed ledger write, torn and stale files, two aggregators on one volume, slow and
curious peers, unsanitised texts.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.aggregator_harness import RunningAggregator

from fedshield.aggregator import rounds as rounds_module
from fedshield.aggregator.rounds import Coordinator
from fedshield.aggregator.store import StateLocked, Store
from fedshield.config import AggregationSpec, FederationConfig, LimitsSpec, SiloSpec
from fedshield.crypto import EnvelopeReader, decrypt_envelope, encrypt_update
from fedshield.crypto.envelope import save_envelope
from fedshield.plan import compute_plan, effective_samples
from fedshield.updates import kept_count

SIZE, LAYOUT = 3000, "layout-trust"
FAST = LimitsSpec(silo_requests_per_s=1e6, silo_request_burst=10**6, silo_uploads_per_minute=1e8, silo_upload_burst=10**6,
                 aggregate_wait_s=0.0)  # an open round's aggregate: 425 at once, no long poll


def config(silos=("bank-a", "bank-b"), samples=None, rounds=2, limits=FAST, **aggregation) -> FederationConfig:
    aggregation = {"min_silos": 2, "round_deadline_seconds": 600, **aggregation}
    return FederationConfig(silos=tuple(SiloSpec(name=n, samples=(samples or {}).get(n)) for n in silos), rounds=rounds,
                            aggregation=AggregationSpec(**aggregation), limits=limits)


def join(url: str, silo: str, samples: int = 100) -> httpx.Response:
    return httpx.post(f"{url}/v1/join", json={"silo": silo, "samples": samples, "vector_size": SIZE, "layout": LAYOUT})


def join_all(url: str, silos=("bank-a", "bank-b"), samples: dict | None = None) -> dict:
    for silo in silos:
        r = join(url, silo, (samples or {}).get(silo, 100))
        assert r.status_code == 200, r.text
    return r.json()


def values(plan: dict, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1e-2, 1e-2, kept_count(SIZE, plan["pruning"]))


def envelope(keys, plan: dict, silo: str, round: int = 0, seed: int = 0):
    return encrypt_update(keys, values(plan, seed), weight=plan["weights"][silo], round=round, silo=silo, layout=LAYOUT)


def put(url: str, round: int, silo: str, data: bytes, **params) -> httpx.Response:
    return httpx.put(f"{url}/v1/rounds/{round}/uploads/{silo}", content=data, params={"samples": 100, **params},
                     headers={"content-type": "application/octet-stream"}, timeout=30)


def snapshot(agg: RunningAggregator) -> tuple:
    """Everything an accepted request could change: status, ledger rows, files, the running sum."""
    status = agg.coordinator.status().model_dump()
    status["plan"].pop("deadline_s")
    db = sqlite3.connect(agg.coordinator.store.root / "state.db")
    ledger = {t: db.execute(f"SELECT * FROM {t}").fetchall() for t in ("silos", "rounds", "uploads", "withdrawals", "unlearnings")}
    db.close()
    files = sorted(str(p.relative_to(agg.coordinator.store.root)) for p in (agg.coordinator.store.root / "rounds").rglob("*") if p.is_file())
    running = agg.coordinator._sum.to_bytes() if agg.coordinator._sum and agg.coordinator._sum.contributors else b""
    return status, ledger, files, running


def tick_until(agg: RunningAggregator, condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        agg.coordinator.tick()
        time.sleep(0.05)


def average(keys, url: str, round: int) -> np.ndarray:
    r = httpx.get(f"{url}/v1/rounds/{round}/aggregate")
    assert r.status_code == 200, r.text
    return decrypt_envelope(keys, EnvelopeReader.from_bytes(r.content), round=round)


# --- 1. weights from what the federation agreed -------------------------------------------------------


def test_a_claim_above_the_declared_samples_is_refused_naming_the_field(public_keys, tmp_path):
    with RunningAggregator(config(samples={"bank-a": 100, "bank-b": 100}), public_keys, tmp_path / "s") as agg:
        r = join(agg.url, "bank-a", 2**53)
        assert (r.status_code, r.json()["error"]) == (422, "samples_above_declared") and "samples" in r.json()["detail"]
        assert agg.coordinator.store.silos() == {}


def test_without_declared_samples_weights_are_equal_whatever_a_silo_claims(public_keys, keys, tmp_path):
    with RunningAggregator(config(), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url, samples={"bank-a": 2**53, "bank-b": 1})
        assert plan["weights"] == {"bank-a": 0.5, "bank-b": 0.5}
        sent = {}
        for i, silo in enumerate(("bank-a", "bank-b")):
            up = envelope(keys, plan, silo, seed=i)
            sent[silo] = up.sent
            assert put(agg.url, 0, silo, up.data).status_code == 200
        got = average(keys, agg.url, 0)
        assert np.abs(got - 0.5 * (sent["bank-a"] + sent["bank-b"])).max() < 1e-12
        assert np.abs(sent["bank-b"]).max() > 0  # the honest silo's update is not quantised away


def test_a_silo_weight_is_capped(public_keys, tmp_path):
    declared = {"bank-a": 10**12, "bank-b": 1, "bank-c": 1}
    silos = tuple(declared)
    with RunningAggregator(config(silos, samples=declared, max_weight=0.5), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url, silos, samples=declared)
        assert plan["weights"]["bank-a"] == pytest.approx(0.5) and plan["weights"]["bank-b"] == pytest.approx(0.25)


@pytest.mark.parametrize("field, value", [("val_loss", 1e300), ("val_loss", 1.7e308), ("val_loss", -1.0), ("train_loss", 1e5),
                                          ("val_score", 2.0), ("epsilon", -0.5), ("val_loss", "nan"), ("val_loss", "inf")])
def test_out_of_range_reports_are_a_4xx_naming_the_field_and_change_nothing(public_keys, keys, tmp_path, field, value):
    with RunningAggregator(config(), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        before = snapshot(agg)
        r = put(agg.url, 0, "bank-a", envelope(keys, plan, "bank-a").data, **{field: value})
        assert r.status_code == 422 and field in r.json()["detail"], r.text
        assert snapshot(agg) == before


def test_the_largest_allowed_loss_under_dynamic_balance_leaves_a_finite_plan(public_keys, keys, tmp_path):
    cfg = config(strategy="dynamic_balance", q=10.0, gamma=5.0)
    with RunningAggregator(cfg, public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        for i, (silo, loss) in enumerate((("bank-a", 1e4), ("bank-b", 0.0))):
            assert put(agg.url, 0, silo, envelope(keys, plan, silo, seed=i).data, val_loss=loss).status_code == 200
        plan = httpx.get(f"{agg.url}/v1/plan").json()
        assert plan["round"] == 1 and plan["weights"]["bank-a"] == pytest.approx(cfg.aggregation.max_weight)
        assert all(math.isfinite(w) for w in plan["weights"].values())
        assert all(0.5 <= s <= 2.0 for s in plan["lr_scales"].values())
    with RunningAggregator(cfg, public_keys, tmp_path / "s") as again:  # and a restart reads the same plan
        assert httpx.get(f"{again.url}/v1/plan").json()["weights"] == plan["weights"]


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none())


@settings(max_examples=300, deadline=None, database=None)
@given(claims=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(1, 2**53), min_size=2),
       losses=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), floats),
       q=st.floats(0, 10), gamma=st.floats(0, 5), cap=st.floats(0.2, 1.0), declared=st.booleans(),
       strategy=st.sampled_from(["fedavg", "dynamic_balance"]))
def test_no_plan_holds_nan_or_infinity(claims, losses, q, gamma, cap, declared, strategy):
    names = sorted(claims)
    cfg = FederationConfig(silos=tuple(SiloSpec(name=n, samples=(10**12 if declared else None)) for n in names),
                           aggregation=AggregationSpec(strategy=strategy, q=q, gamma=gamma, max_weight=max(cap, 1 / len(names))))
    weights, scales = compute_plan(cfg, effective_samples(cfg, claims), losses)
    assert sorted(weights) == names and all(math.isfinite(w) and 0 <= w <= cfg.aggregation.max_weight + 1e-12 for w in weights.values())
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(math.isfinite(s) and 0.5 <= s <= 2.0 for s in scales.values())


# --- 2. no aggregate from fewer than 2 contributors ------------------------------------------------------


def test_the_spec_refuses_min_silos_below_2():
    with pytest.raises(ValueError, match="min_silos"):
        AggregationSpec(min_silos=1)


def test_a_round_short_of_2_uploads_at_its_deadline_is_extended_not_published(public_keys, keys, tmp_path):
    with RunningAggregator(config(round_deadline_seconds=0.3), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        ups = {silo: envelope(keys, plan, silo, seed=i) for i, silo in enumerate(("bank-a", "bank-b"))}
        assert put(agg.url, 0, "bank-a", ups["bank-a"].data).status_code == 200
        time.sleep(0.5)
        for _ in range(5):
            agg.coordinator.tick()
        r = httpx.get(f"{agg.url}/v1/rounds/0/aggregate")
        assert (r.status_code, r.json()["error"]) == (425, "round_not_closed")
        assert httpx.get(f"{agg.url}/v1/plan").json()["round"] == 0
        assert put(agg.url, 0, "bank-b", ups["bank-b"].data).status_code == 200
        got = average(keys, agg.url, 0)
        assert np.abs(got - 0.5 * (ups["bank-a"].sent + ups["bank-b"].sent)).max() < 1e-12


def test_a_federation_left_with_one_silo_stops_without_publishing(public_keys, keys, tmp_path):
    with RunningAggregator(config(), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        assert put(agg.url, 0, "bank-b", envelope(keys, plan, "bank-b").data).status_code == 200
        r = httpx.post(f"{agg.url}/v1/silos/bank-a/withdraw", json={"reason": "leaving"})
        assert r.status_code == 200 and r.json()["state"] == "finished"
        r = httpx.get(f"{agg.url}/v1/rounds/0/aggregate")
        assert (r.status_code, r.json()["error"]) == (409, "federation_stopped")
        assert not (agg.coordinator.store.root / "rounds" / "00000" / "aggregate.fshe").exists()


def store_with_round_zero(path, cfg, keys) -> Store:
    """A state directory written by an earlier aggregator: two joined silos, round 0 open, an aggregate file on disk."""
    store = Store(path)
    for silo in ("bank-a", "bank-b"):
        store.add_silo(silo, 100, SIZE, LAYOUT)
    store.open_round(0)
    up = encrypt_update(keys, values({"pruning": cfg.privacy.pruning}, 0), weight=0.5, round=0, silo="bank-a", layout=LAYOUT)
    save_envelope(store.aggregate_path(0), up.data)
    return store


def test_a_non_contributor_gets_an_aggregate_only_if_two_others_contributed(public_keys, keys, tmp_path):
    """An old state directory holds a round closed with one upload: it is never served to the other silo."""
    cfg = config()
    store = store_with_round_zero(tmp_path / "s", cfg, keys)
    store.close_round(0, ["bank-a"], 0.5, 0.0, open_next=True)
    store.close()
    with RunningAggregator(cfg, public_keys, tmp_path / "s") as agg:
        r = httpx.get(f"{agg.url}/v1/rounds/0/aggregate")
        assert (r.status_code, r.json()["error"]) == (403, "too_few_contributors")


# --- 3. opening a round is atomic with its plan ----------------------------------------------------------


def test_a_plan_that_fails_while_a_round_opens_changes_nothing(public_keys, keys, tmp_path, monkeypatch, caplog):
    with RunningAggregator(config(), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        ups = {silo: envelope(keys, plan, silo, seed=i) for i, silo in enumerate(("bank-a", "bank-b"))}
        assert put(agg.url, 0, "bank-a", ups["bank-a"].data).status_code == 200

        def broken(*_a, **_k):
            raise OverflowError("(34, 'Numerical result out of range')")

        monkeypatch.setattr(rounds_module, "compute_plan", broken)
        with caplog.at_level(logging.ERROR, logger="fedshield.aggregator"):
            r = put(agg.url, 0, "bank-b", ups["bank-b"].data)
        assert r.status_code == 200  # the upload is accepted; closing the round waits
        assert "Numerical result out of range" in caplog.text
        assert [row["round"] for row in agg.coordinator.store.rounds()] == [0]
        assert agg.coordinator.store.rounds()[0]["closed_at"] is None and agg.coordinator.current == 0
        assert httpx.get(f"{agg.url}/v1/rounds/0/aggregate").status_code == 425
        monkeypatch.undo()
        tick_until(agg, lambda: agg.coordinator.current == 1)
        got = average(keys, agg.url, 0)
        assert np.abs(got - 0.5 * (ups["bank-a"].sent + ups["bank-b"].sent)).max() < 1e-12
    with RunningAggregator(config(), public_keys, tmp_path / "s") as again:
        assert httpx.get(f"{again.url}/v1/plan").json()["round"] == 1


# --- 5. durability and one writer ------------------------------------------------------------------------


def test_a_failed_ledger_write_leaves_sum_and_ledger_agreeing_and_the_retry_is_accepted(public_keys, keys, tmp_path, monkeypatch):
    with RunningAggregator(config(), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        ups = {silo: envelope(keys, plan, silo, seed=i) for i, silo in enumerate(("bank-a", "bank-b"))}
        before = snapshot(agg)
        real = agg.coordinator.store.add_upload

        def failing(*args):
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(agg.coordinator.store, "add_upload", failing)
        r = put(agg.url, 0, "bank-a", ups["bank-a"].data)
        assert (r.status_code, r.json()["error"]) == (503, "storage_failed")
        assert snapshot(agg) == before and agg.coordinator._sum.contributors == []
        monkeypatch.setattr(agg.coordinator.store, "add_upload", real)
        assert put(agg.url, 0, "bank-a", ups["bank-a"].data).json()["duplicate"] is False
        assert put(agg.url, 0, "bank-b", ups["bank-b"].data).status_code == 200
        got = average(keys, agg.url, 0)
        assert np.abs(got - 0.5 * (ups["bank-a"].sent + ups["bank-b"].sent)).max() < 1e-12


def test_torn_and_stale_files_are_quarantined_at_start(public_keys, keys, tmp_path):
    state = tmp_path / "s"
    with RunningAggregator(config(), public_keys, state) as agg:
        plan = join_all(agg.url)
        ups = {silo: envelope(keys, plan, silo, seed=i) for i, silo in enumerate(("bank-a", "bank-b"))}
        assert put(agg.url, 0, "bank-a", ups["bank-a"].data).status_code == 200
    torn = state / "rounds" / "00000" / "bank-a.fshe"
    torn.write_bytes(torn.read_bytes()[:-100])
    (state / "incoming" / "tmpabc.part").write_bytes(b"half an upload")
    (state / "rounds" / "00000" / "bank-b.fshe").write_bytes(b"a file without a row")
    with RunningAggregator(config(), public_keys, state) as agg:
        quarantined = sorted(p.name for p in (state / "quarantine").iterdir())
        assert len(quarantined) == 3 and not list((state / "incoming").iterdir())
        assert agg.coordinator.status().uploaded == []
        for silo in ("bank-a", "bank-b"):  # bank-a's retry is accepted anew
            r = put(agg.url, 0, silo, ups[silo].data)
            assert r.status_code == 200 and not r.json()["duplicate"]
        got = average(keys, agg.url, 0)
        assert np.abs(got - 0.5 * (ups["bank-a"].sent + ups["bank-b"].sent)).max() < 1e-12


def test_a_second_aggregator_on_the_same_state_refuses_to_start(public_keys, tmp_path):
    with RunningAggregator(config(), public_keys, tmp_path / "s") as agg:
        join_all(agg.url)
        with pytest.raises(StateLocked, match="in use by another aggregator"):
            Store(tmp_path / "s")
        assert httpx.get(f"{agg.url}/v1/plan").json()["state"] == "open"
    Store(tmp_path / "s").close()  # released with the first


@pytest.mark.parametrize("retention", [0, 1])
def test_uploads_of_closed_rounds_are_deleted_once_the_aggregate_is_durable(public_keys, keys, tmp_path, retention):
    with RunningAggregator(config(upload_retention_rounds=retention), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        for i, silo in enumerate(("bank-a", "bank-b")):
            assert put(agg.url, 0, silo, envelope(keys, plan, silo, seed=i).data).status_code == 200
        folder = agg.coordinator.store.root / "rounds" / "00000"
        expected = ["aggregate.fshe"] + (["bank-a.fshe", "bank-b.fshe"] if retention else [])
        assert sorted(p.name for p in folder.iterdir()) == expected
        assert httpx.get(f"{agg.url}/v1/rounds/0/aggregate").status_code == 200


# --- 6. slow and curious peers -------------------------------------------------------------------------------


def test_a_connection_that_never_finishes_its_headers_is_closed(public_keys, tmp_path):
    limits = FAST.model_copy(update={"header_timeout_s": 0.5})
    with RunningAggregator(config(limits=limits), public_keys, tmp_path / "s") as agg:
        with socket.create_connection(("127.0.0.1", agg.port), timeout=5) as sock:
            sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            start = time.monotonic()
            for _ in range(3):  # a trickle of bytes does not extend the deadline
                time.sleep(0.2)
                try:
                    sock.sendall(b"X-a: b\r\n")
                except OSError:
                    break
            sock.settimeout(5)
            assert sock.recv(100) == b""  # closed by the server
            assert time.monotonic() - start < 3
        assert httpx.get(f"{agg.url}/healthz").status_code == 200


def test_a_slow_body_holds_only_its_own_silos_slot_and_times_out(public_keys, keys, tmp_path):
    limits = FAST.model_copy(update={"body_idle_timeout_s": 1.0, "max_concurrent_uploads": 2})
    with RunningAggregator(config(limits=limits), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url)
        ups = {silo: envelope(keys, plan, silo, seed=i) for i, silo in enumerate(("bank-a", "bank-b"))}
        before = snapshot(agg)
        sock = socket.create_connection(("127.0.0.1", agg.port), timeout=10)
        head = (f"PUT /v1/rounds/0/uploads/bank-a?samples=100 HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(ups['bank-a'].data)}\r\n\r\n").encode()
        sock.sendall(head + ups["bank-a"].data[:100])
        time.sleep(0.2)
        second = put(agg.url, 0, "bank-a", ups["bank-a"].data)  # the same silo again: its slot is taken
        assert (second.status_code, second.json()["error"]) == (429, "upload_in_progress")
        reply = b""
        while b"\r\n\r\n" not in reply or b"}" not in reply.split(b"\r\n\r\n", 1)[1]:  # headers and body may arrive apart
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        text = reply.decode()
        assert " 408 " in text.splitlines()[0] and "body_timeout" in text
        sock.close()
        assert snapshot(agg) == before and not list((agg.coordinator.store.root / "incoming").iterdir())
        for silo in ("bank-a", "bank-b"):
            assert put(agg.url, 0, silo, ups[silo].data).status_code == 200
        assert httpx.get(f"{agg.url}/v1/rounds/0/aggregate").status_code == 200


def test_withdrawal_reasons_are_one_printable_line(public_keys, tmp_path, caplog):
    with RunningAggregator(config(("bank-a", "bank-b", "bank-c")), public_keys, tmp_path / "s") as agg:
        join_all(agg.url, ("bank-a", "bank-b", "bank-c"))
        forged = "spent\n2026-01-01 ERROR fedshield.aggregator round 3 closed\x1b[2J"
        with caplog.at_level(logging.WARNING, logger="fedshield.aggregator"):
            r = httpx.post(f"{agg.url}/v1/silos/bank-a/withdraw", json={"reason": forged})
        reason = r.json()["withdrawn"]["bank-a"]
        assert "\n" not in reason and "\x1b" not in reason and reason.startswith("spent 2026")
        assert all("\n" not in rec.getMessage() for rec in caplog.records)


def test_status_costs_the_same_at_4000_rounds(public_keys, tmp_path):
    """/v1/status is a summary and one page of rounds: its cost does not grow with the run's length."""
    cfg = config(rounds=5000)
    store = Store(tmp_path / "s")
    for silo in ("bank-a", "bank-b"):
        store.add_silo(silo, 100, SIZE, LAYOUT)
    meta = json.dumps({"samples": 100, "train_loss": 0.5, "val_loss": 0.5, "val_score": 0.7, "epsilon": None})
    statements = []
    for r in range(4000):
        statements.append(("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?)", (r, 1.0, 2.0, json.dumps(["bank-a", "bank-b"]), 1.0, 0.1)))
        for silo in ("bank-a", "bank-b"):
            statements.append(("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)", (r, silo, "0" * 64, 10, meta, 1.0 + r)))
    store._transaction(statements)
    store.close()
    with RunningAggregator(cfg, public_keys, tmp_path / "s") as agg, httpx.Client(base_url=agg.url) as http:
        http.get("/v1/status")
        start = time.perf_counter()
        for _ in range(10):
            body = http.get("/v1/status").json()
        elapsed_ms = (time.perf_counter() - start) * 100
        assert body["summary"]["rounds_closed"] == 4000 and len(body["closed"]) == 20
        assert body["summary"]["last_round"] == {"bank-a": 3999, "bank-b": 3999}
        page = http.get("/v1/status", params={"closed_from": 100, "limit": 5}).json()
        assert [c["round"] for c in page["closed"]] == [100, 101, 102, 103, 104]
        assert elapsed_ms < 100, elapsed_ms  # ~10 ms here; 1.4 s before


def test_concurrent_uploads_of_many_silos_are_each_counted_once(public_keys, keys, tmp_path):
    silos = tuple(f"bank-{i}" for i in range(6))
    with RunningAggregator(config(silos), public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url, silos)
        ups = {silo: envelope(keys, plan, silo, seed=i) for i, silo in enumerate(silos)}
        results: dict = {}
        threads = [threading.Thread(target=lambda s=s: results.update({s: put(agg.url, 0, s, ups[s].data).status_code}))
                   for s in silos for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for silo in silos:  # a refused twin (429 upload_in_progress) retries and is a duplicate
            assert put(agg.url, 0, silo, ups[silo].data).status_code == 200
        got = average(keys, agg.url, 0)
        expected = sum(ups[s].sent for s in silos) * plan["weights"]["bank-0"]
        assert np.abs(got - expected).max() < 1e-12
        assert sorted(agg.coordinator.status().closed[0].contributors) == sorted(silos)


def test_observers_see_a_rate_limited_summary_and_silos_their_own_reports(tmp_path, public_keys, keys):
    from fedshield.security.auth import Authenticator, observer_uri
    from fedshield.security.certs import issue_all, issue_observer, silo_files
    from fedshield.security.tls import ServerTLS

    certs = tmp_path / "certs"
    issue_all(certs, ["bank-a", "bank-b"])
    observer = issue_observer(certs, observer_uri("fedshield", "fs-operator"))
    tls = ServerTLS(certs / "aggregator.crt", certs / "aggregator.key", certs / "ca.crt")
    limits = FAST.model_copy(update={"observer_requests_per_s": 0.1, "observer_burst": 3})
    auth = Authenticator(mutual_tls=True, observers=frozenset({observer_uri("fedshield", "fs-operator")}))
    with RunningAggregator(config(limits=limits), public_keys, tmp_path / "s", tls=tls, auth=auth) as agg:
        files = {s: silo_files(certs, s) for s in ("bank-a", "bank-b")}
        http = {s: agg.client(files[s].cert, files[s].key, timeout=10) for s in files}
        for silo in files:
            http[silo].post("/v1/join", json={"silo": silo, "samples": 100, "vector_size": SIZE, "layout": LAYOUT}).json()
        plans = {silo: http[silo].get("/v1/plan").json() for silo in files}
        assert {s: p["weights"] for s, p in plans.items()} == {"bank-a": {"bank-a": 0.5}, "bank-b": {"bank-b": 0.5}}  # own only
        assert all(list(p["lr_scales"]) == [s] for s, p in plans.items())
        for i, silo in enumerate(files):
            r = http[silo].put(f"/v1/rounds/0/uploads/{silo}", content=envelope(keys, plans[silo], silo, seed=i).data,
                               params={"samples": 100, "val_loss": 0.3 + i, "val_score": 0.6 + i / 10, "epsilon": 1.0 + i,
                                       "epsilon_unit": "silo"})
            assert r.status_code == 200, r.text
        mine = http["bank-a"].get("/v1/status").json()
        assert list(mine["closed"][0]["metadata"]) == ["bank-a"] and mine["joined"] == {"bank-a": 100, "bank-b": 0}
        assert set(mine["plan"]["weights"]) == {"bank-a"}  # the status' plan shows a silo its own weight too
        with agg.client(timeout=10) as anonymous:  # no identity, no status (issue 17)
            assert {(r.status_code, r.json()["error"]) for r in (anonymous.get("/v1/status") for _ in range(4))} == {(401, "unauthenticated")}
        with agg.client(observer.cert, observer.key, timeout=10) as certified:
            seen = [certified.get("/v1/status") for _ in range(4)]
        assert [r.status_code for r in seen] == [200, 200, 200, 429]
        body = seen[0].json()
        assert body["closed"][0]["metadata"] == {} and set(body["joined"].values()) == {0}
        assert body["plan"]["weights"] == {} and body["summary"]["rounds_closed"] == 1
        assert body["summary"]["fairness_gap"] == pytest.approx(0.1) and body["summary"]["max_epsilon"] == 2.0
        assert body["summary"]["epsilon_unit"] == "silo"
        assert body["summary"]["epsilon_by_silo"] == {"bank-a": 1.0, "bank-b": 2.0}  # observers see each silo's spend
        for client in http.values():
            client.close()


def test_coordinator_restart_after_old_crash_between_close_and_open(public_keys, keys, tmp_path):
    """An old aggregator closed round 0 and died before opening round 1: the next one opens it, not round 0 again."""
    cfg = config()
    store = store_with_round_zero(tmp_path / "s", cfg, keys)
    store.close_round(0, ["bank-a", "bank-b"], 1.0, 0.0)
    coordinator = Coordinator(cfg, public_keys, store)
    assert coordinator.current == 1 and [r["round"] for r in store.rounds()] == [0, 1]
    store.close()


# --- 7. the noise budget is tied to the silo count -----------------------------------------------------------


def test_a_scale_too_small_for_max_silos_is_refused_before_the_aggregator_starts(public_keys, tmp_path):
    from fedshield.config import PrivacySpec
    from fedshield.crypto.params import PackingParams

    cfg = config().model_copy(update={"privacy": PrivacySpec(packing=PackingParams(max_silos=64))})
    with pytest.raises(ValueError, match="max_silos=64 summed uploads need scale_bits >= 19"):
        Coordinator(cfg, public_keys, Store(tmp_path / "s"))
    assert not (tmp_path / "s" / "rounds").exists()


def test_the_crd_ties_the_scale_to_the_number_of_silos():
    import yaml

    from fedshield.api.models import FederatedFinetuneSpec

    example = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "federatedfinetune.yaml").read_text())["spec"]
    template = example["silos"][0]

    def spec(n: int, scale: int) -> dict:
        return dict(example, silos=[dict(template, name=f"org-{i}", namespace=f"org-{i}") for i in range(n)],
                    privacy=dict(example.get("privacy", {}), encryption={"scaleBits": scale}))

    FederatedFinetuneSpec.model_validate(spec(57, 18))
    with pytest.raises(ValueError, match="scaleBits >= 19"):
        FederatedFinetuneSpec.model_validate(spec(58, 18))
    FederatedFinetuneSpec.model_validate(spec(512, 20))
    with pytest.raises(ValueError, match="scaleBits"):
        FederatedFinetuneSpec.model_validate(spec(2, 17))


@pytest.mark.parametrize("scale_bits, silos", [(18, 57), (20, 512)])
def test_sums_stay_exact_for_the_largest_federation_the_scale_allows(scale_bits, silos):
    """The largest allowed sum, at full value bound, decrypts to exactly the weighted sum of what was sent."""
    from fedshield.crypto import EncryptedSum, create_keys
    from fedshield.crypto.noise import max_summable
    from fedshield.crypto.params import CkksParams, PackingParams

    assert max_summable(scale_bits) >= silos
    keys = create_keys(CkksParams(scale_bits=scale_bits))
    packing = PackingParams(max_silos=silos)
    count = packing.values_per_ciphertext(keys.params)
    total = EncryptedSum(keys.public(), round=0, count=count, packing=packing)
    expected = np.zeros(count)
    rng = np.random.default_rng(scale_bits)
    for i in range(silos):
        v = rng.choice([-1.0, 1.0], count) * packing.value_bound * rng.uniform(0.9, 1.0, count)
        up = encrypt_update(keys, v, weight=1.0 / silos, round=0, silo=f"s-{i}", packing=packing)
        total.add(EnvelopeReader.from_bytes(up.data))
        expected += up.sent / silos
    got = decrypt_envelope(keys, EnvelopeReader.from_bytes(total.to_bytes()), round=0)
    assert np.abs(got - expected / total.weight_sum).max() < 1e-12


# --- 4. unlearning: packing from the run's spec, bound checked by every silo ---------------------------------


def _finished(agg, keys) -> dict:
    plan = join_all(agg.url)
    for i, silo in enumerate(("bank-a", "bank-b")):
        assert put(agg.url, 0, silo, envelope(keys, plan, silo, seed=i).data).status_code == 200
    assert httpx.get(f"{agg.url}/v1/plan").json()["state"] == "finished"
    return plan


def _put_unlearning(url: str, data: bytes, reason: str = "GDPR art. 17") -> httpx.Response:
    from fedshield.wire.unlearning import AUDIT_HEADER, UnlearningAudit

    audit = UnlearningAudit(requested_by="dpo", reason=reason, users_count=1, users_sha256="0" * 64, requested_at=0, seconds=0)
    return httpx.put(f"{url}/v1/unlearning/0/uploads/bank-a", content=data, timeout=30,
                     headers={"content-type": "application/octet-stream", AUDIT_HEADER: audit.model_dump_json()})


def test_an_unlearning_packed_as_its_uploader_likes_is_refused(public_keys, keys, tmp_path):
    from fedshield.crypto.params import PackingParams

    cfg = config(rounds=1)
    with RunningAggregator(cfg, public_keys, tmp_path / "s") as agg:
        _finished(agg, keys)
        huge = np.full(SIZE, 1e12)
        wide = PackingParams(value_bound=2.0**40, digits_per_slot=1, max_silos=1)
        bad = encrypt_update(keys, huge, weight=1.0, round=cfg.rounds, silo="bank-a", packing=wide, layout=LAYOUT).data
        before = snapshot(agg)
        r = _put_unlearning(agg.url, bad)
        assert (r.status_code, r.json()["error"]) == (400, "wrong_packing") and "packing" in r.json()["detail"]
        assert snapshot(agg) == before and httpx.get(f"{agg.url}/v1/unlearning").json() == []
        # packed as the spec says, the same change is clipped to the spec's bound by construction
        delta = np.random.default_rng(0).uniform(-0.1, 0.1, SIZE)
        good = encrypt_update(keys, delta, weight=1.0, round=cfg.rounds, silo="bank-a", packing=cfg.unlearning_packing(), layout=LAYOUT)
        r = _put_unlearning(agg.url, good.data, reason="line one\nFORGED line two")
        assert r.status_code == 200 and r.json()["pending"] is True, r.text  # by default another silo must approve it
        assert httpx.get(f"{agg.url}/v1/unlearning").json() == []
        approved = httpx.post(f"{agg.url}/v1/unlearning/0/approvals/bank-b", json={"sha256": r.json()["sha256"]})
        assert approved.status_code == 200 and approved.json()["published"], approved.text
        record = httpx.get(f"{agg.url}/v1/unlearning").json()[0]
        assert record["audit"]["reason"] == "line one FORGED line two"
        published = httpx.get(f"{agg.url}/v1/unlearning/0/aggregate").content
        reader = EnvelopeReader.from_bytes(published)
        applied = decrypt_envelope(keys, reader, round=cfg.rounds)
        from fedshield.silo_agent.bounds import check_unlearning

        check_unlearning(cfg, reader.header.packing, reader.header.weight, applied)  # what every silo does first
        assert np.abs(applied - good.sent).max() < 1e-12


def test_a_silo_refuses_an_unlearning_beyond_the_specs_bound():
    from fedshield.crypto.params import PackingParams
    from fedshield.silo_agent.bounds import UnlearningRefused, check_unlearning

    cfg = config()
    ok = cfg.unlearning_packing()
    check_unlearning(cfg, ok, 1.0, np.full(4, cfg.privacy.unlearning_bound))
    for packing, weight, delta, field in [
        (PackingParams(value_bound=2.0**40, digits_per_slot=1, max_silos=1), 1.0, np.zeros(4), "packing"),
        (ok, 0.5, np.zeros(4), "weight"),
        (ok, 1.0, np.full(4, 1e12), "bound"),
        (ok, 1.0, np.array([0.0, np.nan]), "bound"),
    ]:
        with pytest.raises(UnlearningRefused, match=field):
            check_unlearning(cfg, packing, weight, delta)


def test_an_unlearning_needs_the_approval_of_other_silos_before_it_is_published(public_keys, keys, tmp_path):
    from fedshield.config import PrivacySpec
    from fedshield.wire.client import AggregatorClient, AggregatorRefused

    silos = ("bank-a", "bank-b", "bank-c")
    cfg = config(silos, rounds=1).model_copy(update={"privacy": PrivacySpec(unlearning_approvals=2)})
    with RunningAggregator(cfg, public_keys, tmp_path / "s") as agg:
        plan = join_all(agg.url, silos)
        for i, silo in enumerate(silos):
            assert put(agg.url, 0, silo, envelope(keys, plan, silo, seed=i).data).status_code == 200
        delta = np.random.default_rng(1).uniform(-0.1, 0.1, SIZE)
        up = encrypt_update(keys, delta, weight=1.0, round=cfg.rounds, silo="bank-a", packing=cfg.unlearning_packing(), layout=LAYOUT)
        r = _put_unlearning(agg.url, up.data)
        assert r.status_code == 200 and r.json()["pending"] is True
        digest = r.json()["sha256"]
        assert httpx.get(f"{agg.url}/v1/unlearning").json() == []  # nothing any silo would apply yet
        assert httpx.get(f"{agg.url}/v1/unlearning/0/aggregate").status_code == 404
        client = AggregatorClient(agg.url)
        [waiting] = client.pending_unlearnings()
        assert (waiting.silo, waiting.sha256, waiting.needed, waiting.approvals) == ("bank-a", digest, 2, [])
        before = snapshot(agg)
        for approver, sha, code in [("bank-a", digest, "self_approval"), ("bank-b", "0" * 64, "sha256_mismatch")]:
            with pytest.raises(AggregatorRefused) as refused:
                client.approve_unlearning(0, approver, sha)
            assert refused.value.body.error == code
        assert snapshot(agg) == before
        assert client.approve_unlearning(0, "bank-b", digest).published is False
        assert client.approve_unlearning(0, "bank-b", digest).approvals == ["bank-b"]  # repeated: counted once
        assert httpx.get(f"{agg.url}/v1/unlearning").json() == []
        done = client.approve_unlearning(0, "bank-c", digest)
        assert done.published and done.approvals == ["bank-b", "bank-c"]
        [record] = client.unlearnings()
        assert record.sha256 == digest and client.pending_unlearnings() == []
        applied = decrypt_envelope(keys, EnvelopeReader.from_bytes(client.unlearning_aggregate(0)), round=cfg.rounds)
        assert np.abs(applied - up.sent).max() < 1e-12
        assert client.approve_unlearning(0, "bank-c", digest).published  # idempotent after publication
        client.close()


def test_the_aggregator_command_refuses_a_state_directory_in_use(public_keys, keys, tmp_path, capsys):
    import yaml

    from fedshield.cli import main
    from fedshield.crypto import write_key_pair
    from fedshield.crypto.keys import PUBLIC_FILE

    write_key_pair(keys, tmp_path / "keys")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config().model_dump(mode="json")))
    held = Store(tmp_path / "state")  # as a running aggregator holds it
    try:
        code = main(["aggregator", "--config", str(tmp_path / "config.yaml"), "--public-key", str(tmp_path / "keys" / PUBLIC_FILE),
                     "--state-dir", str(tmp_path / "state")])
    finally:
        held.close()
    assert code == 2 and "in use by another aggregator" in capsys.readouterr().err


def test_the_silo_client_retries_an_upload_refused_as_too_slow():
    from fedshield.wire.client import AggregatorClient

    answers = iter([httpx.Response(408, json={"error": "body_timeout", "detail": "slow"}), httpx.Response(200, json={"ok": 1})])
    client = AggregatorClient("http://127.0.0.1:1", backoff_s=0.0)
    assert client._call(lambda: next(answers), sleep=lambda _s: None).status_code == 200 and client.retried == 1
    client.close()
