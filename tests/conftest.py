import os

os.environ.setdefault("FEDSHIELD_STATUS_INTERVAL", "0.3")  # the operator timer, fast in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from local directories only; no hub is ever asked

from pathlib import Path

import pytest

from fedshield.crypto import create_keys


@pytest.fixture(scope="session")
def keys():
    """One secret key set for the whole session (key generation takes ~0.1 s)."""
    return create_keys()


@pytest.fixture(scope="session")
def public_keys(keys):
    return keys.public()


@pytest.fixture(scope="session")
def other_keys():
    return create_keys()


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct, imported once per session from its package's GGUF file given by path (the CLI).

    FEDSHIELD_TEST_SMOLLM2_DIR names a directory to reuse between sessions (the import is idempotent).
    """
    from fedshield.cli import main
    from fedshield.learning.models import packaged_gguf

    out = Path(os.environ.get("FEDSHIELD_TEST_SMOLLM2_DIR") or tmp_path_factory.mktemp("models") / "smollm2")
    assert main(["models", "import", str(packaged_gguf("smollm2-135m-instruct")), "--out", str(out)]) == 0
    return out


@pytest.fixture
def one_torch_thread():
    """Torch on one intra-op thread for the duration of a test: a 135M model on a busy 2-core machine is
    many times faster so than with threads that spin against each other and the other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
