"""Which files a silo reads for which workload (its own dataPath, else data.path/<silo>, else synthetic data),
per-example losses for DP-SGD, and the tiny tokenizer's public corpus."""

import pytest
import torch

from fedshield.config import DataSpec, FederationConfig, SiloSpec
from fedshield.learning.data import public_corpus, silo_data_path, silo_split, synthetic_split
from fedshield.learning.instruction import InstructionWorkload, example_losses, sft_loss
from fedshield.learning.model import build_tiny_base, load_base
from fedshield.learning.recommendation import RecommendationWorkload
from fedshield.learning.workloads import workload_for
from fedshield.workloads import triage
from fedshield.workloads.base import DataError
from fedshield.workloads.instruction import InstructionExample, write_jsonl
from fedshield.workloads.recommendation import build_examples, split_examples, synthetic_silos

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SILOS = (SiloSpec(name="a"), SiloSpec(name="b"), SiloSpec(name="c"))


def test_a_silos_own_folder_wins_over_the_shared_root(tmp_path):
    config = FederationConfig(workload="instruction", data=DataSpec(path=str(tmp_path / "root")),
                              silos=(SiloSpec(name="a", data_path=str(tmp_path / "own")), SiloSpec(name="b")))
    assert silo_data_path(config, "a") == tmp_path / "own"
    assert silo_data_path(config, "b") == tmp_path / "root" / "b"
    assert silo_data_path(FederationConfig(), "clinic-a") is None


def test_instruction_reads_the_silos_jsonl_and_refuses_bad_lines_with_file_and_line(tmp_path):
    write_jsonl([InstructionExample.of(f"note {i}", "cardiology") for i in range(9)], tmp_path / "a" / "train.jsonl")
    write_jsonl([InstructionExample.of("note x", "neurology")], tmp_path / "a" / "validation.jsonl")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train.jsonl").write_text('{"prompt": "fine", "response": "ok"}\n{"prompt": "no response"}\n')
    config = FederationConfig(workload="instruction", data=DataSpec(path=str(tmp_path)), silos=SILOS[:2])
    split = silo_split(config, "a")
    assert len(split.train) == 9 and [e.response for e in split.validation] == ["neurology"]
    with pytest.raises(DataError, match=r"b/train.jsonl:2: missing field 'response'"):
        silo_split(config, "b")


def test_too_few_examples_are_refused_before_training(tmp_path):
    write_jsonl([InstructionExample.of("only one", "x")], tmp_path / "a" / "train.jsonl")
    config = FederationConfig(workload="instruction", data=DataSpec(path=str(tmp_path)), silos=SILOS[:2])
    with pytest.raises(ValueError, match="silo 'a' has 1 training and 0 validation examples"):
        silo_split(config, "a")


def test_synthetic_instruction_data_gives_each_silo_one_triage_domain():
    config = FederationConfig(workload="instruction", silos=SILOS)
    splits = {s: synthetic_split(config, s) for s in ("a", "b", "c")}
    domains = list(triage.DOMAINS)
    for i, (silo, split) in enumerate(splits.items()):
        generated = triage.examples(domains[i], 160, seed=0)
        assert list(split.validation) + list(split.train) == list({e.prompt: e for e in generated}.values()), silo
        assert {e.prompt for e in split.train}.isdisjoint(e.prompt for e in split.validation)  # nothing validated is trained on
    assert all(e.response in triage.DEPARTMENTS for s in splits.values() for e in s.train)


def test_synthetic_recommendation_data_is_what_it_always_was():
    config = FederationConfig(silos=SILOS)
    split = silo_split(config, "b")
    old = split_examples(build_examples(synthetic_silos(config.silo_names, seed=0)["b"], history=5), 0.2, seed=0)
    assert (list(split.train), list(split.validation)) == old


def test_the_spec_chooses_the_workload_and_its_options():
    recommendation = workload_for(FederationConfig(data=DataSpec(holdout=2, history=3)))
    assert isinstance(recommendation, RecommendationWorkload) and recommendation.holdout == 2 and recommendation.history == 3
    instruction = workload_for(FederationConfig(workload="instruction", data=DataSpec(max_label_tokens=3, val_fraction=0.3)))
    assert isinstance(instruction, InstructionWorkload) and instruction.max_label_tokens == 3 and instruction.val_fraction == 0.3


def test_the_tiny_tokenizer_knows_the_triage_vocabulary(tmp_path):
    corpus = public_corpus(FederationConfig(workload="instruction"))
    _, tokenizer = load_base(build_tiny_base(tmp_path / "tiny", corpus))
    split = synthetic_split(FederationConfig(workload="instruction", silos=SILOS), "a")
    ids = [i for e in split.train for i in tokenizer(e.prompt + " " + e.response)["input_ids"]]
    assert tokenizer.unk_token_id not in ids


def test_per_example_losses_are_each_examples_own_response_loss(tmp_path):
    corpus = public_corpus(FederationConfig(workload="instruction"))
    model, tokenizer = load_base(build_tiny_base(tmp_path / "tiny", corpus))
    batch = synthetic_split(FederationConfig(workload="instruction", silos=SILOS), "b").train[:5]
    with torch.no_grad():
        each = example_losses(model, tokenizer, batch)
        alone = torch.stack([sft_loss(model, tokenizer, [e]) for e in batch])
    assert each.shape == (5,) and torch.allclose(each, alone, atol=1e-5)
