"""Unlearning needs approval (issue 17, item 3), over real HTTP and mutual TLS against a running aggregator.

By default (``privacy.unlearning_approvals: 1``) an uploaded unlearning is pending until another silo approves
exactly its bytes with ``fedshield approve``; the uploader's own approval, another digest and an unknown version
are refused with a nonzero exit; the operator's observer identity may read what is pending, not approve it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from support.aggregator_harness import RunningAggregator

from fedshield.cli import main
from fedshield.config import AggregationSpec, FederationConfig, LimitsSpec, PrivacySpec, SiloSpec
from fedshield.crypto import EnvelopeReader, decrypt_envelope, encrypt_update
from fedshield.operator.aggregator_http import CA_ENV, CERT_ENV, KEY_ENV, fetch_pending_unlearnings
from fedshield.security.auth import Authenticator, observer_uri
from fedshield.security.certs import issue_all, issue_observer, silo_files
from fedshield.security.tls import ServerTLS
from fedshield.updates import kept_count
from fedshield.wire.unlearning import AUDIT_HEADER, UnlearningAudit

SILOS = ("bank-a", "bank-b")
SIZE, LAYOUT = 3000, "layout-approval"
FAST = LimitsSpec(silo_requests_per_s=1e6, silo_request_burst=10**6, silo_uploads_per_minute=1e8, silo_upload_burst=10**6,
                  aggregate_wait_s=0.0)
OBSERVER = observer_uri("fedshield", "fs-operator")


def test_the_default_needs_one_approval_and_stays_valid_with_two_silos():
    assert PrivacySpec().unlearning_approvals == 1
    two = (SiloSpec(name="a"), SiloSpec(name="b"))
    assert FederationConfig(silos=two).privacy.unlearning_approvals == 1
    with pytest.raises(ValueError, match="unlearningApprovals"):
        FederationConfig(silos=two, privacy=PrivacySpec(unlearning_approvals=2))


@pytest.fixture
def federation(tmp_path, public_keys, keys):
    """A finished two-silo federation under mutual TLS, with bank-a's unlearning uploaded (pending)."""
    certs = tmp_path / "certs"
    issue_all(certs, list(SILOS))
    observer = issue_observer(certs, OBSERVER)
    tls = ServerTLS(certs / "aggregator.crt", certs / "aggregator.key", certs / "ca.crt")
    auth = Authenticator(mutual_tls=True, observers=frozenset({OBSERVER}))
    cfg = FederationConfig(silos=tuple(SiloSpec(name=n) for n in SILOS), rounds=1, limits=FAST,
                           aggregation=AggregationSpec(min_silos=2, round_deadline_seconds=600))
    with RunningAggregator(cfg, public_keys, tmp_path / "s", tls=tls, auth=auth) as agg:
        files = {s: silo_files(certs, s) for s in SILOS}
        http = {s: agg.client(files[s].cert, files[s].key, timeout=30) for s in SILOS}
        for silo in SILOS:
            http[silo].post("/v1/join", json={"silo": silo, "samples": 100, "vector_size": SIZE, "layout": LAYOUT})
        for i, silo in enumerate(SILOS):
            plan = http[silo].get("/v1/plan").json()  # each silo is served its own weight
            values = np.random.default_rng(i).uniform(-1e-2, 1e-2, kept_count(SIZE, plan["pruning"]))
            data = encrypt_update(keys, values, weight=plan["weights"][silo], round=0, silo=silo, layout=LAYOUT).data
            assert http[silo].put(f"/v1/rounds/0/uploads/{silo}", content=data,
                                  params={"samples": 100}).status_code == 200
        delta = np.random.default_rng(3).uniform(-0.1, 0.1, SIZE)
        up = encrypt_update(keys, delta, weight=1.0, round=cfg.rounds, silo="bank-a", packing=cfg.unlearning_packing(), layout=LAYOUT)
        audit = UnlearningAudit(requested_by="dpo@bank-a", users_count=2, users_sha256="0" * 64, requested_at=0, seconds=0)
        r = http["bank-a"].put("/v1/unlearning/0/uploads/bank-a", content=up.data,
                               headers={"content-type": "application/octet-stream", AUDIT_HEADER: audit.model_dump_json()})
        assert r.status_code == 200, r.text
        yield agg, http, files, observer, up, r.json()
        for client in http.values():
            client.close()


def approve(agg, files, silo: str, *args: str) -> list[str]:
    f = files[silo]
    return ["approve", "--aggregator", agg.url, "--ca", str(f.ca), "--cert", str(f.cert), "--key", str(f.key), "--silo", silo, *args]


def test_by_default_an_upload_is_pending_until_another_silo_approves_it_with_the_cli(federation, keys, capsys):
    agg, http, files, observer, up, receipt = federation
    digest = receipt["sha256"]
    assert receipt["pending"] is True
    for silo in SILOS:  # nothing any silo would apply yet
        assert http[silo].get("/v1/unlearning").json() == []
        assert http[silo].get("/v1/unlearning/0/aggregate").status_code == 404

    assert main(approve(agg, files, "bank-b", "--list")) == 0
    listed = capsys.readouterr().out
    assert "bank-a" in listed and digest in listed and "0/1" in listed and "dpo@bank-a" in listed

    refusals = [("bank-a", ["--version", "0", "--sha256", digest], "self_approval"),
                ("bank-b", ["--version", "0", "--sha256", "f" * 64], "sha256_mismatch"),
                ("bank-b", ["--version", "7", "--sha256", digest], "unknown_unlearning")]
    for silo, args, code in refusals:
        assert main(approve(agg, files, silo, *args)) == 1
        assert f"error: {code}" in capsys.readouterr().err
    assert http["bank-b"].get("/v1/unlearning").json() == []
    # a silo cannot approve in another's name (its certificate says who it is)
    r = http["bank-a"].post("/v1/unlearning/0/approvals/bank-b", json={"sha256": digest})
    assert (r.status_code, r.json()["error"]) == (403, "identity_mismatch")

    assert main(approve(agg, files, "bank-b", "--version", "0", "--sha256", digest)) == 0
    assert "published" in capsys.readouterr().out
    [record] = http["bank-b"].get("/v1/unlearning").json()
    assert (record["silo"], record["sha256"]) == ("bank-a", digest)
    published = http["bank-b"].get("/v1/unlearning/0/aggregate")
    applied = decrypt_envelope(keys, EnvelopeReader.from_bytes(published.content), round=1)
    assert np.abs(applied - up.sent).max() < 1e-12
    assert main(approve(agg, files, "bank-b", "--list")) == 0
    assert "no unlearning is waiting" in capsys.readouterr().out


def test_the_operators_observer_reads_what_is_pending_and_cannot_approve(federation, monkeypatch):
    agg, http, files, observer, up, receipt = federation
    for env, path in ((CA_ENV, files["bank-a"].ca), (CERT_ENV, observer.cert), (KEY_ENV, observer.key)):
        monkeypatch.setenv(env, str(path))
    [seen] = asyncio.run(fetch_pending_unlearnings(agg.url))  # the operator's own client and certificate
    assert (seen.silo, seen.sha256, seen.approvals) == ("bank-a", receipt["sha256"], [])
    with agg.client(observer.cert, observer.key, timeout=10) as operator:
        [pending] = operator.get("/v1/unlearning/pending").json()
        assert (pending["silo"], pending["sha256"], pending["approvals"], pending["needed"]) == ("bank-a", receipt["sha256"], [], 1)
        r = operator.post("/v1/unlearning/0/approvals/bank-b", json={"sha256": receipt["sha256"]})
        assert r.status_code in (401, 403), r.text  # an observer is no silo: it reads, never approves
    with agg.client(timeout=10) as anonymous:
        assert anonymous.get("/v1/unlearning/pending").status_code == 401
    assert http["bank-a"].get("/v1/unlearning").json() == []


def test_approve_needs_list_or_version_and_sha256(capsys):
    assert main(["approve", "--aggregator", "https://127.0.0.1:1", "--ca", "x", "--silo", "a", "--version", "0"]) == 2
    assert main(["approve", "--aggregator", "https://127.0.0.1:1", "--silo", "a", "--list"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_approve_command_names_the_version_and_digest():
    from fedshield.silo_agent.approval import approve_command

    line = approve_command("https://agg:8470", 3, "ab" * 32)
    assert line.startswith("fedshield approve --aggregator https://agg:8470") and "--version 3 --sha256 " + "ab" * 32 in line
