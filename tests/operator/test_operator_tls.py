"""The operator reads an https aggregator's status as an observer: a mounted CA bundle and its own certificate, no Secret."""

from __future__ import annotations

from support.aggregator_harness import RunningAggregator

from fedshield.config import FederationConfig, SiloSpec
from fedshield.operator.aggregator_http import CA_ENV, CERT_ENV, KEY_ENV
from fedshield.operator.handlers import fetch_aggregator_status
from fedshield.security.auth import Authenticator, observer_uri
from fedshield.security.certs import issue_all, issue_observer
from fedshield.security.tls import ServerTLS


async def test_status_over_mutual_tls_as_a_certified_observer(tmp_path, public_keys, monkeypatch):
    issue_all(tmp_path / "certs", ["bank-a"])
    issue_all(tmp_path / "other", ["bank-a"])  # another CA
    certs = tmp_path / "certs"
    observer = issue_observer(certs, observer_uri("fedshield", "fs-operator"))
    tls = ServerTLS(certs / "aggregator.crt", certs / "aggregator.key", certs / "ca.crt")
    config = FederationConfig(silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")), rounds=1)
    auth = Authenticator(mutual_tls=True, observers=frozenset({observer_uri("fedshield", "fs-operator")}))
    with RunningAggregator(config, public_keys, tmp_path / "state", tls=tls, auth=auth) as agg:
        monkeypatch.setenv(CA_ENV, str(certs / "ca.crt"))
        assert await fetch_aggregator_status(agg.url) is None  # the CA bundle alone is no identity: 401 (issue 17)
        monkeypatch.setenv(CERT_ENV, str(observer.cert))
        monkeypatch.setenv(KEY_ENV, str(observer.key))
        status = await fetch_aggregator_status(agg.url)
        assert status is not None and status.plan.state == "waiting_for_silos"
        assert status.plan.mask_seed is None  # an observer sees progress, not the plan's secrets
        monkeypatch.setenv(CA_ENV, str(tmp_path / "other" / "ca.crt"))
        assert await fetch_aggregator_status(agg.url) is None  # a server the bundle does not vouch for is not believed
