"""Every experiment composes and validates; a bad config fails before any model loads, naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

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
    # a wrong type, an unknown key or an invalid choice fails at composition against the schema (Hydra's
    # error); an out-of-range value at validation (ours); both name the key
    with pytest.raises((ConfigError, ConfigCompositionException), match=key.replace(".", r"\.")):
        _load([override])


GROUP_SCHEMAS = {"model": "ModelConfig", "sampling": "SamplingConfig", "rewarder": "RewarderConfig",
                 "judge": "JudgeConfig", "regularizer": "RegularizerConfig", "sft": "SFTConfig", "dpo": "DPOConfig",
                 "data": "DataConfig", "eval": "EvalConfig", "logger": "LoggerConfig"}


@pytest.mark.parametrize("option", sorted(p for g in GROUP_SCHEMAS for p in (CONF / g).glob("*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_options_state_only_what_they_change(option):
    """One source of defaults: the schema's. An option repeating a default could silently disagree with it later."""
    import dataclasses

    import yaml

    import cream.config

    schema = getattr(cream.config, GROUP_SCHEMAS[option.parent.name])()
    values = yaml.safe_load(option.read_text()) or {}
    defaults = {f.name: getattr(schema, f.name) for f in dataclasses.fields(schema)}
    for key, value in values.items():
        assert key in defaults, f"{option}: unknown key {key}"
        default = defaults[key]
        default = default.value if hasattr(default, "value") else default
        default = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
        assert value != default, f"{option}: `{key}: {value!r}` repeats the schema's default"


def test_every_group_has_its_folder_and_the_schema_is_the_first_default():
    assert {p.name for p in CONF.iterdir() if p.is_dir()} >= set(GROUP_SCHEMAS) | {"experiment"}
    defaults = (CONF / "config.yaml").read_text()
    assert defaults.index("- cream_schema") < defaults.index("- model:")


def test_sft_and_dpo_agree_on_lora():
    with pytest.raises(ConfigError, match=r"sft\.lora"):
        _load(["dpo=full"])  # DPO would continue SFT's adapter as if it were full weights
    cfg = _load(["dpo=full", "sft=full"])
    assert cfg.sft.lora is None and cfg.dpo.lora is None
    assert _load(["dpo=full", "sft.enabled=false"]).dpo.lora is None  # no SFT, nothing to agree with


def test_the_default_run_name_is_resolved_once():
    """Hydra resolves `run_name` for its log folder, the loop again later: both read the same timestamp."""
    import time

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    cfg = _compose([])
    HydraConfig.instance().set_config(cfg)
    first = OmegaConf.select(cfg, "hydra.run.dir")
    time.sleep(1.1)
    assert load_config(cfg).run_name == first.rsplit("/", 1)[1]


@pytest.mark.parametrize("value, expected", [("false", "false"), ("auto", "auto"), ("force", "force")])
def test_resume_from_the_command_line(value, expected):
    assert _load([f"resume={value}", "run_name=chosen"]).resume == expected


@pytest.mark.parametrize(
    "command, experiment",
    [
        (["+experiment=cream_llama"], "cream_llama"),  # the design's form, Hydra's docs' form for presets
        (["experiment=cream_llama"], "cream_llama"),  # the form of the sweep specs (wandb agent's overrides)
        ([], "cream_smollm"),  # `python train.py` alone: the default experiment
    ],
)
def test_the_three_command_lines_run_the_intended_preset(command, experiment):
    import subprocess
    import sys

    import yaml

    result = subprocess.run([sys.executable, str(CONF.parent / "train.py"), *command, "--cfg", "job", "--resolve"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    composed = yaml.safe_load(result.stdout)
    assert composed["experiment_name"] == experiment
    assert composed["model"]["name"] == ("llama3_8b" if experiment == "cream_llama" else "smollm2_135m")
