"""Typed configuration: one dataclass per Hydra group, the single source of every default.

Each group's dataclass lives beside the code it configures: `engine` (model, sampling), `rewards` (rewarder,
judge, regularizer, pairs, diagnose), `training` (sft, dpo, the accelerate configs), `data`, `eval`, `runs`
(paths, logger, run name, resume). This module composes them into `Config`; a method's own settings group (`upo`,
`scir`, ...) is a dataclass in its plug-in module, registered in `cream.plugins.registry.SETTINGS`, and
`store_schema` adds those groups to `Config` when the plug-ins load. The result is Hydra's `cream_schema`, the first entry
of `conf/config.yaml`'s defaults list: Hydra composes the YAML options of `conf/<group>/` over them, and
each option file states only what it changes. So a typo in a key, a wrong type or an invalid choice
fails at composition, naming the key; `load_config` then runs the range checks of `__post_init__`.
The package imports no runtime module of the harness.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cream.config.data import DataConfig
from cream.config.engine import ModelConfig, SamplingConfig
from cream.config.eval import EvalConfig
from cream.config.rewards import DiagnoseConfig, JudgeConfig, PairsConfig, RegularizerConfig, RewarderConfig
from cream.config.runs import LoggerConfig, PathsConfig, ResumeMode, check_run_name
from cream.config.training import DPOConfig, SFTConfig
from cream.errors import ConfigError, require

DEVICES = ("auto", "cpu", "cuda")  # the values of the config key `device`


@dataclass
class Config:
    experiment_name: str = MISSING  # conf/config.yaml: the experiment group's choice
    run_name: str = MISSING  # conf/config.yaml: a timestamp resolved once per run
    # auto: the same run_name resumes when its configuration matches, and is refused otherwise |
    # false: always a new folder (run_name gets a numeric suffix when taken) | force: reuse it anyway.
    # A string, not the enum: the command line reads `resume=false` as a boolean.
    resume: str = ResumeMode.auto.value
    seed: int = 0
    iterations: int = 2
    threads: Optional[int] = None  # torch threads; null = torch's default
    device: str = "auto"  # auto (cuda when a GPU is visible, else cpu) | cpu | cuda: where every stage runs
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rewarder: RewarderConfig = field(default_factory=RewarderConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)

    def __post_init__(self) -> None:
        check_run_name(self.run_name)
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.iterations >= 1, "iterations", f"must be >= 1, got {self.iterations}")
        require(self.threads is None or self.threads >= 1, "threads", f"must be >= 1 or null, got {self.threads}")
        self.device = str(self.device).lower()
        require(self.device in DEVICES, "device", f"expected {', '.join(DEVICES)}, got {self.device!r}")
        # the command line reads `resume=false` as a boolean, which arrives here as "False"
        self.resume = {"true": "auto"}.get(str(self.resume).lower(), str(self.resume).lower())
        require(self.resume in [m.value for m in ResumeMode], "resume",
                f"expected auto, false or force, got {self.resume!r}")
        # DPO continues SFT's model: an adapter when SFT trained one, the full weights otherwise.
        require(not self.sft.enabled or (self.sft.lora is None) == (self.dpo.lora is None), "sft.lora",
                f"must be set exactly when dpo.lora is (DPO continues the model SFT trains); "
                f"sft.lora={'null' if self.sft.lora is None else 'set'}, dpo.lora={'null' if self.dpo.lora is None else 'set'}")


_schema: type = Config  # Config plus the settings groups of the loaded methods (`store_schema`)
_plugin_problems: list[str] = []  # the plug-in modules that failed to load, for the error of an unknown key


def store_schema(groups: dict[str, type], problems: list[str]) -> type:
    """Compose `Config` with the methods' settings groups (each a dataclass, registered by its plug-in module in
    `cream.plugins.registry.SETTINGS`) and register it as Hydra's `cream_schema`: called by `load_plugins`."""
    global _schema
    clash = sorted(set(groups) & {f.name for f in fields(Config)})
    require(not clash, clash[0] if clash else "", "a method's settings group takes the name of a core group")
    _schema = make_dataclass("Config", [(name, cls, field(default_factory=cls)) for name, cls in sorted(groups.items())],
                             bases=(Config,))
    _schema.__module__, _schema.__doc__ = __name__, Config.__doc__
    _plugin_problems[:] = problems
    ConfigStore.instance().store(name="cream_schema", node=_schema)
    return _schema


def schema() -> type:
    """The configuration schema: `Config`, plus the loaded methods' groups once `load_plugins` has run."""
    return _schema


ConfigStore.instance().store(name="cream_schema", node=Config)
# `run_name`'s default timestamp. Cached per composed config: Hydra resolves `run_name` for its output
# folder (where it writes train.log) and the loop resolves it again later; both must read the same second.
OmegaConf.register_new_resolver("run_stamp", lambda fmt: datetime.now().strftime(fmt), use_cache=True, replace=True)
# `hydra.run.dir: ${paths.runs}/${experiment_name}/${run_folder:${run_name}}`: Hydra creates that folder and
# its train.log before `load_config` runs, so a `run_name` leaving paths.runs must be refused while it resolves.
OmegaConf.register_new_resolver("run_folder", check_run_name, replace=True)


def _refuse_non_finite(value: Any, key: str = "") -> None:
    """No setting may be NaN or infinite: `dpo.beta=inf` passed every range check and trained a NaN model."""
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_non_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_non_finite(v, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key `{key}`: must be a finite number, got {value}")


def load_config(cfg: DictConfig) -> Config:
    """Validate a composed Hydra config against the schema and return the typed object."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)  # Hydra's own settings are not ours to validate
    if str(container.get("run_name", "")).startswith("${run_stamp:") and str(container.get("resume")).lower() in ("auto", "true"):
        # A name the user did not choose never resumes a folder: two runs started in the same second (or under a
        # clock set back) would share one. The second gets `<timestamp>_2`, as with resume=false.
        container["resume"] = ResumeMode.false.value
    container["run_name"] = OmegaConf.select(cfg, "run_name")  # resolved in `cfg`, whose `run_stamp` is cached
    try:
        plain = OmegaConf.to_container(OmegaConf.create(container), resolve=True)
        _refuse_non_finite(plain)
        merged = OmegaConf.merge(OmegaConf.structured(_schema), plain)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        broken = f" (plug-in modules that failed to load: {' | '.join(_plugin_problems)})" if _plugin_problems else ""
        raise ConfigError(f"invalid config{f' at `{key}`' if key else ''}: {e.msg if hasattr(e, 'msg') else e}{broken}") from None


def to_plain_dict(cfg: Config) -> dict:
    """The config as plain JSON-able values (enums as their strings)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
