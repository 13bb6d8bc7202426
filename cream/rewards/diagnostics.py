"""Does the self-reward pick the right response? Measured on prompts whose answer is known.

This is the rewarding bias CREAM claims to reduce: a reward that prefers wrong answers trains the
model towards them. `reward_accuracy` scores one iteration's pairs (the pairs stage logs it);
`diagnose_rewarder` measures a rewarder on held-out prompts with bootstrap intervals, split by the
consistency C of each prompt (cream/stages/diagnose.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from cream.eval.stats import Difference


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def auc_counts(rewards: Sequence[Optional[float]], correct: Sequence[bool]) -> tuple[float, int]:
    """(wins, comparisons) of one prompt: every scored correct response against every scored wrong one,
    a win when it gets the higher reward, half a win on a tie. None rewards take no part."""
    good = [r for r, c in zip(rewards, correct) if c and r is not None]
    bad = [r for r, c in zip(rewards, correct) if not c and r is not None]
    wins = sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad)
    return wins, len(good) * len(bad)


def reward_accuracy(
    pairs: Sequence[tuple[bool, bool]],
    prompts: Sequence[tuple[Sequence[Optional[float]], Sequence[bool]]],
) -> dict[str, float]:
    """Pair and ranking accuracy of a reward against ground-truth correctness.

    pairs: (chosen is correct, rejected is correct) per preference pair.
    prompts: (rewards, correctness) per prompt, one entry per response; None rewards are skipped.
    `auc` is the chance that a correct response outranks a wrong one of the same prompt (ties 1/2).
    """
    counts = [auc_counts(rewards, correct) for rewards, correct in prompts]
    wins, comparisons = sum(w for w, _ in counts), sum(c for _, c in counts)
    return {
        "reward_accuracy/chosen_correct": _share([c for c, _ in pairs]),
        "reward_accuracy/rejected_wrong": _share([not r for _, r in pairs]),
        "reward_accuracy/inverted": _share([r and not c for c, r in pairs]),
        "reward_accuracy/auc": wins / comparisons if comparisons else float("nan"),
        "reward_accuracy/comparisons": int(comparisons),
        "explore/any_correct": _share([any(correct) for _, correct in prompts]),
    }


# --- the diagnosis: rates over prompts with bootstrap intervals, split by consistency -------------

# Every rate is a ratio of two sums over prompts, so resampling prompts resamples both together (the AUC
# pools the comparisons of all prompts, as `reward_accuracy` does, rather than averaging per-prompt AUCs).
COUNTS = ("wins", "comparisons", "pairs", "chosen_correct", "inverted", "any_correct", "prompts",
          "wins_correct_longer", "comparisons_correct_longer", "wins_correct_shorter", "comparisons_correct_shorter")
RATES = {
    "auc": ("wins", "comparisons"),  # a correct response outranks a wrong one of the same prompt
    # the AUC on the comparisons where the correct response is the longer one, and where it is the shorter one: a
    # reward that only prefers length is near 1 on the first and near 0 on the second
    "auc_correct_longer": ("wins_correct_longer", "comparisons_correct_longer"),
    "auc_correct_shorter": ("wins_correct_shorter", "comparisons_correct_shorter"),
    "chosen_correct": ("chosen_correct", "pairs"),  # the pair's chosen response is correct
    "inverted": ("inverted", "pairs"),  # chosen wrong and rejected correct: the pair teaches the wrong answer
    "any_correct": ("any_correct", "prompts"),  # some response is correct: there was a right answer to prefer
}
GROUPS = ("all", "c_high", "c_low")


@dataclass(frozen=True)
class PromptOutcome:
    """One prompt as one rewarder scored it: each response's reward (None: unscored) and correctness, and
    the (chosen, rejected) indices of the pair the loop would train on (None: the prompt gives no pair)."""

    rewards: Sequence[Optional[float]]
    correct: Sequence[bool]
    pair: Optional[tuple[int, int]]
    lengths: Sequence[int] = ()  # each response's length in tokens (empty: unknown, no length-controlled AUC)


@dataclass(frozen=True)
class Estimate:
    """A rate and its bootstrap percentile interval; NaN where no prompt defines it (no pair, no comparison)."""

    value: float
    low: float
    high: float


def prompt_counts(outcome: PromptOutcome) -> list[float]:
    """What one prompt adds to each sum of `COUNTS`."""
    wins, comparisons = auc_counts(outcome.rewards, outcome.correct)
    chosen_ok = inverted = False
    if outcome.pair is not None:
        chosen, rejected = outcome.pair
        chosen_ok = outcome.correct[chosen]
        inverted = outcome.correct[rejected] and not chosen_ok
    by_length = [0.0, 0, 0.0, 0]  # wins and comparisons with the correct response longer, then shorter
    for g, (rg, cg) in enumerate(zip(outcome.rewards, outcome.correct)):
        for b, (rb, cb) in enumerate(zip(outcome.rewards, outcome.correct)):
            if cg and not cb and rg is not None and rb is not None and len(outcome.lengths) and \
                    outcome.lengths[g] != outcome.lengths[b]:
                side = 0 if outcome.lengths[g] > outcome.lengths[b] else 2
                by_length[side] += 1.0 if rg > rb else 0.5 if rg == rb else 0.0
                by_length[side + 1] += 1
    return [wins, comparisons, outcome.pair is not None, chosen_ok, inverted, any(outcome.correct), 1, *by_length]


def consistency_split(consistency: Sequence[Optional[float]]) -> tuple[float, np.ndarray, np.ndarray]:
    """The threshold t that best halves the prompts where C was measured, and the masks of the prompts with
    C >= t (high) and C < t (low). Not the median: C is often tied (a 135M model's C is 1 on most prompts),
    and a median split then leaves one side empty. Among equally balanced thresholds the higher one wins, so
    the high side is the stricter. All C equal: high is empty. A prompt without C is in neither side; with no
    C at all t is NaN and both are empty."""
    measured = np.array([c is not None for c in consistency], dtype=bool)
    values = np.array([np.nan if c is None else c for c in consistency], dtype=float)
    if not measured.any():
        return float("nan"), measured, measured
    distinct = np.unique(values[measured])
    if distinct.size == 1:
        return float(distinct[0]), np.zeros_like(measured), measured
    half = measured.sum() / 2
    threshold = float(min(distinct[1:], key=lambda t: (abs((values[measured] >= t).sum() - half), -t)))
    return threshold, measured & (values >= threshold), measured & (values < threshold)


def _rates(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Each rate from sums over prompts (last axis: `COUNTS`); NaN where its denominator is 0."""
    out = {}
    for name, (numerator, denominator) in RATES.items():
        top, bottom = sums[..., COUNTS.index(numerator)], sums[..., COUNTS.index(denominator)]
        out[name] = np.divide(top, bottom, out=np.full(np.shape(top), np.nan), where=bottom > 0)
    # length controlled: the two sides weigh the same, whatever the share of correct responses that are longer
    out["auc_length_controlled"] = (out["auc_correct_longer"] + out["auc_correct_shorter"]) / 2
    return out


def _interval(draws: np.ndarray, tail: float) -> tuple[float, float]:
    """Percentile interval over the resamples where the rate is defined (NaN, NaN when none is)."""
    defined = draws[np.isfinite(draws)]
    if defined.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(defined, [tail, 100 - tail])
    return float(low), float(high)


def diagnose_rewarder(outcomes: Sequence[PromptOutcome], consistency: Sequence[Optional[float]], resamples: int,
                      seed: int, level: float) -> dict:
    """Every rate of `RATES` with its interval on all prompts and on each side of the split of C
    (`consistency_split`), and the difference high minus low.

    Intervals are percentiles of `resamples` bootstrap resamples of the prompts (with replacement, seeded):
    the same resamples give every group and the difference, and the same seed gives every rewarder the
    same resamples. The threshold is that of the observed prompts; a resample keeps each prompt's side.
    """
    if len(outcomes) != len(consistency):
        raise ValueError(f"{len(outcomes)} prompts but {len(consistency)} consistencies")
    threshold, high, low = consistency_split(consistency)
    masks = {"all": np.ones(len(outcomes), dtype=bool), "c_high": high, "c_low": low}
    counts = np.array([prompt_counts(o) for o in outcomes], dtype=float).reshape(len(outcomes), len(COUNTS))
    n = len(outcomes)
    # weights[b, j]: how often resample b drew prompt j
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples) if n else np.zeros((resamples, 0))
    tail = (1 - level) / 2 * 100
    observed = {g: _rates(counts[m].sum(axis=0)) for g, m in masks.items()}
    drawn = {g: _rates(weights[:, m] @ counts[m]) for g, m in masks.items()}
    result: dict = {"consistency_threshold": threshold}
    for group, mask in masks.items():
        sums = dict(zip(COUNTS, counts[mask].sum(axis=0).astype(int).tolist()))
        result[group] = {
            "prompts": sums["prompts"], "pairs": sums["pairs"], "comparisons": sums["comparisons"],
            **{rate: Estimate(float(observed[group][rate]), *_interval(drawn[group][rate], tail)) for rate in observed[group]},
        }
    result["high_minus_low"] = {
        rate: Difference(float(observed["c_high"][rate] - observed["c_low"][rate]),
                         *_interval(drawn["c_high"][rate] - drawn["c_low"][rate], tail), level)
        for rate in observed["all"]
    }
    return result


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def length_bias(prompts: Sequence[tuple[Sequence[Optional[float]], Sequence[int]]], pairs: Sequence[tuple[int, int]],
                resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Does the reward prefer long responses? Self-rewarding and iterative DPO are known to drift longer.

    `prompts`: per prompt, its responses' rewards (None: unscored) and lengths in tokens; `pairs`: the (chosen,
    rejected) lengths of the pairs trained on. Gives the mean length of chosen and rejected responses, the share
    of pairs whose chosen response is the longer one (and of equal lengths), and Spearman's rank correlation of
    reward and length over every scored response, with a percentile interval from resampling the prompts."""
    scored = [(np.array([r for r in rewards if r is not None], dtype=float),
               np.array([n for r, n in zip(rewards, lengths) if r is not None], dtype=float)) for rewards, lengths in prompts]
    scored = [(r, n) for r, n in scored if r.size]
    out = {"length/chosen_mean": float(np.mean([c for c, _ in pairs])) if pairs else float("nan"),
           "length/rejected_mean": float(np.mean([r for _, r in pairs])) if pairs else float("nan"),
           "length/chosen_longer_share": _share([c > r for c, r in pairs]) if pairs else float("nan"),
           "length/equal_share": _share([c == r for c, r in pairs]) if pairs else float("nan")}
    if not scored:
        return {**out, "length/reward_spearman": float("nan"), "length/reward_spearman_low": float("nan"),
                "length/reward_spearman_high": float("nan")}
    rho = _spearman(np.concatenate([r for r, _ in scored]), np.concatenate([n for _, n in scored]))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        picked = [scored[i] for i in rng.integers(0, len(scored), len(scored))]
        draws.append(_spearman(np.concatenate([r for r, _ in picked]), np.concatenate([n for _, n in picked])))
    draws = np.array([d for d in draws if np.isfinite(d)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail]) if draws.size else (float("nan"), float("nan"))
    return {**out, "length/reward_spearman": rho, "length/reward_spearman_low": float(low),
            "length/reward_spearman_high": float(high)}
