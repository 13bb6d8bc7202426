import numpy as np
import pytest
from scipy import stats

from cream.config.rewards import AgreementMeasure, RegularizerName
from cream.rewards.consistency import (
    kendall_tau,
    measured_consistency,
    prompt_consistency,
    spearman_rho,
    top_order_agreement,
    training_consistency,
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
def test_prompt_consistency_maps_to_unit_interval(measure, expected):
    assert prompt_consistency([1, 2, 3], [1, 3, 2], measure) == pytest.approx(expected)


def test_consistency_stays_with_its_prompt_when_prompts_are_missing():
    current = {"p1": [1, 2, 3], "p2": [3, 2, 1], "p3": [1, 2, 3]}
    previous = {"p1": [1, 2, 3], "p3": [3, 2, 1]}  # p2 was dropped upstream
    measured = measured_consistency(current, previous, AgreementMeasure.kendall)
    assert measured == {"p1": 1.0, "p3": 0.0}


@pytest.mark.parametrize(
    "regularizer, expected",
    [
        (RegularizerName.none, {"a": 1.0, "b": 1.0, "zzz": 1.0}),
        (RegularizerName.cream_avg, {"a": 0.5, "b": 0.5, "zzz": 0.5}),  # the mean of every measured C_j
        (RegularizerName.cream_dyn, {"a": 1.0, "b": 0.0, "zzz": None}),  # its own C_j; None when unmeasured
    ],
)
def test_training_consistency_per_regularizer(regularizer, expected):
    measured = {"a": 1.0, "b": 0.0, "c": 0.5}
    assert training_consistency(measured, ["a", "b", "zzz"], regularizer) == expected
