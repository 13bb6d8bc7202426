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
