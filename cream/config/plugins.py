"""What a config says to the plug-ins: the names of the rewarders, and the settings only a method's plug-ins read.

Each dataclass is a group of `cream.config.Config` (`scir`, `upo`, `bstar`, `self_reference`); the plug-ins
themselves are in `cream.methods`. This module imports no other module of the package than the error types
and the prompt templates, so `cream.config` can compose it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

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

    # the rewarder of the second vote, a registered name (checked at start-up): the model's own judge (the paper)
    judge: str = "judge"
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


class UpoUncertainty(StrEnum):
    bald = "bald"  # BALD, the mutual information of the K passes' predictions (the official code; at most ln 2)
    variance = "variance"  # the population variance of p over the K passes (at most 1/4)


class UpoSelection(StrEnum):
    sample = "sample"  # drawn without replacement with probability proportional to 1 - u (the official code), seeded
    lowest = "lowest"  # the lowest uncertainty first, deterministically (ties: the earlier pair)


class UpoWeighting(StrEnum):
    none = "none"  # the kept pairs train with weight 1 (the official code)
    certainty = "certainty"  # each kept pair weighted by 1 - u / u_max (u_max: ln 2 for BALD, 1/4 for the variance)


@dataclass
class UpoConfig:
    """UPO's filter (`pairs.filters=[uncertainty]`): each pair scored `k` times with dropout active
    (cream/methods/upo.py). The defaults are the official code's."""

    k: int = 10  # forward passes with dropout per pair (Monte Carlo dropout; the official T = 10)
    dropout: float = 0.1  # the dropout probability during those passes
    site: DropoutSite = DropoutSite.attention
    # drop the pairs whose estimator's majority over the k passes prefers the rejected response
    noise_filter: bool = True
    uncertainty: UpoUncertainty = UpoUncertainty.bald
    selection: UpoSelection = UpoSelection.sample
    # the share of the pairs surviving the noise filter kept: floor(keep x survivors), at least 1 (official 0.5)
    keep: float = 0.5
    weighting: UpoWeighting = UpoWeighting.none

    def __post_init__(self) -> None:
        require(self.k >= 2, "upo.k", f"an uncertainty needs at least 2 passes, got {self.k}")
        require(0 < self.dropout < 1, "upo.dropout", f"must be in (0, 1), got {self.dropout}")
        require(0 < self.keep <= 1, "upo.keep", f"must be in (0, 1], got {self.keep}")
