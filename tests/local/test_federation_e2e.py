"""A whole federation as real processes on loopback: aggregator + silos, tiny model, DeepSpeed on CPU."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from support.federation_checks import KEEP_UPLOADS, expected_global, saved_shared_vector

from fedshield.cli import main
from fedshield.config import FederationConfig, PrivacySpec, SiloSpec, TrainingSpec
from fedshield.crypto import load_keys
from fedshield.learning.data import silo_examples
from fedshield.learning.model import last_token_logits, load_base, with_lora
from fedshield.local.demo import run_local
from fedshield.silo_agent.checkpoint import load_state
from fedshield.updates import lora_parameters

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    out = tmp_path_factory.mktemp("federation")
    config = FederationConfig(
        rounds=2, silos=(SiloSpec(name="bank-a"), SiloSpec(name="bank-b")),
        training=TrainingSpec(local_steps=6, batch_size=8),
        privacy=PrivacySpec(pruning=0.5, private_modules=("*.layers.0.*",)),
        aggregation=KEEP_UPLOADS,  # the test recomputes the global adapter from every upload
    )
    report = run_local(config, out)
    return config, out, report


def _base(config, out):
    model, tokenizer = load_base(out / "model-cache" / "tiny-llama-recommendation")
    return model, tokenizer


def test_shared_adapter_equals_the_independently_computed_weighted_average(federation):
    config, out, _ = federation
    layout, expected = expected_global(config, out)
    for silo in config.silo_names:
        assert np.abs(saved_shared_vector(layout, out, silo) - expected).max() < 1e-5


def test_private_modules_stay_local_and_differ_between_silos(federation):
    config, out, _ = federation
    private = {}
    for silo in config.silo_names:
        state = load_state(out / "silos" / silo)
        private[silo] = {n: t for n, t in state.lora.items() if ".layers.0." in n}
    a, b = (private[s] for s in config.silo_names)
    assert a and any(not torch.equal(a[n], b[n]) for n in a)


def test_bytes_on_the_wire_equal_the_ciphertext_sizes(federation):
    config, out, report = federation
    for r in report["rounds"]:
        round_dir = out / "state" / "rounds" / f"{r['round']:05d}"
        for silo, row in r["silos"].items():
            assert row["upload_bytes"] == (round_dir / f"{silo}.fshe").stat().st_size
            assert row["download_bytes"] == (round_dir / "aggregate.fshe").stat().st_size


def test_saved_adapter_reproduces_the_silos_logits(federation):
    config, out, _ = federation
    silo = config.silo_names[0]
    _, val = silo_examples(config, silo)
    prompts = [e.prompt for e in val[:16]]
    base, tokenizer = _base(config, out)
    model = with_lora(base, config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.target_modules, seed=config.seed)
    with torch.no_grad():
        for name, tensor in load_state(out / "silos" / silo).lora.items():
            lora_parameters(model)[name].copy_(tensor)
    model.eval()
    base2, _ = _base(config, out)
    loaded = PeftModel.from_pretrained(base2, out / "silos" / silo / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(last_token_logits(model, tokenizer, prompts), last_token_logits(loaded, tokenizer, prompts), atol=1e-5)


def test_report_and_plot_are_written(federation):
    config, out, report = federation
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["summary"]["rounds"] == config.rounds
    row = on_disk["rounds"][0]["silos"][config.silo_names[0]]
    assert {"loss", "score", "metric", "metrics", "start_score", "upload_bytes", "download_bytes", "encrypt_s", "round_s"} <= set(row)
    assert row["metric"] == "auc" and row["score"] == row["metrics"]["auc"] and row["loss"] == row["metrics"]["log_loss"]
    assert on_disk["summary"]["workload"] == "recommendation" and 0 <= on_disk["summary"]["start_mean_score"] <= 1
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aggregator_is_only_ever_given_the_public_context(federation, capsys):
    config, out, _ = federation
    assert not load_keys(out / "keys" / "public.ckks").has_secret_key
    code = main(["aggregator", "--config", str(out / "config.yaml"), "--public-key", str(out / "keys" / "secret.ckks"),
                 "--state-dir", str(out / "other-state")])
    assert code == 2 and "public context" in capsys.readouterr().err
