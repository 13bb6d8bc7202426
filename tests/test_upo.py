"""UPO against its official code (github.com/wjn1996/Uncertainty-Preference-Optimization, commit 29a1c21,
under src/alignment/inference/estimating/): every expected value below is computed by hand from the official
formula cited beside it, never by the code under test.

- mc_evaluation.py 56: the estimator's prediction is the majority (argmax of the vote counts) of the passes'
  argmax over (P(chosen), P(rejected)); numpy's argmax takes the first class, chosen, among equals.
- main.py 339-347: a pair is kept for sampling only when that prediction is 0, "chosen wins" (the label).
- sampler.py 16-21: BALD = H(mean_k p_k) - mean_k H(p_k), H(p) = -sum_c p_c log(p_c + 1e-10).
- sampler.py 41-46: np.random.choice(n, num, p = max(0, (1 - BALD) / sum(1 - BALD)), replace=False).
- main.py 369: num = int(len(survivors) * bald_rate).
"""

import math
from types import SimpleNamespace

import pytest

from cream.methods.upo import DropoutSite, UpoConfig, UpoSelection, UpoUncertainty, UpoWeighting
from cream.methods import upo
from cream.methods.upo import (bald, certainty_weight, dropout_active, estimate, kept_count, majority_prefers_chosen,
                               most_certain, pass_probabilities, sample_certain, variance)
from cream.plugins.registry import FILTERS
from cream.runs.rows import Pair, RewardRow

LN2 = 0.6931471805599453


def H(p):  # the binary entropy, by hand (the official 1e-10 moves it by < 1e-9)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


# ---- the uncertainty of a pair ------------------------------------------------------------------------------

# sampler.py 16-21 by hand:
# [.99, .90]: H(.945) = 0.2129822, H(.99) = 0.0560015, H(.90) = 0.3250830 -> 0.2129822 - 0.1905423 = 0.0224399
# [.55, .45]: H(.5) = ln 2 = 0.6931472, H(.55) = H(.45) = 0.6881388 -> 0.0050084
# variance (population): [.99, .90]: .045^2 = 0.002025; [.55, .45]: .05^2 = 0.0025
CONFIDENT_BUT_SPREAD, UNSURE_BUT_STEADY = [0.99, 0.90], [0.55, 0.45]


@pytest.mark.parametrize("probabilities, bald_value, variance_value", [
    (CONFIDENT_BUT_SPREAD, 0.022439943, 0.002025),
    (UNSURE_BUT_STEADY, 0.005008367, 0.0025),
    ([0.7, 0.7, 0.7], 0.0, 0.0),  # the passes agree exactly: no epistemic uncertainty
    ([1.0, 0.0], LN2, 0.25),  # each pass sure of the opposite answer: both measures at their largest
])
def test_bald_and_variance_by_hand(probabilities, bald_value, variance_value):
    assert bald(probabilities) == pytest.approx(bald_value, abs=1e-8)
    assert variance(probabilities) == pytest.approx(variance_value, abs=1e-12)


@pytest.mark.parametrize("measure, kept", [(UpoUncertainty.bald, 1), (UpoUncertainty.variance, 0)])
def test_bald_and_variance_keep_different_pairs(measure, kept):
    """The issue's case: BALD (official) keeps the steady unsure pair, 0.0050 < 0.0224; the variance keeps the
    spread confident one, 0.002025 < 0.0025 (margins giving exactly those p at beta 1: logit(p))."""
    logit = lambda p: math.log(p / (1 - p))
    estimates = [estimate([logit(p) for p in ps], 1.0, measure) for ps in (CONFIDENT_BUT_SPREAD, UNSURE_BUT_STEADY)]
    assert most_certain([e.uncertainty for e in estimates], 0.5) == [i == kept for i in range(2)]


@pytest.mark.parametrize("margins, beta, probabilities", [
    ([10.0, 5.0], 0.1, [0.7310585786, 0.6224593312]),  # sigmoid(0.1 x 10), sigmoid(0.1 x 5)
    ([-30.0], 0.1, [0.0474258732]),  # sigmoid(-3)
    ([20.0], 0.1, [0.8807970780]),  # the implicit reward's own Bradley-Terry probability: beta, no other tau
])
def test_each_pass_probability_is_sigmoid_of_beta_times_its_margin(margins, beta, probabilities):
    assert pass_probabilities(margins, beta) == pytest.approx(probabilities)


# ---- the noise filter (main.py 339-347, the majority as mc_evaluation.py 56) ---------------------------------


@pytest.mark.parametrize("probabilities, kept", [
    ([0.047, 0.052, 0.043], False),  # sigmoid(0.1 x [-30, -29, -31]): every pass prefers rejected
    ([0.9, 0.8, 0.2], True),  # 2 of 3 for chosen
    ([0.9, 0.2, 0.2], False),  # 1 of 3
    ([0.6, 0.4], True),  # a tie of votes: argmax([1, 1]) = 0, chosen: kept
    ([0.5, 0.4, 0.4], False),  # p = 1/2 votes chosen (argmax([.5, .5]) = 0), still 1 of 3
    ([0.5, 0.4], True),  # ... and makes a tie here
])
def test_the_majority_prediction_against_the_label(probabilities, kept):
    assert majority_prefers_chosen(probabilities) == kept


def test_a_confidently_reversed_pair_is_dropped_whatever_its_certainty():
    """The issue's case: margins around -30 at beta 0.1 give p about 0.047 on every pass, a tiny uncertainty
    (variance 5.5e-5 scored it 0.9998 certain); the official code drops it as noise before any sampling."""
    reversed_pair = estimate([-30.0, -29.0, -31.0, -30.5], 0.1, UpoUncertainty.bald)
    correct_pair = estimate([5.0, 15.0, -2.0, 9.0], 0.1, UpoUncertainty.bald)  # 3 of 4 prefer chosen
    assert not reversed_pair.agrees and correct_pair.agrees
    assert reversed_pair.uncertainty < correct_pair.uncertainty  # more certain, yet dropped
    for seed in range(20):
        assert sample_certain([reversed_pair.uncertainty, correct_pair.uncertainty], 1.0, seed,
                              [reversed_pair.agrees, correct_pair.agrees]) == [False, True]


# ---- the selection -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, keep, count", [
    (4, 0.5, 2), (5, 0.5, 2),  # int(5 x 0.5) = 2 (main.py 369), not 3
    (10, 0.3, 3),  # 0.3 x 10 is 3.0000000000000004 in floating point: still 3
    (1, 0.5, 1),  # the official int(0.5) = 0; at least one here, the stage refuses an empty set
    (0, 0.5, 0), (3, 1.0, 3),
])
def test_kept_count_is_the_official_floor_of_the_survivors(n, keep, count):
    assert kept_count(n, keep) == count


def test_sampling_is_seeded_and_never_draws_a_dropped_pair():
    uncertainties = [0.0, 0.2, 0.5, 0.1, 0.3, 0.0]
    eligible = [True, True, True, False, True, False]  # 3 and 5 dropped by the noise filter, the most certain
    draws = {seed: sample_certain(uncertainties, 0.5, seed, eligible) for seed in range(50)}
    for seed, flags in draws.items():
        assert flags == sample_certain(uncertainties, 0.5, seed, eligible)  # the same on a rerun
        assert sum(flags) == 2 and not flags[3] and not flags[5]  # int(4 x 0.5) of the 4 survivors
    assert len({tuple(f) for f in draws.values()}) > 1  # a draw, not a ranking


# Inclusion probabilities of numpy's weighted draw without replacement (successive draws, each among the pairs
# not yet drawn, proportional to the weights), by hand. u = [0, .4, .6] -> 1 - u = [1, .6, .4] -> p = [.5, .3, .2].
# One draw: [.5, .3, .2]. Two draws: P(i left out) = sum over orders of the other two, e.g. pair 0 left out:
# .3 x .2/.7 + .2 x .3/.8 = .1607143, so P(in) = [.8392857, .675, .4857143] (1 - .1607143, 1 - .325, 1 - .5142857).
@pytest.mark.parametrize("keep, inclusion", [(0.5, [0.5, 0.3, 0.2]), (2 / 3, [0.8392857, 0.675, 0.4857143])])
def test_sampling_frequencies_follow_one_minus_bald(keep, inclusion):
    uncertainties, eligible, runs = [0.0, 0.4, 0.6, 0.0], [True, True, True, False], 4000
    counts = [0] * 4
    for seed in range(runs):
        for i, kept in enumerate(sample_certain(uncertainties, keep, seed, eligible)):
            counts[i] += kept
    assert counts[3] == 0
    for i, p in enumerate(inclusion):  # the standard error is at most 0.008: 0.04 is 5 of them
        assert counts[i] / runs == pytest.approx(p, abs=0.04), i


@pytest.mark.parametrize("uncertainties, keep, eligible, flags", [
    ([0.3, 0.1, 0.2, 0.1], 0.5, None, [False, True, False, True]),
    ([0.3, 0.1, 0.2, 0.1], 0.25, None, [False, True, False, False]),  # equal: the earlier pair
    ([0.0] * 10, 0.3, None, [True] * 3 + [False] * 7),
    ([0.2, 0.1, 0.3], 0.1, None, [False, True, False]),  # at least one
    ([0.2, 0.1, 0.3, 0.0], 0.5, [True, True, True, False], [False, True, False, False]),  # 3 survivors: int(1.5)
])
def test_lowest_keeps_the_least_uncertain_survivors(uncertainties, keep, eligible, flags):
    assert most_certain(uncertainties, keep, eligible) == flags


@pytest.mark.parametrize("u, u_max, weight", [(0.0, LN2, 1.0), (LN2, LN2, 0.0), (0.0050083668, LN2, 0.9927750),
                                              (0.25, 0.25, 0.0), (0.0533880668, 0.25, 0.7864477)])
def test_certainty_weight_by_hand(u, u_max, weight):  # 1 - u / u_max: 1 - 0.0050084 / 0.6931472, 1 - 4 x 0.0533881
    assert certainty_weight(u, u_max) == pytest.approx(weight)


# ---- the filter on pairs -------------------------------------------------------------------------------------


def _pair(i, chosen=0, rejected=1):
    return Pair(id=f"p{i}", task="gsm8k", answer="1", prompt="q", chosen="a", rejected="b", chosen_reward=1.0,
                rejected_reward=0.0, consistency=1.0, chosen_correct=False, rejected_correct=False, prompt_ids=[1],
                chosen_ids=[2, i], rejected_ids=[3, i], ref_chosen_logps=-1.0, ref_rejected_logps=-1.0,
                chosen_index=chosen, rejected_index=rejected)


# Four pairs, four dropout passes, beta 0.1; each pass's margin = implicit gap + (logp_c + 1) - (logp_r + 1).
IMPLICIT = [[30.0, 0.0], [0.0, 30.0], [0.0, 0.0], [20.0, 0.0]]  # gaps 30, -30, 0, 20
SHIFTS = [[0.0] * 4, [1.0, -1.0, 0.5, 0.0], [20.0, -20.0, 20.0, -20.0], [0.0] * 4]  # of chosen, per pass
# pair 0: p = sigmoid(3) on every pass: BALD 0, kept by the noise filter
# pair 1: margins -29, -31, -29.5, -30: p about 0.05 on every pass: dropped as noise (BALD about 1e-4)
# pair 2: margins +-20: p = .8808, .1192 alternating, 2 votes of 4: a tie, kept; BALD = ln 2 - H(.8808) = 0.3262
# pair 3: p = sigmoid(2) on every pass: BALD 0
BALD_2 = LN2 - H(0.8807970779778823)


def _run(monkeypatch, **settings):
    planned = [[logp for m in range(4) for logp in (-1.0 + SHIFTS[m][k], -1.0)] for k in range(4)]
    monkeypatch.setattr(upo, "logprobs_under", lambda *a, **kw: iter([("m1", p) for p in planned]))
    monkeypatch.setattr(upo, "load_tokenizer", lambda base: SimpleNamespace(pad_token_id=0))
    cfg = SimpleNamespace(upo=UpoConfig(k=4, **settings), dpo=SimpleNamespace(beta=0.1),
                          rewarder=SimpleNamespace(batch_size=8))
    rows = {f"p{i}": RewardRow(f"p{i}", "gsm8k", "1", [0.0, 0.0], None, [False, False], {}, [1, 1],
                               scores={"implicit": implicit}) for i, implicit in enumerate(IMPLICIT)}
    ctx = SimpleNamespace(cfg=cfg, pool=None, policy=SimpleNamespace(name="m1", base="tiny"), sampling_seed=3)
    return FILTERS.get("uncertainty").apply([_pair(i) for i in range(4)], rows, ctx)


def test_the_filter_drops_the_reversed_pair_and_keeps_the_certain_ones(monkeypatch):
    result = _run(monkeypatch, keep=2 / 3, selection=UpoSelection.lowest, weighting=UpoWeighting.certainty)
    assert result.keep == [True, False, False, True]  # 3 survivors, int(3 x 2/3) = 2, the BALD-0 pairs
    assert result.weight[0] == result.weight[3] == 1.0 and result.weight[2] == pytest.approx(1 - BALD_2 / LN2, abs=1e-6)
    m = result.metrics
    assert m["upo/dropped_noisy"] == 1 and m["upo/kept_share"] == 0.5 and m["upo/forward_passes"] == 4 * 8
    assert m["upo/kept_mean_uncertainty"] == pytest.approx(0.0, abs=1e-9)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    reversed_p = [sigmoid(0.1 * m) for m in (-29, -31, -29.5, -30)]
    bald_1 = H(sum(reversed_p) / 4) - sum(H(q) for q in reversed_p) / 4  # sampler.py 16-21 by hand
    assert m["upo/mean_uncertainty"] == pytest.approx((BALD_2 + bald_1) / 4)


def test_the_official_default_samples_among_the_survivors_seeded(monkeypatch):
    first = _run(monkeypatch)  # noise filter, BALD, sample, keep 0.5: int(3 x 0.5) = 1 of pairs 0, 2, 3
    assert first.keep == _run(monkeypatch).keep and sum(first.keep) == 1 and not first.keep[1]
    assert first.weight == [1.0] * 4 and first.metrics["upo/dropped_noisy"] == 1


def test_the_earlier_rule_stays_available(monkeypatch):
    # no noise filter, the variance, the lowest: the reversed pair's p varies least after the exact ones
    result = _run(monkeypatch, noise_filter=False, uncertainty=UpoUncertainty.variance, selection=UpoSelection.lowest,
                  keep=0.75)
    assert result.keep == [True, True, False, True] and result.metrics["upo/dropped_noisy"] == 0


def test_dropout_makes_the_passes_differ_and_is_undone(tiny_model_dir):
    import torch

    from cream.config import ModelConfig
    from cream.config.engine import ModelSource
    from cream.engine.models import load_base_model, load_tokenizer
    from cream.engine.scoring import sequence_logprobs
    from cream.errors import ConfigError

    model = load_base_model(str(tiny_model_dir), ModelConfig(name="tiny", source=ModelSource.tiny)).eval()
    pad = load_tokenizer(str(tiny_model_dir)).pad_token_id
    sequences = [([1, 2, 3, 4], [5, 6, 7]), ([1, 2, 3, 4], [8, 9])]
    before = sequence_logprobs(model, sequences, 8, pad, desc="before")
    with dropout_active(model, DropoutSite.attention, 0.5):
        torch.manual_seed(0)
        passes = [sequence_logprobs(model, sequences, 8, pad, desc="pass") for _ in range(2)]
        assert model.training
    assert passes[0] != passes[1] and passes[0] != before
    assert not model.training and sequence_logprobs(model, sequences, 8, pad, desc="after") == before
    with pytest.raises(ConfigError, match=r"`upo\.site`: lora, but the model has no LoRA adapter"):
        with dropout_active(model, DropoutSite.lora, 0.5):
            pass
