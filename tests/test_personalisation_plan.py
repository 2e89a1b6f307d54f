"""aggregation.personalise: each round's plan carries PPLR warm-up weights from closed rounds' losses of the global model,
and each silo is served its own weight only (the others' would reveal their losses), over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from fedshield.aggregator.rounds import Coordinator, compute_mix_weights
from fedshield.aggregator.store import Store
from fedshield.config import AggregationSpec
from fedshield.fairness import warmup_weights
from tests.support.aggregator_calls import LAYOUT, SAMPLES, SIZE, config, make_upload
from tests.support.aggregator_harness import RunningAggregator

SILOS = ("bank-a", "bank-b", "bank-c")
LOSSES = {"bank-a": 0.3, "bank-b": 0.5, "bank-c": 0.9}


def personal_config(**agg):
    base = config(SILOS)
    settings = {"min_silos": 2, "personalise": True, "warmup_temperature": 0.2, "warmup_beta": 5.0} | agg
    return base.model_copy(update={"rounds": 3, "aggregation": AggregationSpec(**settings)})


def upload_round(put, keys, round: int, plans: dict[str, dict]) -> None:
    """Every silo uploads round ``round`` (weighted as the plan it was served says) reporting its loss (LOSSES, + 0.1 per round)."""
    for i, silo in enumerate(SILOS):
        data, _ = make_upload(keys, silo, plans[silo], round=round, seed=10 * round + i)
        r = put(silo, round, data, LOSSES[silo] + round / 10)
        assert r.status_code == 200, r.text


def test_the_spec_bounds_the_warmup_settings():
    assert AggregationSpec().personalise is False
    assert (AggregationSpec().warmup_alpha, AggregationSpec().warmup_beta, AggregationSpec().warmup_temperature) == (0.7, 1.0, 0.05)
    for bad in ({"warmup_alpha": 0}, {"warmup_beta": -1}, {"warmup_temperature": 0}, {"warmup_temperature": float("nan")}):
        with pytest.raises(ValueError):
            AggregationSpec(**bad)
    assert AggregationSpec.model_validate({"personalise": True, "warmupTemperature": 0.1}).warmup_temperature == 0.1


def test_mix_weights_are_off_by_default_and_equal_losses_in_round_zero():
    assert compute_mix_weights(config(SILOS), LOSSES, 1) == {}
    cfg = personal_config()
    assert compute_mix_weights(cfg, {}, 0) == warmup_weights(dict.fromkeys(SILOS, 1.0), 0, temperature=0.2, beta=5.0)
    assert compute_mix_weights(cfg, LOSSES, 2) == warmup_weights(LOSSES, 2, temperature=0.2, beta=5.0)


def test_each_silo_is_served_only_its_own_weight_over_mutual_tls(tmp_path, public_keys, keys):
    from fedshield.security.auth import Authenticator
    from fedshield.security.certs import issue_all, silo_files
    from fedshield.security.tls import ServerTLS

    certs = tmp_path / "certs"
    issue_all(certs, list(SILOS))
    tls = ServerTLS(certs / "aggregator.crt", certs / "aggregator.key", certs / "ca.crt")
    with RunningAggregator(personal_config(), public_keys, tmp_path / "state", tls=tls, auth=Authenticator(mutual_tls=True)) as agg:
        files = {s: silo_files(certs, s) for s in SILOS}
        http = {s: agg.client(files[s].cert, files[s].key, timeout=10) for s in SILOS}
        try:
            for silo in SILOS:
                joined = http[silo].post("/v1/join", json={"silo": silo, "samples": SAMPLES[silo], "vector_size": SIZE,
                                                           "layout": LAYOUT}).json()
            assert joined["state"] == "open" and joined["mix_weight"] == pytest.approx(warmup_weights(
                dict.fromkeys(SILOS, 1.0), 0, temperature=0.2, beta=5.0)["bank-c"])  # round 0: equal losses

            def put(silo: str, round: int, data: bytes, loss: float) -> httpx.Response:
                return http[silo].put(f"/v1/rounds/{round}/uploads/{silo}", content=data,
                                      params={"samples": SAMPLES[silo], "val_loss": loss},
                                      headers={"content-type": "application/octet-stream"})

            upload_round(put, keys, 0, {s: http[s].get("/v1/plan").json() for s in SILOS})  # each its own weight
            expected = warmup_weights(LOSSES, 1, temperature=0.2, beta=5.0)
            served = {s: http[s].get("/v1/plan").json() for s in SILOS}
            assert {s: p["round"] for s, p in served.items()} == dict.fromkeys(SILOS, 1)
            assert {s: p["mix_weight"] for s, p in served.items()} == pytest.approx(expected)
            assert expected["bank-c"] < expected["bank-b"] < expected["bank-a"]  # the struggling silo mixes in least
            for silo in served:  # nothing else in any answer names another silo's weight
                others = [expected[o] for o in SILOS if o != silo]
                assert not any(str(w) in http[silo].get("/v1/plan").text for w in others)
                assert not any(str(w) in http[silo].get("/v1/status").text for w in others)
            own = http["bank-a"].get("/v1/plan", params={"silo": "bank-a"})
            assert own.status_code == 200 and own.json()["mix_weight"] == pytest.approx(expected["bank-a"])
            other = http["bank-a"].get("/v1/plan", params={"silo": "bank-b"})  # naming another silo is refused
            assert (other.status_code, other.json()["error"]) == (403, "identity_mismatch")
            assert http["bank-a"].get("/v1/status").json()["plan"]["mix_weight"] is None
            with agg.client(timeout=10) as anonymous:
                assert anonymous.get("/v1/plan", params={"silo": "bank-a"}).status_code == 401
        finally:
            for client in http.values():
                client.close()


def test_plain_http_serves_the_named_silo_and_a_restarted_aggregator_the_same_weights(tmp_path, public_keys, keys):
    cfg = personal_config(warmup_beta=2.0)
    with RunningAggregator(cfg, public_keys, tmp_path / "state") as agg:
        for silo in SILOS:
            r = httpx.post(f"{agg.url}/v1/join", json={"silo": silo, "samples": SAMPLES[silo], "vector_size": SIZE, "layout": LAYOUT})
            assert r.status_code == 200
        assert r.json()["mix_weight"] is not None  # the joining silo's own
        plan = httpx.get(f"{agg.url}/v1/plan").json()
        assert plan["mix_weight"] is None  # no identity, no silo named: no weight

        def put(silo: str, round: int, data: bytes, loss: float) -> httpx.Response:
            return httpx.put(f"{agg.url}/v1/rounds/{round}/uploads/{silo}", content=data,
                             params={"samples": SAMPLES[silo], "val_loss": loss}, headers={"content-type": "application/octet-stream"})

        upload_round(put, keys, 0, dict.fromkeys(SILOS, plan))
        served = {s: httpx.get(f"{agg.url}/v1/plan", params={"silo": s}).json()["mix_weight"] for s in SILOS}
        assert served == pytest.approx(warmup_weights(LOSSES, 1, beta=2.0, temperature=0.2))
        unknown = httpx.get(f"{agg.url}/v1/plan", params={"silo": "mallory"})
        assert (unknown.status_code, unknown.json()["error"]) == (403, "unknown_silo")
        plan1 = httpx.get(f"{agg.url}/v1/plan").json()
        upload_round(put, keys, 1, dict.fromkeys(SILOS, plan1))
        round2 = {s: httpx.get(f"{agg.url}/v1/plan", params={"silo": s}).json()["mix_weight"] for s in SILOS}
        assert round2 == pytest.approx(warmup_weights({s: v + 0.1 for s, v in LOSSES.items()}, 2, beta=2.0, temperature=0.2))
    restarted = Coordinator(cfg, public_keys, Store(tmp_path / "state"))  # recomputed from closed rounds only
    try:
        assert {s: restarted.plan(viewer=s).mix_weight for s in SILOS} == round2
    finally:
        restarted.store.close()
