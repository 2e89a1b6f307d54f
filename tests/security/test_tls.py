"""Transport security and limits over real TLS handshakes on loopback: identities, tokens, 429/503 and the client's retries."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from support.aggregator_harness import RunningAggregator

from fedshield.cli import main
from fedshield.config import AggregationSpec, FederationConfig, LimitsSpec, SiloSpec
from fedshield.crypto import encrypt_update
from fedshield.security.auth import Authenticator, TokenStore, create_tokens, read_token
from fedshield.security.certs import issue_all, issue_silo, silo_files
from fedshield.security.tls import ServerTLS
from fedshield.updates import kept_count
from fedshield.wire.client import AggregatorClient, ClientSecurity, retry_after_s
from fedshield.wire.messages import JoinRequest, UploadMetadata

SIZE, LAYOUT = 2000, "layout-tls"
SILOS = ("bank-a", "bank-b")


def config(**limits) -> FederationConfig:
    return FederationConfig(silos=tuple(SiloSpec(name=n) for n in SILOS), rounds=2,
                            aggregation=AggregationSpec(min_silos=2), limits=LimitsSpec(**limits))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """CA, server certificate and bank-a/bank-b/mallory client certificates, plus a foreign CA and an expired certificate."""
    root = tmp_path_factory.mktemp("pki")
    issue_all(root / "certs", [*SILOS, "mallory"])
    issue_all(root / "foreign", ["bank-a"])  # same silo name, another CA
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    issue_silo(root / "certs", "bank-a-expired", not_before=past, not_after=past + dt.timedelta(days=1))
    return root


def mtls(pki: Path) -> ServerTLS:
    c = pki / "certs"
    return ServerTLS(c / "aggregator.crt", c / "aggregator.key", c / "ca.crt")


def join_body(silo: str) -> dict:
    return {"silo": silo, "samples": 100, "vector_size": SIZE, "layout": LAYOUT}


def upload_bytes(keys, plan: dict, silo: str, seed: int = 0) -> bytes:
    values = np.random.default_rng(seed).uniform(-1e-2, 1e-2, kept_count(SIZE, plan["pruning"]))
    return encrypt_update(keys, values, weight=plan["weights"][silo], round=0, silo=silo, layout=LAYOUT).data


def test_certs_cli_issues_a_ca_a_server_certificate_and_silo_certificates(tmp_path, capsys):
    assert main(["certs", "--out", str(tmp_path), "--silo", "clinic-a,clinic-b", "--host", "10.0.0.7", "--host", "agg.example"]) == 0
    issued = json.loads(capsys.readouterr().out)
    server = x509.load_pem_x509_certificate(Path(issued["server_cert"]).read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert san.get_values_for_type(x509.DNSName) == ["agg.example"]
    for silo in ("clinic-a", "clinic-b"):
        cert = x509.load_pem_x509_certificate(Path(issued["silos"][silo]["cert"]).read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == silo
        assert Path(issued["silos"][silo]["key"]).stat().st_mode & 0o077 == 0  # private keys are not world-readable
    ca_before = (tmp_path / "ca.crt").read_bytes()
    assert main(["certs", "--out", str(tmp_path), "--silo", "clinic-c"]) == 0  # an existing CA is reused
    assert (tmp_path / "ca.crt").read_bytes() == ca_before


def test_aggregator_cli_refuses_identities_without_tls(tmp_path, public_keys):
    from fedshield.crypto import create_keys, write_key_pair

    _, public = write_key_pair(create_keys(), tmp_path / "keys")
    (tmp_path / "c.yaml").write_text("rounds: 1\n")
    assert main(["aggregator", "--config", str(tmp_path / "c.yaml"), "--public-key", str(public), "--state-dir",
                 str(tmp_path / "s"), "--client-ca", str(tmp_path / "ca.crt")]) == 2
    assert main(["aggregator", "--config", str(tmp_path / "c.yaml"), "--public-key", str(public), "--state-dir",
                 str(tmp_path / "s"), "--tls-cert", "x.crt", "--tls-key", "x.key"]) == 2  # TLS, but nobody identified


def test_mutual_tls_binds_every_call_to_the_certificate_name(pki, keys, public_keys, tmp_path):
    with RunningAggregator(config(), public_keys, tmp_path / "state", tls=mtls(pki), auth=Authenticator(mutual_tls=True)) as agg:
        a, b = (silo_files(pki / "certs", s) for s in SILOS)
        with agg.client(a.cert, a.key) as bank_a, agg.client(b.cert, b.key) as bank_b, agg.client() as anonymous:
            # before joining: neither the plan nor an aggregate
            assert (bank_a.get("/v1/plan").status_code, bank_a.get("/v1/plan").json()["error"]) == (403, "not_joined")
            assert bank_a.get("/v1/rounds/0/aggregate").json()["error"] == "not_joined"
            # joining as somebody else
            r = bank_a.post("/v1/join", json=join_body("bank-b"))
            assert (r.status_code, r.json()["error"]) == (403, "identity_mismatch")
            assert bank_a.post("/v1/join", json=join_body("bank-a")).status_code == 200
            plan = bank_b.post("/v1/join", json=join_body("bank-b")).json()
            assert plan["state"] == "open" and plan["mask_seed"] is not None
            assert plan["weights"] == {"bank-b": 0.5}  # a silo is served its own weight only
            plan_a = bank_a.get("/v1/plan").json()
            # no client certificate: health yes, API no, status neither (an observer's view is in test_aggregator_trust)
            assert anonymous.get("/healthz").status_code == 200
            r = anonymous.get("/v1/plan")
            assert (r.status_code, r.json()["error"]) == (401, "unauthenticated")
            r = anonymous.get("/v1/status")
            assert (r.status_code, r.json()["error"]) == (401, "unauthenticated")
            assert bank_a.get("/v1/status").json()["plan"]["mask_seed"] == plan["mask_seed"]
            # uploading or withdrawing as the other silo, even with that silo's own envelope
            data_b = upload_bytes(keys, plan, "bank-b")
            r = bank_a.put("/v1/rounds/0/uploads/bank-b", content=data_b, params={"samples": 100})
            assert (r.status_code, r.json()["error"]) == (403, "identity_mismatch")
            r = bank_a.post("/v1/silos/bank-b/withdraw", json={"reason": "not mine to say"})
            assert (r.status_code, r.json()["error"]) == (403, "identity_mismatch")
            assert agg.coordinator.status().uploaded == [] and agg.coordinator.store.withdrawn() == {}
            # a certificate of the right CA for a name outside the federation
            m = silo_files(pki / "certs", "mallory")
            with agg.client(m.cert, m.key) as mallory:
                assert mallory.get("/v1/plan").json()["error"] == "unknown_silo"
            # the real thing
            assert bank_b.put("/v1/rounds/0/uploads/bank-b", content=data_b, params={"samples": 100}).status_code == 200
            r = bank_a.put("/v1/rounds/0/uploads/bank-a", content=upload_bytes(keys, plan_a, "bank-a", 1), params={"samples": 100})
            assert r.status_code == 200 and r.json()["silo"] == "bank-a"
            assert bank_a.get("/v1/rounds/0/aggregate").status_code == 200
            assert anonymous.get("/v1/rounds/0/aggregate").status_code == 401


@pytest.mark.parametrize("which", ["foreign CA", "expired"])
def test_a_bad_client_certificate_fails_the_handshake(pki, public_keys, tmp_path, which):
    cert = {"foreign CA": silo_files(pki / "foreign", "bank-a"), "expired": silo_files(pki / "certs", "bank-a-expired")}[which]
    with RunningAggregator(config(), public_keys, tmp_path / "state", tls=mtls(pki), auth=Authenticator(mutual_tls=True)) as agg:
        with agg.client(cert.cert, cert.key) as client:
            with pytest.raises(httpx.TransportError):  # TLS 1.3 reports the refusal on first read
                client.post("/v1/join", json=join_body("bank-a"))
        with agg.client() as anonymous:
            assert anonymous.get("/healthz").status_code == 200
        assert agg.coordinator.store.silos() == {}


def test_the_silo_refuses_an_aggregator_certificate_from_another_ca(pki, public_keys, tmp_path):
    foreign = silo_files(pki / "foreign", "bank-a")
    with RunningAggregator(config(), public_keys, tmp_path / "state", tls=mtls(pki), auth=Authenticator(mutual_tls=True)) as agg:
        client = AggregatorClient(agg.url, retries=0, security=ClientSecurity(ca=foreign.ca, cert=foreign.cert, key=foreign.key))
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.plan()


def test_bearer_tokens_identify_silos_and_are_stored_hashed(pki, keys, public_keys, tmp_path):
    hashes = create_tokens(tmp_path / "tokens", SILOS)
    token_a = read_token(tmp_path / "tokens" / "silos" / "bank-a.token")
    assert token_a not in hashes.read_text() and all(v.startswith("sha256:") for v in json.loads(hashes.read_text()).values())
    c = pki / "certs"
    tls = ServerTLS(c / "aggregator.crt", c / "aggregator.key")  # server-side TLS only
    with RunningAggregator(config(), public_keys, tmp_path / "state", tls=tls, auth=Authenticator(tokens=TokenStore.load(hashes))) as agg:
        ca = c / "ca.crt"
        a = AggregatorClient(agg.url, retries=0, security=ClientSecurity(ca=ca, token=token_a))
        assert a.join(JoinRequest(silo="bank-a", samples=100, vector_size=SIZE, layout=LAYOUT)).state == "waiting_for_silos"
        with agg.client(headers={"authorization": f"Bearer {token_a}"}) as as_a:
            r = as_a.post("/v1/join", json=join_body("bank-b"))
            assert (r.status_code, r.json()["error"]) == (403, "identity_mismatch")
        for header in (f"Bearer {token_a}x", "Bearer", f"Basic {token_a}", "Bearer sha256:" + "0" * 64):
            with agg.client(headers={"authorization": header}) as wrong:
                r = wrong.get("/v1/plan")
                assert (r.status_code, r.json()["error"]) == (401, "unauthenticated"), header
        assert set(agg.coordinator.store.silos()) == {"bank-a"}


def test_per_silo_rate_limit_is_a_429_with_retry_after(pki, public_keys, tmp_path):
    limits = {"silo_requests_per_s": 0.5, "silo_request_burst": 3}
    with RunningAggregator(config(**limits), public_keys, tmp_path / "state", tls=mtls(pki), auth=Authenticator(mutual_tls=True)) as agg:
        a, b = (silo_files(pki / "certs", s) for s in SILOS)
        with agg.client(a.cert, a.key) as bank_a, agg.client(b.cert, b.key) as bank_b:
            codes = [bank_a.get("/v1/status").status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            refused = bank_a.get("/v1/status")
            assert refused.json()["error"] == "rate_limited" and int(refused.headers["retry-after"]) >= 1
            assert bank_b.get("/v1/status").status_code == 200  # per silo: bank-b is not held back


def test_concurrent_uploads_beyond_the_limit_get_503_and_the_client_waits_them_out(pki, keys, public_keys, tmp_path):
    cfg = config(max_concurrent_uploads=1, retry_after_s=1.0)
    with RunningAggregator(cfg, public_keys, tmp_path / "state", tls=mtls(pki), auth=Authenticator(mutual_tls=True)) as agg:
        a, b = (silo_files(pki / "certs", s) for s in SILOS)
        with agg.client(a.cert, a.key) as bank_a, agg.client(b.cert, b.key) as bank_b:
            bank_a.post("/v1/join", json=join_body("bank-a"))
            plan = bank_b.post("/v1/join", json=join_body("bank-b")).json()
            plan_a = bank_a.get("/v1/plan").json()
        data_a, data_b = upload_bytes(keys, plan_a, "bank-a"), upload_bytes(keys, plan, "bank-b")
        release = threading.Event()

        def slow_body():  # holds the only upload slot until released
            yield data_a[:1000]
            release.wait(20)
            yield data_a[1000:]

        results: dict = {}
        slow = threading.Thread(target=lambda: results.update(a=agg.client(a.cert, a.key, timeout=30).put(
            "/v1/rounds/0/uploads/bank-a", content=slow_body(), params={"samples": 100},
            headers={"content-length": str(len(data_a))})))
        slow.start()
        time.sleep(0.5)
        with agg.client(b.cert, b.key) as bank_b:
            refused = bank_b.put("/v1/rounds/0/uploads/bank-b", content=data_b, params={"samples": 100})
        assert (refused.status_code, refused.json()["error"]) == (503, "too_many_uploads")
        assert refused.headers["retry-after"] == "1"
        client = AggregatorClient(agg.url, security=ClientSecurity(ca=b.ca, cert=b.cert, key=b.key))
        threading.Timer(1.5, release.set).start()
        start = time.monotonic()
        receipt = client.upload(0, "bank-b", data_b, UploadMetadata(samples=100))
        assert receipt.duplicate is False and client.retried >= 1 and time.monotonic() - start >= 1.0
        slow.join(30)
        assert results["a"].status_code == 200
        assert sorted(agg.coordinator.status().closed[0].contributors) == ["bank-a", "bank-b"]


def test_a_retried_upload_is_a_duplicate_and_the_client_honours_429(pki, keys, public_keys, tmp_path):
    cfg = config(silo_uploads_per_minute=60, silo_upload_burst=1)
    with RunningAggregator(cfg, public_keys, tmp_path / "state", tls=mtls(pki), auth=Authenticator(mutual_tls=True)) as agg:
        a, b = (silo_files(pki / "certs", s) for s in SILOS)
        clients = {s: AggregatorClient(agg.url, security=ClientSecurity(ca=f.ca, cert=f.cert, key=f.key)) for s, f in zip(SILOS, (a, b), strict=False)}
        for s, c in clients.items():
            c.join(JoinRequest(silo=s, samples=100, vector_size=SIZE, layout=LAYOUT))
        data = upload_bytes(keys, clients["bank-a"].plan().model_dump(), "bank-a")
        first = clients["bank-a"].upload(0, "bank-a", data, UploadMetadata(samples=100))
        start = time.monotonic()
        again = clients["bank-a"].upload(0, "bank-a", data, UploadMetadata(samples=100))  # 429 first, then a duplicate
        assert not first.duplicate and again.duplicate and again.sha256 == first.sha256
        assert clients["bank-a"].retried >= 1 and time.monotonic() - start >= 0.9
        assert agg.coordinator.status().uploaded == ["bank-a"]


def test_retry_after_is_read_as_seconds_or_an_http_date():
    assert retry_after_s(httpx.Response(429, headers={"retry-after": "3"})) == 3.0
    when = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= retry_after_s(httpx.Response(503, headers={"retry-after": when})) <= 31
    assert retry_after_s(httpx.Response(503, headers={"retry-after": "soon"})) is None
    assert retry_after_s(httpx.Response(503)) is None


@pytest.mark.slow
def test_a_federation_of_processes_runs_over_tls_with_bearer_tokens(tmp_path):
    from fedshield.config import TrainingSpec
    from fedshield.local.demo import run_local

    cfg = FederationConfig(rounds=1, silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")),
                           training=TrainingSpec(local_steps=2, batch_size=4))
    report = run_local(cfg, tmp_path, security="token")
    assert [sorted(r["silos"]) for r in report["rounds"]] == [["bank-a", "bank-b"]]
    assert all(s["upload_bytes"] > 0 for s in report["rounds"][0]["silos"].values())
    stored = (tmp_path / "tokens" / "tokens.json").read_text()
    assert all(read_token(tmp_path / "tokens" / "silos" / f"{s}.token") not in stored for s in ("bank-a", "bank-b"))
