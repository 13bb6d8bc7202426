"""What scores and ranks responses: the rewarder, the judge, the consistency regularizer, the pairs, and the
reward-bias diagnosis. A rewarder is named as it registered (`cream.plugins.registry.REWARDERS`: implicit,
likelihood, judge, oracle, and the methods' own, e.g. self_reference); `cream.preflight` checks every name."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from cream.config.prompts import SRLM_JUDGE_TEMPLATE
from cream.errors import ConfigError, require


class ModelRole(StrEnum):
    m0 = "m0"  # the starting checkpoint
    previous = "previous"  # M_{t-1}


class RegularizerName(StrEnum):
    none = "none"
    cream_avg = "cream_avg"
    cream_dyn = "cream_dyn"


class AgreementMeasure(StrEnum):
    kendall = "kendall"
    spearman = "spearman"
    toporder = "toporder"


@dataclass
class RewarderConfig:
    # a registered rewarder: implicit (log pi_t - log pi_ref, CREAM), likelihood (mean token log-prob), judge (the
    # model grades its own responses, SRLM), oracle (ground-truth correctness), self_reference (cream/methods/)
    name: str = "implicit"
    # pi_ref of the implicit reward r = log pi_t - log pi_ref (paper: M0 at every iteration); other rewarders ignore it
    reference: ModelRole = ModelRole.m0
    batch_size: int = 8  # responses per scoring forward (also the DPO reference log-probs)

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "rewarder.batch_size", f"must be > 0, got {self.batch_size}")


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
            require(placeholder in self.template, "judge.template", f"must contain {placeholder}")
        try:
            groups = re.compile(self.pattern).groups
        except re.error as e:
            raise ConfigError(f"config key `judge.pattern`: not a valid regular expression: {e}") from None
        require(groups == 1, "judge.pattern", f"must capture exactly one group (the score), has {groups}")
        require(self.min_score < self.max_score, "judge.max_score", "must exceed judge.min_score")
        require(self.samples >= 1, "judge.samples", f"must be >= 1, got {self.samples}")
        require(self.max_new_tokens > 0, "judge.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")


@dataclass
class RegularizerConfig:
    name: RegularizerName = RegularizerName.cream_dyn
    measure: AgreementMeasure = AgreementMeasure.kendall
    # The "previous" ranking is the rewarder applied with M_{t-1}. When that is degenerate (at t=1
    # M_{t-1} = M0 is its own reference), the previous ranking is this rewarder on M0 instead.
    first_previous: str = "likelihood"  # a registered rewarder


@dataclass
class PairsConfig:
    """Which pairs each prompt gives and which survive (the pairs stage)."""

    # A registered pairing (cream.plugins.registry.PAIRINGS) of the responses ordered by reward: best_worst (one pair,
    # CREAM and SRLM), ranked (every pair of different rewards, OSP), adjacent (neighbouring ranks, OSP)
    strategy: str = "best_worst"
    # A reward gap's preference probability sigmoid(reward_scale x gap / tau) (Bradley-Terry; reward_scale is dpo.beta
    # for the implicit reward, 1 otherwise: cream.rewards.pairing): each pair's strength (OSP) and the win rates of
    # dpo.loss=sppo; tau = 1 is the reward model's own probability; null = a hard preference (1, 1/2 on a tie)
    tau: Optional[float] = None
    filters: list[str] = field(default_factory=list)  # registered pair filters (cream.plugins.registry.FILTERS), in order

    def __post_init__(self) -> None:
        require(self.tau is None or self.tau > 0, "pairs.tau", f"must be > 0 or null, got {self.tau}")


@dataclass
class DiagnoseConfig:
    """Reward bias measured on held-out prompts with known answers: cream/stages/diagnose.py, `python -m cream.diagnose`."""

    enabled: bool = False  # the loop diagnoses each iteration's new model after training
    prompts: int = 256  # K: the prompts after the run's training shards, never trained on
    n: int = 4  # responses per prompt
    rewarders: list[str] = field(default_factory=lambda: ["implicit", "likelihood", "judge", "oracle"])  # registered
    max_new_tokens: int = 128  # per response; the judge keeps its own `judge.max_new_tokens`
    bootstrap: int = 2000  # resamples of the prompts for each confidence interval
    confidence: float = 0.95  # level of the intervals

    def __post_init__(self) -> None:
        require(self.prompts >= 1, "diagnose.prompts", f"must be >= 1, got {self.prompts}")
        require(self.n >= 2, "diagnose.n", f"ranking needs at least 2 responses per prompt, got {self.n}")
        require(len(self.rewarders) > 0, "diagnose.rewarders", "must name at least one rewarder")
        repeated = sorted({r for r in self.rewarders if self.rewarders.count(r) > 1})
        require(not repeated, "diagnose.rewarders", f"lists {', '.join(repeated)} more than once")
        require(self.max_new_tokens > 0, "diagnose.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        require(self.bootstrap >= 1, "diagnose.bootstrap", f"must be >= 1, got {self.bootstrap}")
        require(0 < self.confidence < 1, "diagnose.confidence", f"must be in (0, 1), got {self.confidence}")
