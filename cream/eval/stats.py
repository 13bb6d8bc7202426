"""Uncertainty of benchmark scores: standard errors of a mean score, paired bootstrap differences.

Pure functions over per-item scores (0/1 correctness, or mc2's probability mass in [0, 1]); the
evaluation writes the standard errors into `eval.json`, `analysis.compare` the paired differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def score_stderr(scores: list[float]) -> float:
    """Standard error of the mean of per-item scores: binomial sqrt(p(1-p)/n) when every score is 0 or
    1, else the sample standard error s/sqrt(n) (s with n-1). NaN with no items (or one non-binary)."""
    n = len(scores)
    if n == 0:
        return math.nan
    if all(s in (0, 1) for s in scores):
        p = sum(scores) / n
        return math.sqrt(p * (1 - p) / n)
    if n < 2:
        return math.nan
    mean = sum(scores) / n
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n)


def average_stderr(stderrs: list[float]) -> float:
    """Standard error of the unweighted mean of independent task scores: sqrt(sum se_i^2) / k."""
    return math.sqrt(sum(se * se for se in stderrs)) / len(stderrs) if stderrs else math.nan


@dataclass(frozen=True)
class Difference:
    """A - B on the same items: the observed difference of means and its bootstrap confidence interval."""

    diff: float
    low: float
    high: float
    level: float = 0.95

    @property
    def within_noise(self) -> bool:
        """The interval contains 0: no evidence either way."""
        return self.low <= 0 <= self.high

    def describe(self, a: str, b: str, scale: float = 1.0) -> str:
        """E.g. `CREAM - SRLM: +1.2 (95% CI -0.4 to +2.8), within the noise`; a difference whose interval
        excludes 0 names the higher one."""
        verdict = "within the noise" if self.within_noise else f"{a if self.diff > 0 else b} higher"
        return (f"{a} - {b}: {self.diff * scale:+.1f} ({self.level:.0%} CI {self.low * scale:+.1f} to "
                f"{self.high * scale:+.1f}), {verdict}")


def paired_bootstrap(a: dict[str, list[float]], b: dict[str, list[float]], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict[str, Difference]:
    """Per task and on the unweighted average over tasks ("average"): mean(a) - mean(b) on the same items
    (a[task][i] and b[task][i] score the same item), with a percentile interval from resampling the items
    of each task with replacement, `resamples` times, seeded. Tasks are resampled independently and the
    average's interval comes from the same resamples."""
    if set(a) != set(b):
        raise ValueError(f"the two runs have different tasks: {sorted(a)} vs {sorted(b)}")
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    result, draws = {}, []
    for task in sorted(a):
        if len(a[task]) != len(b[task]) or not a[task]:
            raise ValueError(f"task {task}: {len(a[task])} vs {len(b[task])} items; a paired comparison needs the same items")
        diffs = np.asarray(a[task], dtype=float) - np.asarray(b[task], dtype=float)
        n, means = len(diffs), np.empty(resamples)
        for start in range(0, resamples, 1000):  # bounded memory: 1000 resamples x n indices at a time
            stop = min(start + 1000, resamples)
            means[start:stop] = diffs[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
        draws.append(means)
        low, high = np.percentile(means, [tail, 100 - tail])
        result[task] = Difference(float(diffs.mean()), float(low), float(high), level)
    average = np.mean(draws, axis=0)
    low, high = np.percentile(average, [tail, 100 - tail])
    result["average"] = Difference(float(np.mean([r.diff for r in result.values()])), float(low), float(high), level)
    return result


def seed_bootstrap(a: list[dict[str, list[float]]], b: list[dict[str, list[float]]], paired_seeds: bool,
                   resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict[str, Difference]:
    """A - B with an interval that holds the training seed's variance as well as the items': a hierarchical bootstrap.

    `a[s][task][i]` is method A's score of item i of a task in its run of seed s (likewise `b`); every run of both
    methods scored the same items. Each resample draws the seeds with replacement (with `paired_seeds`, the same
    draws for A and B: their runs share seeds and data shards, so run k of A pairs with run k of B), then, within each
    resample, the items with replacement (the same items for every run: an item's difficulty cancels in A - B). The difference of the
    resampled means gives a percentile interval per task, and the unweighted average over tasks ("average") is taken
    on the same draws. With one seed per method the interval covers the item noise only."""
    if not a or not b:
        raise ValueError("each method needs at least one run")
    tasks = sorted(a[0])
    if any(sorted(run) != tasks for run in a + b):
        raise ValueError(f"the runs have different tasks: {[sorted(run) for run in a + b]}")
    if paired_seeds and len(a) != len(b):
        raise ValueError(f"paired seeds need as many runs of each method: {len(a)} vs {len(b)}")
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    result, draws = {}, []
    for task in tasks:
        sizes = {len(run[task]) for run in a + b}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"task {task}: runs with {sorted(sizes)} items; a paired comparison needs the same items")
        scores_a = np.asarray([run[task] for run in a], dtype=float)  # runs x items
        scores_b = np.asarray([run[task] for run in b], dtype=float)
        means = np.empty(resamples)
        for start in range(0, resamples, 500):  # bounded memory: 500 resamples at a time
            count = min(500, resamples - start)
            means[start:start + count] = _resampled_difference(scores_a, scores_b, paired_seeds, count, rng)
        draws.append(means)
        low, high = np.percentile(means, [tail, 100 - tail])
        result[task] = Difference(float(scores_a.mean() - scores_b.mean()), float(low), float(high), level)
    low, high = np.percentile(np.mean(draws, axis=0), [tail, 100 - tail])
    result["average"] = Difference(float(np.mean([r.diff for r in result.values()])), float(low), float(high), level)
    return result


def _resampled_difference(scores_a: np.ndarray, scores_b: np.ndarray, paired_seeds: bool, count: int,
                          rng: np.random.Generator) -> np.ndarray:
    """`count` bootstrap draws of mean(A) - mean(B): the runs, and the items, one draw of them for every run of the
    resample (the items are the same in every run: an item's difficulty cancels in the difference)."""
    items = rng.integers(0, scores_a.shape[1], size=(count, 1, scores_a.shape[1]))

    def mean(scores: np.ndarray, runs: np.ndarray) -> np.ndarray:
        return scores[runs[:, :, None], items].mean(axis=(1, 2))

    def runs(n: int) -> np.ndarray:
        return rng.integers(0, n, size=(count, n))

    if paired_seeds:
        return mean(scores_a - scores_b, runs(len(scores_a)))
    return mean(scores_a, runs(len(scores_a))) - mean(scores_b, runs(len(scores_b)))
