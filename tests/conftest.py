import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests run offline: no hub look-ups, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
