"""Which responses of a prompt make its preference pairs, and how surely each pair's chosen response wins.

The pairing strategies (`pairs.strategy`, registered in `cream.plugins.registry.PAIRINGS`) order the scored
responses by the current model's reward and take
- `best_worst`: chosen = argmax, rejected = argmin (CREAM, SRLM; the default);
- `ranked`: every pair of responses with different rewards (OSP);
- `adjacent`: the pairs of neighbouring ranks with different rewards (OSP's cheaper variant).
A prompt with no preference is dropped, and why is counted. A reward gap becomes a preference probability
sigmoid(gap / tau) (Bradley-Terry; `pairs.tau`): a pair's strength p, and a response's win rate.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Optional, Sequence

from cream.plugins.contracts import Choice, PairStats
from cream.plugins.registry import PAIRINGS


# (responses ordered best first, the rewards) -> the (better, worse) index pairs a strategy proposes
Candidates = Callable[[list[int], Sequence[float]], list[tuple[int, int]]]


def _pairs(rewards: Sequence[Optional[float]], texts: Sequence[str], stats: PairStats, candidates: Candidates) -> list[Choice]:
    """The pairs `candidates` proposes that carry a preference: different rewards, different texts.

    Responses scored None (no valid judgement) take no part. Among equal rewards the first index ranks first.
    """
    scored = [i for i, r in enumerate(rewards) if r is not None]
    if len(scored) < 2:
        stats.dropped_unscored += 1
        return []
    order = sorted(scored, key=lambda i: (-rewards[i], i))
    if rewards[order[0]] == rewards[order[-1]]:
        stats.dropped_all_equal += 1
        return []
    pairs = [Choice(i, j) for i, j in candidates(order, rewards)
             if rewards[i] > rewards[j] and texts[i].strip() != texts[j].strip()]
    if not pairs:
        stats.dropped_identical_text += 1
        return []
    stats.kept += 1
    return pairs


def best_worst(rewards: Sequence[Optional[float]], texts: Sequence[str], stats: PairStats) -> list[Choice]:
    """The best and the worst response (the first index among equal rewards, at either end)."""
    return _pairs(rewards, texts, stats, lambda order, r: [(order[0], min(order, key=lambda i: (r[i], i)))])


def ranked(rewards: Sequence[Optional[float]], texts: Sequence[str], stats: PairStats) -> list[Choice]:
    """Every pair of responses, the better one chosen: N(N-1)/2 without ties."""
    return _pairs(rewards, texts, stats, lambda order, r: list(itertools.combinations(order, 2)))


def adjacent(rewards: Sequence[Optional[float]], texts: Sequence[str], stats: PairStats) -> list[Choice]:
    """Each response against the next in the reward order: N-1 pairs without ties."""
    return _pairs(rewards, texts, stats, lambda order, r: list(zip(order, order[1:])))


def choose_pair(rewards: Sequence[Optional[float]], texts: Sequence[str], stats: PairStats) -> Optional[Choice]:
    """The `best_worst` pair, or None (counted in `stats`) when the prompt has no preference."""
    pairs = best_worst(rewards, texts, stats)
    return pairs[0] if pairs else None


def reward_scale(rewarder: str, beta: float) -> float:
    """The factor that turns a gap of `rewarder`'s rewards into its Bradley-Terry logit: `dpo.beta` for the
    implicit reward (DPO's implicit reward model is beta x (log pi_t - log pi_ref), while the reward stage keeps
    the log-ratio itself), 1 for every other rewarder (its scores are already on the scale they are compared on).

    The one convention of every plug-in: P(a beats b) = preference_probability(reward_scale(R, beta) x (r_a - r_b),
    tau), so tau = 1 is the reward model's own Bradley-Terry probability and tau a temperature on top of it."""
    return beta if rewarder == "implicit" else 1.0


def preference_probability(gap: float, tau: Optional[float]) -> float:
    """P(a beats b) from a Bradley-Terry logit gap (`reward_scale` x (r_a - r_b)): sigmoid(gap / tau); tau None:
    a hard preference, 1, 1/2 on a tie, 0."""
    if tau is None:
        return 1.0 if gap > 0 else 0.0 if gap < 0 else 0.5
    return 1 / (1 + math.exp(-gap / tau)) if gap >= 0 else math.exp(gap / tau) / (1 + math.exp(gap / tau))


for _name, _strategy in (("best_worst", best_worst), ("ranked", ranked), ("adjacent", adjacent)):
    PAIRINGS.register(_name, _strategy)
