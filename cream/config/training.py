"""What updates weights: what SFT and DPO share (schedule, precision, LoRA, the launcher), each one's own
settings, and the accelerate configs a training may run under."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cream.errors import ConfigError, require

# Shipped accelerate configs: `dpo.accelerate_config=<name>`. A folder beside conf/, not inside it: Hydra
# would list conf/accelerate/ as a config group, and these files are accelerate's schema, not ours.
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "accelerate_configs"

# transformers' SchedulerType values (tests/test_config_checks.py keeps the two equal): written out, since
# importing transformers here would cost seconds to every process that reads a config, launched trainers too.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
              "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy")


def accelerate_config_file(value: str, key: str = "dpo.accelerate_config"):
    """The file an `accelerate_config` key names and its parsed config (accelerate's own loader checks it)."""
    from accelerate.commands.config.config_args import load_config_from_file

    shipped = "/" not in value and Path(value).suffix not in (".yaml", ".yml", ".json")
    path = ACCELERATE_CONFIGS / f"{value}.yaml" if shipped else Path(value).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"config key `{key}`: {path} not found; give one of {names} "
                          "(accelerate_configs/) or the path of an accelerate config file")
    try:
        return path, load_config_from_file(str(path))
    except Exception as e:  # accelerate raises ValueError, TypeError or a YAML error for a bad file
        raise ConfigError(f"config key `{key}`: {path} is not a valid accelerate config: {e}") from None


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def check(self, key: str) -> None:
        """Range checks, naming the keys under `key` (`sft.lora`, `dpo.lora`): the parent calls this."""
        require(self.r >= 1, f"{key}.r", f"must be >= 1, got {self.r}")
        require(self.alpha > 0, f"{key}.alpha", f"must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, f"{key}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class TrainingConfig:
    """What SFT and DPO share: the optimizer schedule, precision, LoRA and the launcher."""

    lr: float = 5e-5
    epochs: float = 1.0
    # 1 example per forward, 4 per optimizer step: the same updates as batches of 4 with a quarter of
    # the activation memory, and faster on a CPU (BENCHMARKS.md)
    batch_size: int = 1
    grad_accum: int = 4
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora: Optional[LoraConfig] = field(default_factory=LoraConfig)  # null = full fine-tuning
    # Training under `accelerate launch` (cream/training/launch.py): a shipped name (`deepspeed_zero3`, `fsdp`:
    # accelerate_configs/<name>.yaml) or the path of an accelerate config file; null = train in the
    # loop's own process. The loop itself (sampling, scoring, evaluation) stays one process either way.
    accelerate_config: Optional[str] = None
    # Training processes (one per GPU); null = the accelerate config's num_processes. The global batch is
    # batch_size x grad_accum x num_processes.
    num_processes: Optional[int] = None

    _group = "dpo"  # the config group, for error messages

    def __post_init__(self) -> None:
        g = self._group
        require(self.lr > 0, f"{g}.lr", f"must be > 0, got {self.lr}")
        require(self.epochs > 0, f"{g}.epochs", f"must be > 0, got {self.epochs}")
        require(self.batch_size > 0, f"{g}.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.grad_accum > 0, f"{g}.grad_accum", f"must be > 0, got {self.grad_accum}")
        require(0 <= self.warmup_ratio < 1, f"{g}.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.scheduler in SCHEDULERS, f"{g}.scheduler",
                f"expected one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.lora is not None:
            self.lora.check(f"{g}.lora")
        require(self.num_processes is None or self.num_processes >= 1, f"{g}.num_processes",
                f"must be >= 1 or null, got {self.num_processes}")
        require(self.num_processes is None or self.accelerate_config is not None, f"{g}.num_processes",
                f"needs {g}.accelerate_config (without it training runs in the loop's single process)")
        if self.accelerate_config is not None:
            accelerate_config_file(self.accelerate_config, f"{g}.accelerate_config")  # exists and parses


@dataclass
class DPOConfig(TrainingConfig):
    beta: float = 0.1
    # A registered loss (cream.plugins.registry.LOSSES): cream (the soft-label DPO loss; plain DPO at label 1), sppo
    # (SPPO's square loss on single responses and their win rates, eta = 1 / beta: cream/methods/sppo.py), sppo_hard
    # (TRL's pairwise SPPO)
    loss: str = "cream"

    _group = "dpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.beta > 0, "dpo.beta", f"must be > 0, got {self.beta}")


@dataclass
class SFTConfig(TrainingConfig):
    enabled: bool = True
    lr: float = 1e-4
    max_examples: Optional[int] = 32  # null = the whole seed set
    max_length: int = 256

    _group = "sft"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_examples is None or self.max_examples >= 1, "sft.max_examples",
                f"must be >= 1 or null (the whole seed set), got {self.max_examples}")
        require(self.max_length > 0, "sft.max_length", f"must be > 0, got {self.max_length}")
