"""The operator reads an https aggregator's status with only a mounted CA bundle: no client certificate, no Secret."""

from __future__ import annotations

from fedshield.config import FederationConfig, SiloSpec
from fedshield.operator.aggregator_http import CA_ENV
from fedshield.operator.handlers import fetch_aggregator_status
from fedshield.security.auth import Authenticator
from fedshield.security.certs import issue_all
from fedshield.security.tls import ServerTLS

from aggregator_harness import RunningAggregator


async def test_status_over_mutual_tls_with_the_ca_bundle_only(tmp_path, public_keys, monkeypatch):
    issue_all(tmp_path / "certs", ["bank-a"])
    issue_all(tmp_path / "other", ["bank-a"])  # another CA
    certs = tmp_path / "certs"
    tls = ServerTLS(certs / "aggregator.crt", certs / "aggregator.key", certs / "ca.crt")
    config = FederationConfig(silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")), rounds=1)
    with RunningAggregator(config, public_keys, tmp_path / "state", tls=tls, auth=Authenticator(mutual_tls=True)) as agg:
        monkeypatch.setenv(CA_ENV, str(certs / "ca.crt"))
        status = await fetch_aggregator_status(agg.url)
        assert status is not None and status.plan.state == "waiting_for_silos"
        assert status.plan.mask_seed is None  # an observer sees progress, not the plan's secrets
        monkeypatch.setenv(CA_ENV, str(tmp_path / "other" / "ca.crt"))
        assert await fetch_aggregator_status(agg.url) is None  # a server the bundle does not vouch for is not believed
