"""The instruction workload: the three JSONL layouts, bad data refused with file and line, the response-only
label mask (tiny word-level tokenizer and SmolLM2's chat template), evaluation, and the workload registry."""

import json
import math

import pytest
import torch

from fedshield.learning.instruction import (
    IGNORE,
    InstructionWorkload,
    check_examples,
    collate,
    encode,
    evaluate_instruction,
    greedy_replies,
    label_tokens,
    sft_loss,
)
from fedshield.learning.model import build_tiny_base, load_base
from fedshield.learning.recommendation import RecommendationWorkload
from fedshield.learning.workloads import WORKLOADS, get_workload
from fedshield.workloads.base import DataError, Evaluation
from fedshield.workloads.instruction import InstructionExample, Turn, load_split, normalise, read_jsonl, write_jsonl
from fedshield.workloads.recommendation import Interaction, write_movielens
from fedshield.workloads.triage import DEPARTMENTS, DOMAINS, write_silos
from fedshield.workloads.triage import examples as triage_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = [("what colour is the sky", "blue"), ("what colour is grass", "green"), ("what colour is snow", "white"),
        ("what colour is coal", "black")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    corpus = [f"{p} {r}" for p, r in TASK] + ["what is the answer to this question"]
    return load_base(build_tiny_base(tmp_path_factory.mktemp("tiny") / "m", corpus))


def _write(path, *lines) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_the_three_layouts_read_as_examples(tmp_path):
    path = _write(tmp_path / "d.jsonl",
                  json.dumps({"prompt": "p1", "response": "r1", "system": "be brief"}),
                  "",
                  json.dumps({"instruction": "translate", "input": "hola", "output": "hello"}),
                  json.dumps({"instruction": "say hi", "output": "hi"}),
                  json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                           {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}))
    a, b, c, d = read_jsonl(path)
    assert (a.context, a.response, a.system, a.line, a.source) == ((Turn("system", "be brief"), Turn("user", "p1")), "r1", "be brief", 1, path)
    assert (b.prompt, b.response, b.line) == ("translate\n\nhola", "hello", 3)
    assert (c.prompt, c.response) == ("say hi", "hi")
    assert d.context == (Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")) and d.response == "d" and d.line == 5
    again = read_jsonl(write_jsonl([a, b, d], tmp_path / "again.jsonl"))
    assert [(e.context, e.response) for e in again] == [(e.context, e.response) for e in (a, b, d)]


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n', r"d\.jsonl:2: missing field 'response'"),
    (b'{"instruction": "i", "input": "x"}\n', r"d\.jsonl:1: missing field 'output'"),
    (b'{"question": "q", "answer": "a"}\n', r"d\.jsonl:1: missing field: expected 'prompt' \+ 'response'.*has answer, question"),
    (b"", r"d\.jsonl: empty file: no examples"),
    (b"\n  \n", r"d\.jsonl: empty file: no examples"),
    (b'{"prompt": "p", "response": "r"}\n{"prompt": "caf\xe9", "response": "r"}\n', r"d\.jsonl:2: not UTF-8 text"),
    (b'{"prompt": "p", "response": "r"}\n\n{"prompt": "p", "response": }\n', r"d\.jsonl:3: invalid JSON: Expecting value at column 29"),
    (b'["p", "r"]\n', r"d\.jsonl:1: expected a JSON object, got list"),
    (b'{"prompt": "p", "response": 3}\n', r"d\.jsonl:1: field 'response' must be a string, got int"),
    (b'{"prompt": "p", "response": "  "}\n', r"d\.jsonl:1: field 'response' is empty"),
    (b'{"messages": [{"role": "user", "content": "a"}]}\n', r"d\.jsonl:1: the last message must be the assistant's reply"),
    (b'{"messages": [{"role": "bot", "content": "a"}]}\n', r"d\.jsonl:1: messages\[0\] must be"),
    (b'{"messages": [{"role": "assistant", "content": "a"}]}\n', r"d\.jsonl:1: no user message before"),
])
def test_bad_data_is_refused_with_file_and_line(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_jsonl(tmp_path / "d.jsonl")
    assert info.value.path == tmp_path / "d.jsonl"


def test_an_example_longer_than_the_context_is_refused_before_training(tiny, tmp_path):
    model, tokenizer = tiny
    path = _write(tmp_path / "long.jsonl", json.dumps({"prompt": "what colour is the sky", "response": "blue"}),
                  json.dumps({"prompt": " ".join(["what"] * 300), "response": "blue"}))
    split = InstructionWorkload(val_fraction=0.0).examples(path)
    with pytest.raises(DataError, match=r"long\.jsonl:2: the example has 302 tokens \(prompt 300, response 2\); the model's context is 256"):
        InstructionWorkload().check(model, tokenizer, split.train)
    assert check_examples(model, tokenizer, split.train[:1]) == 7


def test_validation_file_or_seeded_fraction(tmp_path):
    _write(tmp_path / "train.jsonl", *(json.dumps({"prompt": f"p{i}", "response": "r"}) for i in range(10)))
    split = load_split(tmp_path, val_fraction=0.2, seed=1)
    assert len(split.train) == 8 and len(split.validation) == 2 and split == load_split(tmp_path, 0.2, seed=1)
    assert not {e.prompt for e in split.train} & {e.prompt for e in split.validation}
    _write(tmp_path / "validation.jsonl", json.dumps({"prompt": "v", "response": "r"}))
    split = load_split(tmp_path)
    assert len(split.train) == 10 and [e.prompt for e in split.validation] == ["v"]
    with pytest.raises(FileNotFoundError, match="neither a JSONL file nor a directory"):
        load_split(tmp_path / "nope")


def test_the_label_mask_covers_the_response_only(tiny):
    _, tokenizer = tiny
    examples = [InstructionExample.of(p, r) for p, r in TASK[:2]] + [InstructionExample.of("what is the answer", "blue green")]
    enc = [encode(tokenizer, e) for e in examples]
    words = tokenizer.convert_ids_to_tokens(enc[0].input_ids)
    assert words == ["what", "colour", "is", "the", "sky", "blue", "[eos]"]
    assert enc[0].labels == [IGNORE] * 5 + tokenizer.convert_tokens_to_ids(["blue", "[eos]"])
    batch = collate(tokenizer, enc)
    width = max(len(e.input_ids) for e in enc)
    for row, e in enumerate(enc):
        n = len(e.input_ids)
        assert batch["labels"][row].tolist() == e.labels + [IGNORE] * (width - n)  # padding is never learned
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["input_ids"][row, n:].eq(tokenizer.pad_token_id).all()


def test_the_loss_is_the_mean_over_response_tokens_as_transformers_computes_it(tiny):
    model, tokenizer = tiny
    examples = [InstructionExample.of(p, r) for p, r in TASK]
    batch = collate(tokenizer, [encode(tokenizer, e) for e in examples])
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert torch.allclose(sft_loss(model, tokenizer, examples), expected, atol=1e-5)


def test_evaluation_reports_exact_match_for_short_labels_and_perplexity(tiny):
    model, tokenizer = tiny
    model = type(model).from_pretrained(model.name_or_path) if model.name_or_path else model  # a copy to train
    examples = [InstructionExample.of(p, r) for p, r in TASK]
    before = evaluate_instruction(model, tokenizer, examples)
    assert before.headline == "exact_match" and set(before.metrics) == {"loss", "perplexity", "token_accuracy", "exact_match"}
    torch.manual_seed(0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = sft_loss(model, tokenizer, examples)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = evaluate_instruction(model, tokenizer, examples)
    assert after.metrics["exact_match"] == 1.0 and after.metrics["loss"] < before.metrics["loss"]
    assert math.isclose(after.metrics["perplexity"], math.exp(after.metrics["loss"]))
    assert after.metrics["token_accuracy"] == 1.0 > before.metrics["token_accuracy"]
    assert greedy_replies(model, tokenizer, examples, 3) == ["blue", "green", "white", "black"]
    long = evaluate_instruction(model, tokenizer, [InstructionExample.of("what is", " ".join(["blue"] * 9))])
    assert long.headline == "token_accuracy" and 0 <= long.score <= 1 and "exact_match" not in long.metrics


def test_normalised_exact_match():
    assert normalise("  Cardiology.\n") == normalise("cardiology") == "cardiology"
    assert normalise("Two  words!") == "two words" and normalise("ﬁne") == "fine"
    with pytest.raises(ValueError, match="headline metric 'auc'"):
        Evaluation({"loss": 1.0}, "auc")
    with pytest.raises(ValueError, match="score in \\[0, 1\\]"):
        Evaluation({"perplexity": 3.2}, "perplexity")  # fairness and the dashboard compare silos by a bounded score


def test_workloads_by_name_share_one_interface(tiny, tmp_path):
    assert set(WORKLOADS) == {"recommendation", "instruction"}
    with pytest.raises(KeyError, match="unknown workload 'vision'"):
        get_workload("vision")
    model, tokenizer = tiny
    rows = [Interaction(f"u{u}", t, 5.0 if (u + i) % 2 else 1.0, i)
            for u in range(4) for i, t in enumerate(["what colour", "the sky", "grass", "snow", "coal"])]
    workload = get_workload("recommendation", holdout=2)
    assert isinstance(workload, RecommendationWorkload)
    split = workload.examples(write_movielens(rows, tmp_path / "ml"))
    assert len(split.validation) == 8 and len(split.train) == 8
    workload.check(model, tokenizer, split.train)
    loss = workload.loss(model, tokenizer, split.train[:4])
    assert loss.requires_grad and loss.ndim == 0
    result = workload.evaluate(model, tokenizer, split.validation)
    assert result.headline == "auc" and set(result.metrics) == {"auc", "log_loss", "ndcg_5"}
    assert [c.render(result.metrics) for c in workload.columns] == [format(result.metrics[k], ".3f") for k in ("auc", "log_loss", "ndcg_5")]
    one_each = workload.evaluate(model, tokenizer, split.validation[::2])  # one item per user: no ranking to score
    assert "ndcg_5" not in one_each.metrics and workload.columns[-1].render(one_each.metrics) == "-"


def test_triage_silos_are_seeded_and_differ_in_words_and_labels(tmp_path):
    from collections import Counter

    folders = write_silos(tmp_path, train=150, validation=50, seed=3)
    assert set(folders) == set(DOMAINS) == {"emergency", "general-practice", "childrens-clinic"}
    assert write_silos(tmp_path / "again", train=150, validation=50, seed=3) and all(
        (tmp_path / "again" / d / f).read_bytes() == (folders[d] / f).read_bytes() for d in DOMAINS for f in ("train.jsonl", "validation.jsonl"))
    assert triage_examples("emergency", 50, seed=4) != triage_examples("emergency", 50, seed=3)
    splits = {d: load_split(folders[d]) for d in DOMAINS}
    words, mixes = {}, {}
    for d, split in splits.items():
        assert len(split.train) == 150 and len(split.validation) == 50
        assert {e.response for e in split.train + split.validation} <= set(DEPARTMENTS)
        mixes[d] = Counter(e.response for e in split.train)
        words[d] = {w for e in split.train for w in e.prompt.split("\n")[0].lower().split()}
    assert mixes["emergency"].most_common(1)[0][0] == "cardiology" and mixes["childrens-clinic"].most_common(1)[0][0] == "pulmonology"
    assert mixes["emergency"]["dermatology"] < mixes["general-practice"]["dermatology"] / 3
    for a in DOMAINS:
        for b in DOMAINS:
            if a < b:
                assert len(words[a] & words[b]) < 0.3 * min(len(words[a]), len(words[b])), (a, b)  # each its own vocabulary


def test_the_instruction_loss_trains_lora_through_the_deepspeed_engine(tmp_path):
    from fedshield.config import TrainingSpec
    from fedshield.learning.model import with_lora
    from fedshield.learning.training import create_engine, train_local_stats
    from fedshield.updates import VectorLayout, lora_parameters

    folders = write_silos(tmp_path / "data", train=24, validation=8)
    workload = get_workload("instruction")
    split = workload.examples(folders["emergency"])
    corpus = [e.prompt + " " + e.response for e in split.train + split.validation]
    model, tokenizer = load_base(build_tiny_base(tmp_path / "tiny", corpus))
    workload.check(model, tokenizer, split.train)
    peft = with_lora(model, r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"], seed=0)
    params = lora_parameters(peft)
    layout = VectorLayout.from_tensors(params)
    before = layout.flatten(params)
    engine = create_engine(peft, TrainingSpec(local_steps=3, batch_size=4, learning_rate=5e-3))
    trained = train_local_stats(engine, tokenizer, split.train, steps=3, batch_size=4, seed=0, workload=workload)
    assert trained.loss > 0 and trained.tokens > 0 and (layout.flatten(params) != before).any()
    result = workload.evaluate(engine, tokenizer, split.validation)
    assert result.headline == "exact_match" and 0.0 <= result.score <= 1.0


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return load_base(smollm2_dir)


def test_smollm2s_chat_template_masks_all_but_the_assistants_reply(smol):
    model, tokenizer = smol
    example = InstructionExample((Turn("system", "Answer with one word."), Turn("user", "Say hi."), Turn("assistant", "hi"),
                                  Turn("user", "Where is a chest pain patient sent?")), "cardiology")
    enc = encode(tokenizer, example)
    prompt = tokenizer.decode(enc.prompt_ids)
    assert prompt.startswith("<|im_start|>system\nAnswer with one word.<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>assistant\nhi<|im_end|>" in prompt  # earlier replies are context, not learned
    assert tokenizer.decode(enc.response_ids) == "cardiology<|im_end|>\n"
    assert enc.labels == [IGNORE] * len(enc.prompt_ids) + enc.response_ids
    full = tokenizer.apply_chat_template([{"role": t.role, "content": t.content} for t in example.context]
                                         + [{"role": "assistant", "content": "cardiology"}], tokenize=False)
    assert enc.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]  # the split does not change tokenisation
    triage = [e for d in DOMAINS for e in triage_examples(d, 20)]
    assert max(label_tokens(tokenizer, e) for e in triage) <= 8  # department names are short labels: exact match applies
    assert check_examples(model, tokenizer, triage) < 200


def test_smollm2s_greedy_reply_is_matched_after_normalising(smol):
    model, tokenizer = smol
    examples = [InstructionExample.of("What is the capital of France?", "the capital of France is Paris"),
                InstructionExample.of("What is the capital of France?", "Paris")]
    result = evaluate_instruction(model, tokenizer, examples)
    replies = greedy_replies(model, tokenizer, examples[:1], 8)
    assert replies == ["The capital of France is Paris."]  # the end of turn stops it; special tokens are not in the text
    assert result.metrics["exact_match"] == 0.5 and 1.0 < result.metrics["perplexity"] < 50
