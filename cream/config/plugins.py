"""What a config says to the plug-ins: the names of the rewarders, and the settings only a method's plug-ins read.

Each dataclass is a group of `cream.config.Config` (`scir`, `upo`, `bstar`, `self_reference`); the plug-ins
themselves are in `cream.methods`. This module imports no other module of the package than the error types
and the prompt templates, so `cream.config` can compose it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cream.config.prompts import SELF_REFERENCE_TEMPLATE
from cream.errors import require


class RewarderName(StrEnum):  # the names under which rewarders register (cream.plugins.registry.REWARDERS)
    implicit = "implicit"  # log pi_t - log pi_ref (CREAM)
    likelihood = "likelihood"  # mean token log-prob
    judge = "judge"  # the model grades its own responses (SRLM's LLM-as-a-judge)
    oracle = "oracle"  # ground-truth correctness, for prompts with known answers
    self_reference = "self_reference"  # pairwise verdicts against the model's own answer (cream/methods/self_reference.py)


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
        require(self.judge_temperature > 0, "scir.judge_temperature", f"must be > 0, got {self.judge_temperature}")
        require(self.penalty >= 0, "scir.penalty", f"must be >= 0, got {self.penalty}")


class DropoutSite(StrEnum):
    attention = "attention"  # the attention probabilities of every layer (any model, LoRA or full weights)
    lora = "lora"  # the input of every LoRA adapter (peft's lora_dropout), under LoRA only


class UpoWeighting(StrEnum):
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
        require(self.k >= 2, "upo.k", f"a variance needs at least 2 passes, got {self.k}")
        require(0 < self.dropout < 1, "upo.dropout", f"must be in (0, 1), got {self.dropout}")
        require(0 < self.keep <= 1, "upo.keep", f"must be in (0, 1], got {self.keep}")


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
        require(len(self.temperatures) > 0 and all(t > 0 for t in self.temperatures), "bstar.temperatures",
                f"must be a non-empty list of values > 0, got {self.temperatures}")
        require(len(self.thresholds) > 0, "bstar.thresholds", "must name at least one threshold")
        require(self.probe_prompts >= 1, "bstar.probe_prompts", f"must be >= 1, got {self.probe_prompts}")
        require(self.n_star >= 1, "bstar.n_star", f"must be >= 1, got {self.n_star}")


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
            require(placeholder in self.template, "self_reference.template", f"must contain {placeholder}")
        require(len(self.verdicts) == 2 and self.verdicts[0] != self.verdicts[1], "self_reference.verdicts",
                f"must be two different strings (A wins, B wins), got {self.verdicts}")
        require(self.answer_tokens > 0, "self_reference.answer_tokens", f"must be > 0, got {self.answer_tokens}")
        require(0 <= self.min_mass <= 1, "self_reference.min_mass", f"must be in [0, 1], got {self.min_mass}")
        require(self.batch_size > 0, "self_reference.batch_size", f"must be > 0, got {self.batch_size}")
