"""Every W&B sweep spec in sweeps/ runs train.py with Hydra overrides that compose and validate.

Each grid point is turned into overrides by W&B's own `${args_no_hyphens}` code, composed with the
real conf/ and validated by `load_config`; a group value must be an option file in conf/<group>/.
"""

import dataclasses
import functools
import itertools
import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from cream.config import load_config, to_plain_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SPECS = sorted((REPO / "sweeps").glob("*.yaml"))
GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}
MAX_PRODUCT = 64  # larger grids are checked value by value instead of point by point


def _spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _values(param: dict) -> list:
    return param["values"] if "values" in param else [param["value"]]


def _grid(spec: dict) -> list[dict]:
    """Every grid point when there are at most MAX_PRODUCT, else each value of each parameter once."""
    params = {k: _values(v) for k, v in spec["parameters"].items()}
    if math.prod(len(v) for v in params.values()) <= MAX_PRODUCT:
        return [dict(zip(params, point)) for point in itertools.product(*params.values())]
    first = {k: v[0] for k, v in params.items()}
    return [first] + [{**first, k: value} for k, values in params.items() for value in values[1:]]


def _overrides(point: dict) -> tuple[str, ...]:
    """What the W&B agent appends to the command for `${args_no_hyphens}`."""
    return tuple(create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})["args_no_hyphens"])


@functools.cache
def _load(overrides: tuple[str, ...]):
    """(validated Config, the group choices) of one composition."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.choices.experiment}
    return load_config(cfg), dict(cfg.hydra.runtime.choices)


POINTS = [pytest.param(_overrides(point), id=f"{path.stem}-{i}")
          for path in SPECS for i, point in enumerate(_grid(_spec(path)))]


def test_there_are_sweep_specs():
    assert SPECS, "no sweeps/*.yaml"


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_is_a_grid_running_train_py_with_hydra_overrides(path):
    spec = _spec(path)
    assert spec["program"] == "train.py" and spec["method"] == "grid"
    assert spec["command"][-2:] == ["${program}", "${args_no_hyphens}"], spec["command"]
    for key, param in spec["parameters"].items():
        assert set(param) in ({"value"}, {"values"}), f"{path.name}: {key} must give `value` or `values`"
        if key in GROUPS:
            missing = {str(v) for v in _values(param)} - {p.stem for p in (CONF / key).glob("*.yaml")}
            assert not missing, f"{path.name}: {key} names {sorted(missing)}, not options in conf/{key}/"


@pytest.mark.parametrize("overrides", POINTS)
def test_every_grid_point_composes_validates_and_applies(overrides):
    cfg, choices = _load(overrides)
    resolved = OmegaConf.create(to_plain_dict(cfg))
    for override in overrides:
        key, value = override.split("=", 1)
        if key in GROUPS:
            assert choices[key] == value, override
        elif "${" not in value:  # an interpolated value (run_name) resolves to other text: see the next test
            assert str(OmegaConf.select(resolved, key)) == value, override


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_grid_points_get_distinct_run_folders(path):
    points = _grid(_spec(path))
    names = [_load(_overrides(point))[0].run_name for point in points]
    assert len(set(names)) == len(names), f"{path.name}: grid points share a run_name: {names}"


def test_slurm_launcher_composes():
    cfg, choices = _load(("hydra/launcher=submitit_slurm", "experiment=cream_llama"))
    assert choices["hydra/launcher"] == "submitit_slurm"


def test_slurm_launcher_keys_are_the_plugins():
    plugin = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config")
    launcher = OmegaConf.load(CONF / "hydra" / "launcher" / "submitit_slurm.yaml")
    assert set(launcher) <= {f.name for f in dataclasses.fields(plugin.SlurmQueueConf)}


def test_a_local_multirun_runs_every_point_into_its_own_run_folder(tmp_path):
    """The README's local grid, on two points of the tiny model: each job its own run folder, with its log."""
    from tests.conftest import FIXTURE_DATA
    from tests.test_integration import cli

    result = cli("-m", "experiment=smoke", "sft.enabled=false", "rewarder=likelihood", "eval.enabled=false",
                 "logger.mode=disabled", f"paths.data={FIXTURE_DATA}", f"paths.runs={tmp_path}", "seed=0,1")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "smoke").iterdir() if (p / "run.json").is_file())
    assert [yaml.safe_load((p / "run.json").read_text())["config"]["seed"] for p in runs] == [0, 1]
    for run in runs:
        assert (run / "iter_1" / "dpo" / "DONE").is_file() and (run / "train.log").is_file()
