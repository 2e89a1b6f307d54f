import os

os.environ.setdefault("FEDSHIELD_STATUS_INTERVAL", "0.3")  # the operator timer, fast in tests

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
