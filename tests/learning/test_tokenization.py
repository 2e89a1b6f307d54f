"""Training and scoring with real tokenizers: SmolLM2's byte-level BPE, a user's GPT-2-style model
without a pad token, and the tiny word-level one, through the same functions the silos use."""

import pytest
import torch
from support.model_dirs import EOS, write_user_model

from fedshield.config import TrainingSpec
from fedshield.learning.model import (
    answer_ids,
    build_tiny_base,
    chat_prompt,
    check_context,
    context_limit,
    last_token_logits,
    load_base,
    with_lora,
    yes_probabilities,
)
from fedshield.learning.training import create_engine, train_local
from fedshield.updates import VectorLayout, lora_parameters
from fedshield.workloads.recommendation import build_examples, catalog, prompt_for, synthetic_silos

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    prompt_for(["silver river drama"], ["red road western"], "quiet city comedy"),
    prompt_for(["golden crown musical", "wild storm action", "last signal scifi"], [], "hidden garden romance"),
    prompt_for([], ["broken night horror"], "red river drama"),
]


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return load_base(smollm2_dir)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_base(build_tiny_base(tmp_path_factory.mktemp("tiny") / "m", catalog() + [prompt_for(["x"], ["y"], "z")]))


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    return load_base(write_user_model(tmp_path_factory.mktemp("user") / "m", catalog() + PROMPTS, context=48))


def test_smollm2_answers_are_the_byte_level_tokens_that_follow_the_prompt(smol):
    _, tokenizer = smol
    yes, no = answer_ids(tokenizer, PROMPTS[0])
    assert tokenizer.convert_ids_to_tokens([yes, no]) == ["Ġyes", "Ġno"]
    assert tokenizer(PROMPTS[0] + " yes")["input_ids"][-1] == yes
    assert answer_ids(tokenizer) == (yes, no)  # the default probe prompt agrees


def test_after_smollm2s_chat_template_the_answers_start_the_assistants_reply(smol):
    _, tokenizer = smol
    text = chat_prompt(tokenizer, PROMPTS[0], system="Answer yes or no.")
    assert text.endswith("<|im_start|>assistant\n") and PROMPTS[0] in text
    assert tokenizer.convert_ids_to_tokens(list(answer_ids(tokenizer, text))) == ["yes", "no"]


def test_the_word_level_tiny_tokenizer_keeps_its_answer_tokens(tiny):
    _, tokenizer = tiny
    assert tokenizer.convert_ids_to_tokens(list(answer_ids(tokenizer, PROMPTS[0]))) == ["yes", "no"]
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(tokenizer, PROMPTS[0])


def test_last_token_logits_do_not_depend_on_padding_side(smol):
    model, tokenizer = smol
    alone = torch.cat([last_token_logits(model, tokenizer, [p]) for p in PROMPTS])
    before = tokenizer.padding_side
    try:
        for side in ("left", "right"):
            tokenizer.padding_side = side
            padded = last_token_logits(model, tokenizer, PROMPTS)
            assert torch.allclose(padded, alone, atol=1e-3), (side, (padded - alone).abs().max())
    finally:
        tokenizer.padding_side = before


def test_a_model_without_a_pad_token_pads_with_end_of_text(user):
    model, tokenizer = user
    assert tokenizer.pad_token == EOS and model.config.pad_token_id == tokenizer.eos_token_id
    probs = yes_probabilities(model, tokenizer, PROMPTS)
    assert probs.shape == (3,) and ((probs > 0) & (probs < 1)).all()


def test_prompts_longer_than_the_context_are_refused_by_name(user):
    model, tokenizer = user
    assert context_limit(model, tokenizer) == 48
    long = prompt_for(catalog()[:20], catalog()[20:30], catalog()[31])
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens; the model's context is 48"):
        yes_probabilities(model, tokenizer, [PROMPTS[0], long])
    with pytest.raises(ValueError, match=r"prompt 2 has \d+ tokens"):
        check_context(model, tokenizer, [PROMPTS[0], PROMPTS[1], long])
    assert 0 < check_context(model, tokenizer, PROMPTS) <= 48


def test_a_users_gpt2_directory_trains_with_lora_in_a_deepspeed_engine(user):
    model, tokenizer = user
    peft = with_lora(model, 4, 8, 0.0, ["c_attn"], seed=0)
    params = lora_parameters(peft)
    layout = VectorLayout.from_tensors(params)
    before = layout.flatten(params)
    engine = create_engine(peft, TrainingSpec(local_steps=2, batch_size=4))
    examples = [e for e in build_examples(synthetic_silos(["a"], seed=0)["a"], history=1)]
    loss = train_local(engine, tokenizer, examples, steps=2, batch_size=4, seed=0)
    assert loss > 0 and (layout.flatten(params) != before).any()
