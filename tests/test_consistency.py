import numpy as np
import pytest
from scipy import stats

from cream.config import AgreementMeasure, RegularizerName
from cream.consistency import (
    consistency_rate,
    consistency_rates,
    kendall_tau,
    pair_confidence,
    spearman_rho,
    top_order_agreement,
)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1, 2, 3], [1, 2, 3], 1.0),  # identical order
        ([1, 2, 3], [3, 2, 1], -1.0),  # reversed
        ([1, 2, 3], [1, 3, 2], 1 / 3),  # pairs (0,1)+ (0,2)+ (1,2)-: (2-1)/3
        ([1, 2, 3, 4], [2, 1, 4, 3], 2 / 6),  # 4 concordant, 2 discordant
        ([1, 1, 2], [1, 2, 3], 2 / 3),  # tie in a: pair (0,1) counts as neither: (2-0)/3
        ([1, 1, 1], [1, 2, 3], 0.0),  # all tied: no evidence
        ([5, 5, 1, 1], [1, 2, 3, 4], -4 / 6),  # 2 tied pairs, 4 discordant
    ],
)
def test_kendall_tau_hand_computed(a, b, expected):
    assert kendall_tau(a, b) == pytest.approx(expected)


def test_kendall_tau_matches_scipy_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.normal(size=6), rng.normal(size=6)
        assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1, 2, 3], [10, 20, 30], 1.0),
        ([1, 2, 3], [30, 20, 10], -1.0),
        ([1, 2, 3, 4], [1, 2, 4, 3], 0.8),  # 1 - 6*2/(4*15)
        ([1, 1, 1], [1, 2, 3], 0.0),  # a constant ranking agrees with nothing
    ],
)
def test_spearman_hand_computed(a, b, expected):
    assert spearman_rho(a, b) == pytest.approx(expected)


def test_spearman_with_ties_matches_scipy():
    a, b = [1, 2, 2, 4, 5], [2, 1, 3, 3, 5]
    assert spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0.1, 0.9, 0.5], [0.2, 0.8, 0.1], 0.0),  # same best (1), different worst (0 vs 2)
        ([0.1, 0.9, 0.5], [0.0, 0.7, 0.3], 1.0),  # same best and worst
        # best and worst are in the middle: positions 0 and N-1 (the published code's rule) would differ
        ([0.5, 0.9, 0.1, 0.6], [0.6, 0.8, 0.2, 0.5], 1.0),
        ([0.5, 0.9, 0.1, 0.6], [0.5, 0.1, 0.9, 0.6], 0.0),
    ],
)
def test_top_order_uses_best_and_worst_responses(a, b, expected):
    assert top_order_agreement(a, b) == expected


@pytest.mark.parametrize(
    "measure, expected",
    [(AgreementMeasure.kendall, (1 / 3 + 1) / 2), (AgreementMeasure.spearman, (0.5 + 1) / 2), (AgreementMeasure.toporder, 0.0)],
)
def test_consistency_rate_maps_to_unit_interval(measure, expected):
    assert consistency_rate([1, 2, 3], [1, 3, 2], measure) == pytest.approx(expected)


def test_rates_stay_with_their_prompt_when_prompts_are_missing():
    current = {"p1": [1, 2, 3], "p2": [3, 2, 1], "p3": [1, 2, 3]}
    previous = {"p1": [1, 2, 3], "p3": [3, 2, 1]}  # p2 was dropped upstream
    rates = consistency_rates(current, previous, AgreementMeasure.kendall)
    assert rates == {"p1": 1.0, "p3": 0.0}


def test_pair_confidence_per_regularizer():
    rates = {"a": 1.0, "b": 0.0, "c": 0.5}
    assert pair_confidence(rates, ["a", "b"], RegularizerName.none) == {"a": 1.0, "b": 1.0}
    assert pair_confidence(rates, ["a", "b"], RegularizerName.cream_avg) == {"a": 0.5, "b": 0.5}
    assert pair_confidence(rates, ["b", "a"], RegularizerName.cream_dyn) == {"b": 0.0, "a": 1.0}
    with pytest.raises(KeyError, match="zzz"):
        pair_confidence(rates, ["zzz"], RegularizerName.cream_dyn)
