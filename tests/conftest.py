import os
from pathlib import Path

import pytest

# Nothing may reach a hub in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "fixtures" / "data"
CACHE = Path(os.environ.get("CREAM_TEST_CACHE", "~/.cache/cream")).expanduser()


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return CACHE


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir) -> Path:
    from cream.models import build_tiny_model

    return build_tiny_model(cache_dir)


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    return FIXTURE_DATA
