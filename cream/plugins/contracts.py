"""The contracts of the plug-ins: the protocols each kind implements and the small types they pass.

- a `Rewarder` names the models whose log-probs of the responses it reads (the reward stage computes each
  (model, response) log-prob once) and scores every response, given those log-probs and a `RewardInputs`
  (the model pool, for rewarders that run their own model calls, such as a judge);
- a `Pairing` turns one prompt's rewards into preference pairs (`Choice`), counting why a prompt gave none
  (`PairStats`);
- a `PairFilter` sees the iteration's pairs (each carrying its response indices), the reward rows by prompt
  id and the stage `Context` (model pool, policy, config: it may run forward passes of its own), and returns
  a `FilterResult`: a keep flag and a weight per pair, values of other `Pair` fields to set, and its metrics.
  It names the rewarders whose scores of M_t's responses it reads (`RewardRow.scores`);
- an `AdaptiveSampler` picks the iteration's sampling settings from the current model (B-STaR's probe) and
  may leave settings for later stages in the sample stage's `adaptive.json` (a `SamplingChoice`);
- a `Loss` says which examples it trains on (`layout`: `pairs` or `responses`, one per scored response),
  which per-example columns it reads, and computes the per-example loss from the policy's summed log-probs
  of the batch's sequences; per-example weights and targets reach it through those columns. A `responses`
  loss also sets each response's target from its prompt's rewards (`response_targets`).

Where each kind is registered and which config key selects it: `cream.plugins.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, Union

if TYPE_CHECKING:  # types only: importing the contracts loads neither torch nor a model
    import torch

    from cream.config import Config, JudgeConfig, SamplingConfig
    from cream.engine.model_pool import ModelPool
    from cream.runs.model_ref import ModelRef
    from cream.runs.logger import RunLogger
    from cream.runs.rows import Pair, PromptSamples, RewardRow

Scores = list[list[Optional[float]]]  # per prompt, one score per response (None: unscored)
Output = Union[Path, "ModelRef"]  # a stage's output: an artifact file, or the model it trained


@dataclass
class Context:
    """What a stage, a filter or a sampler may read: the run's configuration and data, the models so far,
    earlier stages' outputs."""

    cfg: Config
    pool: ModelPool
    device: str  # "cuda" when a GPU is visible, else "cpu"
    logger: RunLogger
    data_dir: Optional[Path]  # None: the hub
    prompts: list[dict]  # every unlabelled prompt, shuffled; iteration t reads shard t
    sft_examples: list[dict]
    models: list[ModelRef]  # models[k] is M_k: M0, M1 (after SFT), ..., the newest last
    iteration: int = 0
    outputs: dict[str, dict[str, Output]] = field(default_factory=dict)  # this iteration's, by stage name
    digests: dict[str, str] = field(default_factory=dict)  # the identity of those outputs, by stage name

    @property
    def policy(self) -> ModelRef:
        """M_t, the model iteration t samples from and trains."""
        return self.models[self.iteration]

    @property
    def newest(self) -> ModelRef:
        return self.models[-1]

    def file(self, stage: str, name: str) -> Path:
        """An artifact of an earlier stage of this iteration."""
        return self.outputs[stage][name]

    @property
    def sampling_seed(self) -> int:
        """The iteration's own seed for sampling and judging."""
        return self.cfg.seed * 1000 + self.iteration


@dataclass(frozen=True)
class RewardSpec:
    """A rewarder applied to one model. Responses in, one score per response (or None) out."""

    rewarder: str  # a registered rewarder's name
    model: ModelRef
    reference: Optional[ModelRef] = None  # for a rewarder that needs one (implicit)


@dataclass(frozen=True)
class RewardInputs:
    """What a rewarder may use beyond the log-probs: the run's configuration (a plug-in's own keys too), the
    model pool, the seed and the stage folder."""

    config: Config
    pool: ModelPool
    seed: int
    stage_dir: Path

    @property
    def judge(self) -> JudgeConfig:
        return self.config.judge

    @property
    def engine(self) -> SamplingConfig:  # the sampling backend and dtype a judge generates with
        return self.config.sampling

    @property
    def max_length(self) -> int:
        return self.config.model.max_length


class Rewarder(Protocol):
    needs_reference: bool  # whether it compares the model with a reference model (the implicit reward)

    def logp_models(self, spec: RewardSpec) -> list[ModelRef]: ...

    def scores(self, spec: RewardSpec, rows: list[PromptSamples], logps: dict[str, list[float]],
               inputs: RewardInputs) -> tuple[Scores, dict]: ...


@dataclass
class PairStats:
    kept: int = 0  # prompts that gave at least one pair
    dropped_all_equal: int = 0  # every scored response has the same reward: no preference
    dropped_identical_text: int = 0  # every preferred response has the same text as the one it beats
    dropped_unscored: int = 0  # fewer than two responses carry a score

    @property
    def dropped(self) -> int:
        return self.dropped_all_equal + self.dropped_identical_text + self.dropped_unscored

    def as_metrics(self) -> dict[str, int]:
        return {
            "pairs/prompts_kept": self.kept,
            "pairs/dropped": self.dropped,
            "pairs/dropped_all_equal": self.dropped_all_equal,
            "pairs/dropped_identical_text": self.dropped_identical_text,
            "pairs/dropped_unscored": self.dropped_unscored,
        }


@dataclass(frozen=True)
class Choice:
    chosen: int
    rejected: int


# (one prompt's rewards, its response texts, the counts of dropped prompts) -> its pairs
Pairing = Callable[[Sequence[Optional[float]], Sequence[str], PairStats], list[Choice]]


@dataclass
class FilterResult:
    keep: list[bool]  # per pair, in the order given
    weight: list[float]  # per pair; multiplies the pair's weight (filters compose)
    metrics: dict = field(default_factory=dict)  # logged with the pairs stage's metrics
    fields: dict[str, list[Any]] = field(default_factory=dict)  # other `Pair` fields to set, per pair


class PairFilter(Protocol):
    def rewarders(self, cfg: Config) -> tuple[str, ...]: ...  # whose scores of M_t's responses it reads

    def apply(self, pairs: list[Pair], rewards: dict[str, RewardRow], ctx: Context) -> FilterResult: ...


@dataclass(frozen=True)
class Loss:
    layout: str  # "pairs" (batch = [chosen; rejected]) or "responses" (one sequence per scored response)
    columns: tuple[str, ...]  # per-example float columns the loss reads (of `Pair` or `ScoredResponse`)
    # (summed policy log-probs of the batch's sequences, the batch, beta) -> (per-example loss, values to log)
    per_example: Callable[[torch.Tensor, dict, float], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    # layout `responses` only: (one prompt's rewards, the indices of the responses in its kept pairs, the config) ->
    # each response's `target`, None for a response that is no example; the pairs stage writes one per float
    response_targets: Optional[Callable[[Sequence[Optional[float]], Sequence[int], Config], list[Optional[float]]]] = None


@dataclass
class SamplingChoice:
    sampling: SamplingConfig  # what the shard is sampled with
    metrics: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # written to adaptive.json for later stages; empty: no file


class AdaptiveSampler(Protocol):
    def check(self, cfg: Config) -> None: ...  # its checks of the configuration, naming the keys

    # the iteration's sampling settings, from the current model on the prompts of the shard (`rows`)
    def choose(self, ctx: Context, rows: list[PromptSamples], stage_dir: Path) -> SamplingChoice: ...
