"""Every experiment composes and validates; a bad config fails before any model loads, naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cream.config import Config, load_config
from cream.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _load(overrides):
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose(overrides)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices.experiment}
    return load_config(cfg)


def test_experiments_exist():
    assert {"cream_smollm", "srlm_smollm", "cream_llama", "cream_llama2", "smoke"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = _load([f"experiment={experiment}"])
    assert isinstance(cfg, Config) and cfg.experiment_name == experiment


def test_default_experiment_is_cream_smollm():
    cfg = _load([])
    assert cfg.experiment_name == "cream_smollm"
    assert cfg.model.name == "smollm2_135m" and cfg.regularizer.name.value == "cream_dyn"


def test_paper_settings_in_llama_presets():
    cfg = _load(["experiment=cream_llama"])
    assert (cfg.sampling.n, cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens) == (5, 0.8, 0.95, 768)
    assert (cfg.dpo.beta, cfg.dpo.lr, cfg.dpo.epochs, cfg.dpo.lora, cfg.dpo.bf16) == (0.1, 1e-6, 1, None, True)
    assert cfg.model.path == "meta-llama/Meta-Llama-3-8B-Instruct" and cfg.eval.limit is None
    assert _load(["experiment=cream_llama2"]).model.path == "meta-llama/Llama-2-7b-chat-hf"


@pytest.mark.parametrize(
    "override, key",
    [
        ("sampling.n=1", "sampling.n"),
        ("sampling.n=0", "sampling.n"),
        ("data.shard_size=0", "data.shard_size"),
        ("data.shard_size=-3", "data.shard_size"),
        ("regularizer.measure=pearson", "regularizer.measure"),
        ("rewarder.reference=m7", "rewarder.reference"),
        ("+sampling.temprature=0.5", "temprature"),
        ("iterations=0", "iterations"),
        ("sampling.top_p=1.5", "sampling.top_p"),
        ("dpo.beta=abc", "dpo.beta"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _load([override])
