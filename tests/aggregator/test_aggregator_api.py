"""The aggregator's HTTP API over real loopback HTTP: the happy path and every kind of bad input."""

import httpx
import numpy as np
import pytest
from support.aggregator_calls import LAYOUT, SAMPLES, SILOS, SIZE, config, join_all, make_upload, put
from support.aggregator_harness import RunningAggregator

from fedshield.aggregator.rounds import Coordinator
from fedshield.aggregator.store import Store
from fedshield.config import AggregationSpec
from fedshield.crypto import EnvelopeReader, decrypt_envelope


@pytest.fixture()
def aggregator(public_keys, tmp_path):
    with RunningAggregator(config(), public_keys, tmp_path / "state") as agg:
        yield agg


def snapshot(agg) -> tuple:
    status = agg.coordinator.status().model_dump()
    status["plan"].pop("deadline_s")  # a countdown, not state
    running_sum = agg.coordinator._sum.to_bytes() if agg.coordinator._sum and agg.coordinator._sum.contributors else b""
    return status, running_sum, sorted(p.name for p in (agg.coordinator.store.root / "rounds").rglob("*"))


def test_round_trip_over_http(aggregator, keys):
    plan = join_all(aggregator.url)
    assert plan["state"] == "open" and plan["round"] == 0 and plan["weights"] == {"bank-a": 0.75, "bank-b": 0.25}
    sent = {}
    for i, silo in enumerate(SILOS):
        data, sent[silo] = make_upload(keys, silo, plan, seed=i)
        r = put(aggregator.url, 0, silo, data)
        assert r.status_code == 200 and r.json()["bytes"] == len(data) and not r.json()["duplicate"]
    agg = httpx.get(f"{aggregator.url}/v1/rounds/0/aggregate")
    assert agg.status_code == 200
    average = decrypt_envelope(keys, EnvelopeReader.from_bytes(agg.content), round=0)
    assert np.abs(average - (0.75 * sent["bank-a"] + 0.25 * sent["bank-b"])).max() < 1e-12
    assert httpx.get(f"{aggregator.url}/v1/plan").json()["round"] == 1
    spec = httpx.get(f"{aggregator.url}/openapi.json").json()
    assert "/v1/rounds/{round}/uploads/{silo}" in spec["paths"] and "RoundPlan" in spec["components"]["schemas"]
    assert httpx.get(f"{aggregator.url}/readyz").json()["status"] == "ready"


def test_aggregate_of_an_open_round_is_too_early(aggregator):
    join_all(aggregator.url)
    r = httpx.get(f"{aggregator.url}/v1/rounds/0/aggregate")
    assert r.status_code == 425 and r.json()["error"] == "round_not_closed"
    assert httpx.get(f"{aggregator.url}/v1/rounds/7/aggregate").json()["error"] == "unknown_round"


def test_repeated_upload_is_counted_once_and_a_different_one_conflicts(aggregator, keys):
    plan = join_all(aggregator.url)
    data, _ = make_upload(keys, "bank-a", plan)
    assert put(aggregator.url, 0, "bank-a", data).json()["duplicate"] is False
    before = snapshot(aggregator)
    again = put(aggregator.url, 0, "bank-a", data)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other, _ = make_upload(keys, "bank-a", plan, seed=5)
    conflict = put(aggregator.url, 0, "bank-a", other)
    assert conflict.status_code == 409 and conflict.json()["error"] == "conflicting_upload"
    assert snapshot(aggregator) == before
    assert aggregator.coordinator.status().uploaded == ["bank-a"]


BAD = {
    "malformed body": (lambda k, o, p: b"\x00not an envelope", {}, 400, "malformed_envelope"),
    "truncated": (lambda k, o, p: make_upload(k, "bank-a", p)[0][:-50], {}, 400, "malformed_envelope"),
    "bit flip": (lambda k, o, p: (lambda d: d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 1]) + d[len(d) // 2 + 1 :])(make_upload(k, "bank-a", p)[0]), {}, 400, "checksum_mismatch"),
    "key fingerprint mismatch": (lambda k, o, p: make_upload(o, "bank-a", p)[0], {}, 400, "key_fingerprint_mismatch"),
    "wrong round in envelope": (lambda k, o, p: make_upload(k, "bank-a", p, round=1)[0], {}, 400, "wrong_round"),
    "another silo's upload": (lambda k, o, p: make_upload(k, "bank-b", p)[0], {}, 400, "silo_mismatch"),
    "oversized payload": (lambda k, o, p: b"x" * (64 << 20), {}, 413, "payload_too_large"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_upload_is_a_4xx_naming_the_problem_and_changes_nothing(aggregator, keys, other_keys, case):
    plan = join_all(aggregator.url)
    build, headers, status, code = BAD[case]
    before = snapshot(aggregator)
    r = put(aggregator.url, 0, "bank-a", build(keys, other_keys, plan), **headers)
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert r.json()["detail"]
    assert snapshot(aggregator) == before
    assert not list((aggregator.coordinator.store.root / "incoming").iterdir())


def test_unknown_silo_wrong_round_and_malformed_requests(aggregator, keys):
    plan = join_all(aggregator.url)
    data, _ = make_upload(keys, "bank-a", plan)
    before = snapshot(aggregator)
    cases = [
        (put(aggregator.url, 0, "mallory", data), 403, "unknown_silo"),
        (put(aggregator.url, 1, "bank-a", data), 409, "wrong_round"),
        (httpx.post(f"{aggregator.url}/v1/join", content=b"{not json", headers={"content-type": "application/json"}), 422, "malformed_request"),
        (httpx.post(f"{aggregator.url}/v1/join", json={"silo": "mallory", "samples": 1, "vector_size": SIZE, "layout": LAYOUT}), 403, "unknown_silo"),
        (httpx.post(f"{aggregator.url}/v1/join", json={"silo": "bank-a", "samples": 1, "vector_size": SIZE + 1, "layout": LAYOUT}), 409, "layout_mismatch"),
        (httpx.put(f"{aggregator.url}/v1/rounds/0/uploads/bank-a", content=data, params={"samples": "many"}), 422, "malformed_request"),
        # epsilon's unit: one of the enum, with an epsilon, and the federation's own (privacy.dp.unit, here silo)
        *((httpx.put(f"{aggregator.url}/v1/rounds/0/uploads/bank-a", content=data, params={"samples": 300, **extra}), 422,
           "malformed_request") for extra in ({"epsilon": 1.0, "epsilon_unit": "per patient"}, {"epsilon_unit": "silo"},
                                              {"epsilon": 1.0}, {"epsilon": 1.0, "epsilon_unit": "record"})),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]) == (status, code), response.text
    assert snapshot(aggregator) == before


def _tick_until(agg, condition, seconds: float = 10) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        agg.coordinator.tick()
        time.sleep(0.1)


def test_late_upload_to_a_closed_round_is_refused(public_keys, keys, tmp_path):
    silos = ("bank-a", "bank-b", "bank-c")
    with RunningAggregator(config(silos, deadline=0.5), public_keys, tmp_path / "state") as agg:
        plan = join_all(agg.url, silos)
        for i, silo in enumerate(silos[:2]):
            assert put(agg.url, 0, silo, make_upload(keys, silo, plan, seed=i)[0]).status_code == 200
        _tick_until(agg, lambda: agg.coordinator.plan().round != 0)
        late, _ = make_upload(keys, "bank-c", plan)
        r = put(agg.url, 0, "bank-c", late)
        assert (r.status_code, r.json()["error"]) == (409, "round_closed")
        assert agg.coordinator.status().closed[0].contributors == ["bank-a", "bank-b"]
        # bank-c did not contribute; two others did, so it may have the aggregate
        assert httpx.get(f"{agg.url}/v1/rounds/0/aggregate").status_code == 200


def test_coordinator_refuses_a_secret_key(keys, tmp_path):
    with pytest.raises(ValueError, match="public context only"):
        Coordinator(config(), keys, Store(tmp_path))


def test_withdrawn_silo_is_not_waited_for_and_cannot_upload(public_keys, keys, tmp_path):
    silos = ("bank-a", "bank-b", "bank-c")
    with RunningAggregator(config(silos), public_keys, tmp_path / "state") as aggregator:
        plan = join_all(aggregator.url, silos)
        r = httpx.post(f"{aggregator.url}/v1/silos/bank-a/withdraw", json={"reason": "privacy budget spent"})
        assert r.status_code == 200 and r.json()["withdrawn"] == {"bank-a": "privacy budget spent"}
        for i, silo in enumerate(("bank-b", "bank-c")):
            assert put(aggregator.url, 0, silo, make_upload(keys, silo, plan, seed=i)[0]).status_code == 200
        assert httpx.get(f"{aggregator.url}/v1/rounds/0/aggregate").status_code == 200  # closed without bank-a
        data_a, _ = make_upload(keys, "bank-a", httpx.get(f"{aggregator.url}/v1/plan").json(), round=1)
        refused = put(aggregator.url, 1, "bank-a", data_a)
        assert (refused.status_code, refused.json()["error"]) == (409, "withdrawn")


def test_dynamic_balance_plan_weights_follow_validation_losses(public_keys, keys, tmp_path):
    cfg = config().model_copy(update={"aggregation": AggregationSpec(strategy="dynamic_balance", min_silos=2)})
    with RunningAggregator(cfg, public_keys, tmp_path / "state") as agg:
        plan = join_all(agg.url)
        assert plan["weights"] == {"bank-a": 0.75, "bank-b": 0.25}  # round 0: no losses yet, sample shares
        for silo, loss in (("bank-a", 0.2), ("bank-b", 0.8)):
            data, _ = make_upload(keys, silo, plan)
            r = httpx.put(f"{agg.url}/v1/rounds/0/uploads/{silo}", content=data,
                          params={"samples": SAMPLES[silo], "val_loss": loss}, headers={"content-type": "application/octet-stream"})
            assert r.status_code == 200
        plan = httpx.get(f"{agg.url}/v1/plan").json()
        assert plan["round"] == 1
        assert plan["weights"]["bank-b"] == pytest.approx(100 * 0.8 / (300 * 0.2 + 100 * 0.8))
        assert plan["lr_scales"]["bank-b"] > 1.0 > plan["lr_scales"]["bank-a"]
