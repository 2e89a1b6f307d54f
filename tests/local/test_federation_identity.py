"""Silo identities pinned to their federation, the operator as a read-only observer, and bounded reads of aggregators.

Real TLS handshakes on loopback against the real aggregator app."""

from __future__ import annotations

import http.server
import threading
import time

import httpx
import pytest
from support.aggregator_harness import RunningAggregator

from fedshield.config import FederationConfig, SiloSpec
from fedshield.operator.aggregator_http import CA_ENV, CERT_ENV, KEY_ENV, get_json
from fedshield.operator.handlers import fetch_aggregator_status
from fedshield.operator.unlearning import fetch_unlearning_records
from fedshield.security.auth import Authenticator, observer_uri, silo_uri
from fedshield.security.certs import issue_all, issue_observer, issue_silo
from fedshield.security.tls import ServerTLS

FEDERATION = "fedshield/triage-notes"
OBSERVER = observer_uri("fedshield", "fs-operator")
JOIN = {"silo": "bank-a", "samples": 100, "vector_size": 2000, "layout": "l"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """One shared issuer (as a cluster-wide cert-manager issuer would be) and a foreign CA."""
    root = tmp_path_factory.mktemp("pki")
    issue_all(root / "shared", [])
    issue_all(root / "foreign", [])
    return {"root": root}


def _silo_cert(pki, name: str, issuer: str, federation: str | None):
    directory = pki["root"] / issuer
    files = issue_silo(directory, name, federation=federation)
    # issue_silo writes silos/<name>.crt: move it aside so several variants of one name coexist
    stem = f"{name}-{federation.replace('/', '_') if federation else 'cn-only'}"
    cert, key = files.cert.with_name(f"{stem}.crt"), files.key.with_name(f"{stem}.key")
    files.cert.rename(cert)
    files.key.rename(key)
    return cert, key


def aggregator(pki, tmp_path, public_keys) -> RunningAggregator:
    shared = pki["root"] / "shared"
    tls = ServerTLS(shared / "aggregator.crt", shared / "aggregator.key", shared / "ca.crt")
    auth = Authenticator(mutual_tls=True, federation=FEDERATION, observers=frozenset({OBSERVER}))
    config = FederationConfig(silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")), rounds=1)
    return RunningAggregator(config, public_keys, tmp_path / "state", tls=tls, auth=auth)


def test_a_valid_common_name_is_not_enough_the_certificate_must_name_this_federation(pki, tmp_path, public_keys):
    cn_only = _silo_cert(pki, "bank-a", "shared", None)
    other_federation = _silo_cert(pki, "bank-a", "shared", "other-team/triage-notes")
    pinned = _silo_cert(pki, "bank-a", "shared", FEDERATION)
    with aggregator(pki, tmp_path, public_keys) as agg:
        for cert in (cn_only, other_federation):
            with agg.client(*cert) as client:
                response = client.post("/v1/join", json=JOIN)
                assert response.status_code == 401, response.text
                assert "not pinned to federation fedshield/triage-notes" in response.json()["detail"]
                assert silo_uri("fedshield", "triage-notes", "bank-a") in response.json()["detail"]
        assert agg.coordinator.store.silos() == {}
        with agg.client(*pinned) as client:
            assert client.post("/v1/join", json=JOIN).status_code == 200


def test_a_certificate_from_another_ca_with_a_valid_cn_and_uri_is_refused(pki, tmp_path, public_keys):
    foreign = _silo_cert(pki, "bank-a", "foreign", FEDERATION)
    with aggregator(pki, tmp_path, public_keys) as agg:
        with agg.client(*foreign) as client:
            with pytest.raises(httpx.TransportError):  # the handshake fails: TLS 1.3 reports it on first read
                client.post("/v1/join", json=JOIN)
        assert agg.coordinator.store.silos() == {}


async def test_the_operator_reads_status_and_the_ledger_as_an_observer_and_nothing_else(pki, tmp_path, public_keys, monkeypatch):
    shared = pki["root"] / "shared"
    observer = issue_observer(shared, OBSERVER)
    stranger = issue_observer(shared, observer_uri("elsewhere", "intruder"), name="intruder")
    with aggregator(pki, tmp_path, public_keys) as agg:
        monkeypatch.setenv(CA_ENV, str(shared / "ca.crt"))
        assert await fetch_unlearning_records(agg.url) is None  # without its certificate: 401, the unlearning would never complete
        monkeypatch.setenv(CERT_ENV, str(observer.cert))
        monkeypatch.setenv(KEY_ENV, str(observer.key))
        assert await fetch_unlearning_records(agg.url) == []  # the ledger (empty so far), so an unlearning under mutual TLS completes
        status = await fetch_aggregator_status(agg.url)
        assert status is not None and status.plan.mask_seed is None  # progress, not the plan's secrets
        with agg.client(observer.cert, observer.key) as client:
            assert client.post("/v1/join", json=JOIN).status_code == 401  # an observer is no silo
            assert client.get("/v1/rounds/0/aggregate").status_code == 401
            assert client.get("/v1/unlearning/0/aggregate").status_code == 401
        monkeypatch.setenv(CERT_ENV, str(stranger.cert))
        monkeypatch.setenv(KEY_ENV, str(stranger.key))
        assert await fetch_unlearning_records(agg.url) is None  # another URI from the same issuer is not the observer


class _Hostile(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if self.path == "/big":
            body = b"[" + b"0," * (3 * 1024 * 1024) + b"0]"
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/chunked-big":
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b" " * 100_000)
        else:  # a trickle: one byte every 0.2 s, forever
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass

    def log_message(self, *args):
        pass


async def test_reads_of_an_aggregator_are_size_capped_and_have_a_deadline():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert await get_json(f"{url}/big", limit=1024 * 1024) is None  # declared too large
        assert await get_json(f"{url}/chunked-big", limit=1024 * 1024) is None  # streamed past the cap
        start = time.monotonic()
        assert await get_json(f"{url}/trickle", deadline_s=1.0) is None
        assert time.monotonic() - start < 10  # the trickle would take 20 s: it does not hold the operator
    finally:
        server.shutdown()
