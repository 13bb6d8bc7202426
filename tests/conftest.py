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

from cream.plugins.registry import load_plugins  # noqa: E402  (after the offline settings above)

load_plugins()  # as train.py does: the methods' settings groups join the schema tests compose against


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return CACHE


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir) -> Path:
    from cream.engine.models import build_tiny_model

    return build_tiny_model(cache_dir)


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    return FIXTURE_DATA


def stage_context(run_dir: Path, models, prompts=(), iteration: int = 1, **sections):
    """A stage's `Context` on the tiny model: the default config with `sections` replaced, W&B off."""
    from cream.config import DataConfig, LoggerConfig, ModelConfig
    from cream.plugins.registry import config_class
    from cream.config.engine import ModelSource
    from cream.config.runs import LoggerMode
    from cream.runs.logger import RunLogger
    from cream.engine.model_pool import ModelPool
    from cream.plugins.contracts import Context

    sections.setdefault("model", ModelConfig(name="tiny", source=ModelSource.tiny, max_length=128))
    sections.setdefault("data", DataConfig(shard_size=max(len(prompts), 1)))
    cfg = config_class()(experiment_name="test", run_name="test", logger=LoggerConfig(mode=LoggerMode.disabled), **sections)
    return Context(cfg=cfg, pool=ModelPool(cfg.model), device="cpu", logger=RunLogger(cfg, run_dir), data_dir=FIXTURE_DATA,
                   prompts=list(prompts) * iteration, sft_examples=[], models=list(models), iteration=iteration)
