"""Models on local disk: the packaged SmolLM2 GGUF, any GGUF file by path, and a user's own directory,
all loaded through ``load_base`` (``from_pretrained`` on a directory, never a hub)."""

import json
import time

import pytest
import torch
from support.model_dirs import write_user_model

from fedshield.cli import main
from fedshield.learning.model import base_dtype, load_base
from fedshield.learning.models import MARKER, PACKAGED, import_gguf, packaged_gguf
from fedshield.workloads.recommendation import catalog

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMOLLM2 = "smollm2-135m-instruct"


def test_the_packaged_model_is_found_through_its_distribution():
    path = packaged_gguf(SMOLLM2)
    assert path.name == PACKAGED[SMOLLM2].filename and path.stat().st_size > 90e6
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    with pytest.raises(KeyError, match="unknown packaged model 'llama-70b'"):
        packaged_gguf("llama-70b")


def test_import_writes_an_ordinary_hugging_face_directory(smollm2_dir):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER} <= names
    assert not any(n.endswith(".gguf") for n in names)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    marker = json.loads((smollm2_dir / MARKER).read_text())
    assert marker["parameters"] == 134_515_008 and marker["architecture"] == "LlamaForCausalLM"


def test_importing_again_by_package_name_is_a_no_op(smollm2_dir, capsys):
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    start = time.monotonic()
    assert main(["models", "import", SMOLLM2, "--out", str(smollm2_dir)]) == 0
    assert time.monotonic() - start < 20  # hashes the file, loads nothing
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] is False
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_the_imported_model_loads_as_a_pretrained_llm_that_answers(smollm2_dir):
    model, tokenizer = load_base(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == base_dtype() == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    batch = tokenizer(text, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def test_import_refuses_what_is_not_gguf_and_directories_it_did_not_write(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF file"):
        import_gguf(fake, tmp_path / "out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["models", "import", str(packaged_gguf(SMOLLM2)), "--out", str(taken)]) == 2
    assert "exists and is not an import" in capsys.readouterr().err
    assert main(["models", "import", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "o")]) == 2
    assert (taken / "notes.txt").read_text() == "mine"


def test_a_users_own_directory_loads_through_the_same_path(tmp_path):
    path = write_user_model(tmp_path / "my-model", catalog())
    model, tokenizer = load_base(path)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.dtype == base_dtype()
    assert tokenizer.pad_token == tokenizer.eos_token


def test_a_directory_without_a_model_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="fedshield models import"):
        load_base(tmp_path)


def test_models_list_names_the_packaged_models(capsys):
    assert main(["models", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == SMOLLM2 and listed[0]["installed"] is True
