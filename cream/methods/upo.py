"""UPO (Uncertainty-enhanced Preference Optimization: "Self-Evolutionary Large Language Models through
Uncertainty-Enhanced Preference Optimization", Wang et al., AAAI 2025, arXiv 2409.11212) as a pair filter,
`pairs.filters=[uncertainty]`, as its official code (github.com/wjn1996/Uncertainty-Preference-Optimization,
`src/alignment/inference/estimating/`) selects pairs.

An estimator predicts each pair `upo.k` times with dropout active (Monte Carlo dropout). Here the estimator is
M_t's implicit reward model: pass k's probability that chosen wins is p_k = preference_probability(
reward_scale(implicit, dpo.beta) x margin_k, 1) = sigmoid(beta x margin_k) (the convention of
`cream.rewards.pairing`), with margin_k = implicit gap + shift(y+) - shift(y-), pass k shifting M_t's log-prob
of each response by its dropout pass minus its dropout-free value (the reward stage's). Then, as the official
code does (by default):
1. the noise filter (`upo.noise_filter`, main.py 339-347): a pair is dropped when the estimator's majority
   prediction disagrees with the reward's label "chosen wins". Pass k votes for chosen when p_k >= 1/2 (the
   official argmax over (p, 1 - p) takes the first class, chosen, on a tie: mc_evaluation.py 56), and a tie of
   votes (k even) keeps the pair (argmax of the vote counts, likewise). Counted in `upo/dropped_noisy`.
2. the uncertainty u (`upo.uncertainty=bald`, sampler.py 16-21): BALD, the entropy of the mean prediction minus
   the mean entropy of the passes, natural logarithms with the official 1e-10 inside each log; at most ln 2.
   `upo.uncertainty=variance` (the population variance of p over the passes, at most 1/4) is the earlier rule.
3. the selection (`upo.selection=sample`, main.py 369 and sampler.py 41-46): floor(`upo.keep` x the survivors)
   pairs drawn from the survivors without replacement, with probability proportional to 1 - u (numpy's
   weighted draw, successive draws among the pairs not yet drawn), from numpy's Generator seeded with the
   iteration's `sampling_seed`: the same pairs on a rerun. `upo.selection=lowest` keeps that many with the
   lowest u instead (ties: the earlier pair), the earlier rule.
4. no weight (`upo.weighting=none`); `upo.weighting=certainty` weights each kept pair by 1 - u / u_max (u_max:
   ln 2 for BALD, 1/4 for the variance), 1 when every pass agrees.
The earlier rule in full: `upo.noise_filter=false upo.uncertainty=variance upo.selection=lowest` (it kept
ceil(keep x n) pairs; floor now, at least one).

Where this differs from the official code, and why:
- the estimator is M_t itself, through its implicit reward; the official code trains a separate estimator, a
  LoRA sequence classifier reading "Response #1 / Response #2" prompts (main.py 76-77, 271-296). Training a
  second model each iteration is outside this loop's budget, and the implicit reward is the self-rewarding
  model's own. A consequence: with `rewarder.name=implicit` the dropout-free estimator agrees with the label
  by construction, so the noise filter drops only pairs whose dropout passes flip the majority (small
  margins); under another rewarder (`judge`) it is a second opinion, as in the paper.
- the dropout sits on the attention probabilities by default (`upo.site=attention`, any model, full weights
  included); the official estimator uses its LoRA adapters' dropout 0.1 (main.py 249, in train mode: 296),
  which is `upo.site=lora` here (needs dpo.lora).
- at least one pair is kept when any survives: the official int(survivors x bald_rate) keeps none of one
  survivor, and this stage refuses to train on no pair. `upo.keep` may be up to 1 (the official asserts
  bald_rate <= 0.5, main.py 239; its default and scripts use 0.5).
- the official draw is unseeded (np.random.choice, sampler.py 46); here it is seeded, the same distribution.
- the candidates are the pairs of `pairs.strategy` (best_worst by default); the official code pairs every two
  of the top-2 and bottom-2 responses by reward (main.py 121-174), `pairs.strategy=ranked` being the closest.
  And its training set mixes the kept ("easy") pairs with 40% of the labelled preference data, 30% of the
  largest-margin pairs and 20% of the high-BALD ("hard") pairs (merge_results.py 89-96); here the kept pairs
  alone train, as every method of this loop trains on self-generated pairs only.
The cost, `upo/forward_passes`, is the response log-probs computed with dropout: k per distinct response of
the pairs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from cream.config import Config
from cream.errors import ConfigError, require
from cream.engine.models import load_tokenizer
from cream.rewards.pairing import preference_probability, reward_scale
from cream.plugins.contracts import FilterResult
from cream.plugins.registry import FILTERS, SETTINGS
from cream.engine.scoring import distinct_count, logprobs_under


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

IMPLICIT = "implicit"  # the estimator's reward, as its rewarder registers
EPS = 1e-10  # inside the official entropies' logarithms (sampler.py 18, 20)
# the largest uncertainty of a binary prediction: BALD <= H(mean) <= ln 2; a variance of values in [0, 1] <= 1/4
U_MAX = {UpoUncertainty.bald: math.log(2), UpoUncertainty.variance: 0.25}


def pass_probabilities(margins: Sequence[float], beta: float) -> list[float]:
    """Each dropout pass's probability that chosen wins, from its implicit reward margin (the convention of
    `cream.rewards.pairing`: the implicit reward's scale is beta, tau 1)."""
    return [preference_probability(reward_scale(IMPLICIT, beta) * m, 1.0) for m in margins]


def majority_prefers_chosen(probabilities: Sequence[float]) -> bool:
    """The noise filter's test (main.py 342-347, mc_evaluation.py 56): the estimator's majority prediction is
    "chosen wins". A pass votes for chosen when p >= 1/2; a tie of votes counts for chosen (both as numpy's
    argmax, which takes the first class, chosen, among equals)."""
    for_chosen = sum(p >= 0.5 for p in probabilities)
    return for_chosen >= len(probabilities) - for_chosen


def _entropy(p: float) -> float:
    """The entropy of the prediction (p, 1 - p) as sampler.py 18 and 20 compute it: -sum q log(q + 1e-10)."""
    return -(p * math.log(p + EPS) + (1 - p) * math.log(1 - p + EPS))


def bald(probabilities: Sequence[float]) -> float:
    """BALD of a binary prediction over the passes (sampler.py 16-21): H(mean p) - mean H(p_k); 0 when the passes
    agree exactly, at most ln 2 (1/2 on average while every pass is sure of opposite answers)."""
    mean = sum(probabilities) / len(probabilities)
    return _entropy(mean) - sum(_entropy(p) for p in probabilities) / len(probabilities)


def variance(probabilities: Sequence[float]) -> float:
    """The population variance of p over the passes (at most 1/4)."""
    mean = sum(probabilities) / len(probabilities)
    return sum((p - mean) ** 2 for p in probabilities) / len(probabilities)


@dataclass(frozen=True)
class Estimate:
    mean: float  # the mean over the passes of p
    uncertainty: float  # BALD or the variance of p, as `upo.uncertainty` says
    agrees: bool  # the passes' majority prefers chosen, as the label does


def estimate(margins: Sequence[float], beta: float, measure: UpoUncertainty) -> Estimate:
    """The estimator's verdict on a pair from its dropout passes' implicit reward margins."""
    p = pass_probabilities(margins, beta)
    u = bald(p) if measure == UpoUncertainty.bald else variance(p)
    return Estimate(sum(p) / len(p), u, majority_prefers_chosen(p))


def kept_count(n: int, keep: float) -> int:
    """How many of n surviving pairs are kept: floor(keep x n) (main.py 369, int()), at least one when n > 0."""
    return 0 if n == 0 else max(1, math.floor(keep * n + 1e-9))  # 0.3 * 10 is 3.0000000000000004: still 3


def _eligible(n: int, eligible: Optional[Sequence[bool]]) -> list[int]:
    return list(range(n)) if eligible is None else [i for i in range(n) if eligible[i]]


def sample_certain(uncertainties: Sequence[float], keep: float, seed: int,
                   eligible: Optional[Sequence[bool]] = None) -> list[bool]:
    """Keep flags for `kept_count` of the eligible pairs, drawn without replacement with probability proportional
    to 1 - u (sampler.py 41-46: max(0, (1 - u) / sum(1 - u)), then numpy's weighted choice without replacement),
    from numpy's Generator seeded with `seed`. A pair not eligible (dropped by the noise filter) is never drawn."""
    candidates = _eligible(len(uncertainties), eligible)
    count = kept_count(len(candidates), keep)
    flags = [False] * len(uncertainties)
    if count == 0:
        return flags
    weights = np.maximum(0.0, 1.0 - np.array([uncertainties[i] for i in candidates], dtype=float))
    drawn = np.random.default_rng(seed).choice(len(candidates), size=count, replace=False, p=weights / weights.sum())
    for j in drawn:
        flags[candidates[int(j)]] = True
    return flags


def most_certain(uncertainties: Sequence[float], keep: float, eligible: Optional[Sequence[bool]] = None) -> list[bool]:
    """Keep flags for `kept_count` of the eligible pairs with the lowest uncertainty (the earlier pair first among
    equal ones): `upo.selection=lowest`."""
    candidates = _eligible(len(uncertainties), eligible)
    kept = set(sorted(candidates, key=lambda i: (uncertainties[i], i))[:kept_count(len(candidates), keep)])
    return [i in kept for i in range(len(uncertainties))]


def certainty_weight(uncertainty: float, u_max: float) -> float:
    """1 - u / u_max, within [0, 1]: 1 when the passes agree exactly, 0 at the largest uncertainty."""
    return min(1.0, max(0.0, 1 - uncertainty / u_max))


@contextmanager
def dropout_active(model: torch.nn.Module, site: DropoutSite, p: float) -> Iterator[None]:
    """`model` in training mode with dropout `p` at `site`; every changed module and the mode are restored after."""
    changed = []  # (owner, attribute, old value)
    for module in model.modules():
        if site == DropoutSite.attention and isinstance(getattr(module, "attention_dropout", None), float):
            changed.append((module, "attention_dropout", module.attention_dropout))
            module.attention_dropout = p
        elif site == DropoutSite.lora and isinstance(getattr(module, "lora_dropout", None), torch.nn.ModuleDict):
            for name, old in module.lora_dropout.items():  # peft keeps nn.Identity at dropout 0: replaced, not edited
                changed.append((module.lora_dropout, name, old))
                module.lora_dropout[name] = torch.nn.Dropout(p)
    if not changed:
        raise ConfigError(f"config key `upo.site`: {site.value}, but the model has no "
                          f"{'attention module with an `attention_dropout`' if site == DropoutSite.attention else 'LoRA adapter'}")
    training = model.training
    model.train()
    try:
        yield
    finally:
        for owner, name, old in changed:
            setattr(owner, name, old)
        model.train(training)


@contextmanager
def seeded_dropout(model: torch.nn.Module, site: DropoutSite, p: float, seed: int) -> Iterator[None]:
    """`dropout_active` with the masks of `seed` (the same on a rerun); the caller's random state is restored after."""
    with torch.random.fork_rng(), dropout_active(model, site, p):
        torch.manual_seed(seed)
        yield


class UncertaintyFilter:
    # what its result reads: its group, the implicit reward's scale, the scoring batches (the dropout masks
    # follow them); the seed is the run's
    settings = ("upo", "dpo.beta", "rewarder.batch_size")

    def rewarders(self, cfg: Config) -> tuple[str, ...]:
        return (IMPLICIT,)

    def check(self, cfg: Config) -> None:
        if cfg.upo.site == DropoutSite.lora and cfg.dpo.lora is None:
            raise ConfigError("config key `upo.site`: lora needs LoRA adapters (dpo.lora is null: full fine-tuning); "
                              "use upo.site=attention")

    def apply(self, pairs, rewards, ctx) -> FilterResult:
        cfg, policy = ctx.cfg, ctx.policy
        sequences = [seq for p in pairs for seq in ((p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids))]
        passes = [logps for _, logps in logprobs_under(
            ctx.pool, [policy], sequences, cfg.rewarder.batch_size, load_tokenizer(policy.base).pad_token_id, "upo",
            passes=cfg.upo.k, within=lambda model: seeded_dropout(model, cfg.upo.site, cfg.upo.dropout, ctx.sampling_seed))]
        upo, estimates = cfg.upo, []
        for m, pair in enumerate(pairs):
            implicit = rewards[pair.id].scores[IMPLICIT]
            gap = implicit[pair.chosen_index] - implicit[pair.rejected_index]
            margins = [gap + (logps[2 * m] - pair.ref_chosen_logps) - (logps[2 * m + 1] - pair.ref_rejected_logps)
                       for logps in passes]
            estimates.append(estimate(margins, cfg.dpo.beta, upo.uncertainty))
        return select(estimates, upo.noise_filter, upo.selection, upo.keep, upo.weighting, upo.uncertainty,
                      ctx.sampling_seed, {"upo/forward_passes": upo.k * distinct_count(sequences)})


def select(estimates: Sequence[Estimate], noise_filter: bool, selection: UpoSelection, keep: float,
           weighting: UpoWeighting, measure: UpoUncertainty, seed: int, metrics: dict) -> FilterResult:
    """The filter's decision from each pair's estimate: the noise filter, then the selection among the
    survivors, the weights, and the metrics (added to `metrics`)."""
    survives = [e.agrees or not noise_filter for e in estimates]
    uncertainties = [e.uncertainty for e in estimates]
    if selection == UpoSelection.sample:
        flags = sample_certain(uncertainties, keep, seed, survives)
    else:
        flags = most_certain(uncertainties, keep, survives)
    weighted = weighting == UpoWeighting.certainty
    weight = [certainty_weight(u, U_MAX[measure]) if weighted else 1.0 for u in uncertainties]
    kept = [i for i, k in enumerate(flags) if k]

    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    return FilterResult(keep=flags, weight=weight, metrics={
        **metrics,
        "upo/dropped_noisy": survives.count(False),
        "upo/kept_share": len(kept) / len(estimates),
        "upo/mean_uncertainty": mean(uncertainties),
        "upo/kept_mean_uncertainty": mean([uncertainties[i] for i in kept]),
        "upo/mean_probability": mean([e.mean for e in estimates]),
        "upo/mean_weight": mean([weight[i] for i in kept]),
    })


FILTERS.register("uncertainty", UncertaintyFilter())
SETTINGS.register("upo", UpoConfig)
