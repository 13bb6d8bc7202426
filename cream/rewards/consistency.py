"""The maths of CREAM's regularizer: agreement of two rankings, the consistency C_j, the C each pair trains with.

Everything is keyed by prompt id: a value never moves to another prompt when some prompts are
dropped (mistake 1 of the published code).

Tie rule (Kendall): a pair of responses tied in either ranking counts as neither concordant nor
discordant, and the denominator stays N(N-1)/2 (tau-a). So tau is always defined, ties pull it
towards 0, and a ranking that is all ties gives tau = 0, C = 0.5: no evidence either way.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from cream.config.rewards import AgreementMeasure, RegularizerName


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """(concordant - discordant) / (N(N-1)/2); ties count as neither (see module docstring)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two rankings of the same N >= 2 responses, got {x.size} and {y.size}")
    i, j = np.triu_indices(x.size, k=1)
    signs = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return float(signs.sum() / len(i))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size, dtype=float)
    for v in np.unique(values):  # tied values share their mean rank
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation of average ranks; 0 when either ranking is constant (no order to agree with)."""
    x, y = _average_ranks(np.asarray(a, dtype=float)), _average_ranks(np.asarray(b, dtype=float))
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def top_order_agreement(a: Sequence[float], b: Sequence[float]) -> float:
    """1 when both rankings pick the same best and the same worst response (first index on ties), else 0.

    Compares the arg-best and arg-worst responses, not positions 0 and N-1 (mistake 2 of the published code).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    same = np.argmax(x) == np.argmax(y) and np.argmin(x) == np.argmin(y)
    return float(same)


def prompt_consistency(current: Sequence[float], previous: Sequence[float], measure: AgreementMeasure) -> float:
    """C_j: the agreement of one prompt's two rankings mapped to [0, 1]."""
    if measure == AgreementMeasure.kendall:
        return (kendall_tau(current, previous) + 1) / 2
    if measure == AgreementMeasure.spearman:
        return (spearman_rho(current, previous) + 1) / 2
    return top_order_agreement(current, previous)


def measured_consistency(
    current: Mapping[str, Sequence[Optional[float]]],
    previous: Mapping[str, Sequence[Optional[float]]],
    measure: AgreementMeasure,
) -> dict[str, float]:
    """C_j for every prompt id both rankings score, over the responses both score (None = unscored)."""
    measured = {}
    for pid, ours in current.items():
        if pid not in previous:
            continue
        both = [(a, b) for a, b in zip(ours, previous[pid]) if a is not None and b is not None]
        if len(both) >= 2:
            measured[pid] = prompt_consistency([a for a, _ in both], [b for _, b in both], measure)
    return measured


def training_consistency(
    measured: Mapping[str, float], prompt_ids: Sequence[str], regularizer: RegularizerName
) -> dict[str, Optional[float]]:
    """The C each prompt's pair trains with: 1 (plain DPO), the iteration's mean, or its own C_j
    (None when its C_j could not be measured)."""
    if regularizer == RegularizerName.none:
        return {pid: 1.0 for pid in prompt_ids}
    if regularizer == RegularizerName.cream_avg:
        mean = float(np.mean(list(measured.values()))) if measured else float("nan")
        return {pid: mean for pid in prompt_ids}
    return {pid: measured.get(pid) for pid in prompt_ids}
