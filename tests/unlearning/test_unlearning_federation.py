"""Federated unlearning end to end: after a real federation, one silo forgets 20% of its users
(E2URec), the aggregator publishes the replacement without a secret key, every silo applies it,
and the forgetting silo keeps nothing computed from the forgotten records."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest
from support.federation_checks import KEEP_UPLOADS, expected_global, saved_shared_vector, wait_for

from fedshield.config import FederationConfig, LoraSpec, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.crypto import EnvelopeReader, decrypt_envelope, load_keys
from fedshield.crypto.errors import CryptoError
from fedshield.crypto.keys import PUBLIC_FILE, SECRET_FILE
from fedshield.local.demo import Federation, with_local_ports
from fedshield.silo_agent.agent import SiloAgent
from fedshield.silo_agent.checkpoint import forgotten_users, load_state
from fedshield.silo_agent.forget import ForgetRequest, forget_and_upload, wait_published
from fedshield.unlearning import UnlearningSpec
from fedshield.wire.client import AggregatorClient, AggregatorRefused

pytestmark = pytest.mark.slow
SPEC = UnlearningSpec(steps=6, augment_steps=4, batch_size=8)


def test_one_silo_forgets_and_every_silo_gets_the_new_adapter(tmp_path):
    config = with_local_ports(FederationConfig(
        rounds=2, silos=(SiloSpec(name="shop-a"), SiloSpec(name="shop-b")),
        lora=LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj", "lm_head"]),
        training=TrainingSpec(local_steps=4, batch_size=8), privacy=PrivacySpec(pruning=0.5, private_modules=["*.layers.0.*"]),
        aggregation=KEEP_UPLOADS,
    ))
    federation = Federation(config, tmp_path, security="none")
    try:
        federation.start()
        wait_for(federation.silos_done, 300, federation)
        agent = SiloAgent(config, "shop-a", load_keys(tmp_path / "keys" / SECRET_FILE), tmp_path / "silos" / "shop-a", federation.url,
                          model_cache=tmp_path / "model-cache")
        with pytest.raises(AggregatorRefused) as refused:  # versions are consecutive: the first is 0
            agent.client.upload_unlearning(1, "shop-a", b"FSHE", _audit())
        assert refused.value.body.error == "wrong_version"
        assert agent.client.unlearnings() == []
        users_before = {e.user for e in agent.train}
        uploaded = forget_and_upload(agent, ForgetRequest(fraction=0.2, requested_by="dpo@shop-a", reason="GDPR art. 17"), SPEC)
        assert uploaded.receipt.pending and agent.client.unlearnings() == []  # by default another silo must approve it
        with pytest.raises(AggregatorRefused) as refused:
            agent.client.approve_unlearning(uploaded.version, "shop-a", uploaded.receipt.sha256)
        assert refused.value.body.error == "self_approval"
        other = AggregatorClient(federation.url)
        assert other.approve_unlearning(uploaded.version, "shop-b", uploaded.receipt.sha256).published
        other.close()
        record = wait_published(agent, uploaded.version, timeout_s=30)

        # the audit record: who, how many users and their hash, adapter versions, before/after metrics
        gone = forgotten_users(tmp_path / "silos" / "shop-a")
        assert record.audit.users_count == len(gone) == max(1, round(0.2 * len(users_before)))
        assert record.audit.users_sha256 == hashlib.sha256("\n".join(sorted(gone)).encode()).hexdigest()
        assert (record.adapter_version_before, record.adapter_version_after) == (config.rounds, config.rounds + 1)
        assert record.audit.requested_by == "dpo@shop-a" and record.audit.forget_auc_after is not None
        metrics_text = httpx.get(f"http://127.0.0.1:{config.aggregator_metrics_port}/metrics").text
        assert 'fedshield_unlearning_completed{silo="shop-a"} 1.0' in metrics_text
        assert f"fedshield_adapter_version {config.rounds + 1}.0" in metrics_text

        # the same upload again is a duplicate; another version is refused
        published = tmp_path / "state" / "unlearning" / "00000"
        upload = (published / "shop-a.fshe").read_bytes()
        assert agent.client.upload_unlearning(0, "shop-a", upload, record.audit).duplicate
        with pytest.raises(AggregatorRefused) as refused:
            agent.client.upload_unlearning(1, "shop-a", upload, record.audit)
        assert refused.value.body.error == "wrong_round"

        federation.restart("shop-b")  # the other silo's next start applies the published replacement
        wait_for(federation.silos_done, 300, federation)
    finally:
        federation.stop()

    # the aggregator only ever had the public context: it cannot decrypt what it published
    public = load_keys(tmp_path / "keys" / PUBLIC_FILE)
    assert not public.has_secret_key
    with pytest.raises((CryptoError, ValueError)):
        decrypt_envelope(public, EnvelopeReader.open(published / "aggregate.fshe"))

    # both silos hold the same global adapter, and it is the forgetting silo's replacement
    layout, _ = expected_global(config, tmp_path)
    a, b = (saved_shared_vector(layout, tmp_path, s) for s in config.silo_names)
    assert np.abs(a - b).max() < 1e-6
    assert load_state(tmp_path / "silos" / "shop-b").unlearnings_applied == 1

    # nothing computed from the forgotten records stays at the forgetting silo
    state = load_state(tmp_path / "silos" / "shop-a")
    assert state.residual is None and state.score is None and state.pending is None
    assert state.optimizer is None, "optimiser moments from before the unlearning"  # the next training starts fresh ones
    fresh = SiloAgent(config, "shop-a", load_keys(tmp_path / "keys" / SECRET_FILE), tmp_path / "silos" / "shop-a",
                      "http://127.0.0.1:1", model_cache=tmp_path / "model-cache")
    assert not {e.user for e in fresh.train + fresh.val} & gone
    assert not list((tmp_path / "silos" / "shop-a").glob("*.tmp"))


def _audit():
    from fedshield.wire.unlearning import UnlearningAudit

    return UnlearningAudit(requested_by="x", users_count=1, users_sha256="0" * 64, requested_at=0, seconds=0)
