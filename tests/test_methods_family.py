"""UPO, B-STaR and the self-reference judge: their maths by hand, their configuration, and each one through the
config on the tiny model, against CREAM on the same samples and rewards."""

import json
import math

import pytest
import torch
from hydra.errors import ConfigCompositionException

from cream import preflight
from cream.config import ModelConfig
from cream.config.engine import ModelSource
from cream.config.plugins import DropoutSite
from cream.errors import ConfigError
from cream.methods.bstar import balance_score, best_setting, mean_balance, standardized
from cream.methods.self_reference import Verdict, judge_text, pair_preference, response_scores, verdict
from cream.methods.upo import certainty_weight, dropout_active, mc_preference, most_certain
from cream.plugins.registry import ADAPTIVE_SAMPLERS, FILTERS, REWARDERS
from tests.conftest import FIXTURE_DATA
from tests.test_methods import _jsonl, _key, _load, _loss_inputs, _metrics, _stage, run_methods

S1 = 0.7310585786300049  # sigmoid(1)


def test_the_three_plug_ins_are_registered_by_their_modules():
    assert "self_reference" in REWARDERS.names()
    assert {"uncertainty", "reward_threshold"} <= set(FILTERS.names())
    assert ADAPTIVE_SAMPLERS.names() == ["bstar", "none"]


# ---- self-reference judge -----------------------------------------------------------------------------------


@pytest.mark.parametrize("p_a, p_b, first_wins, mass", [(0.6, 0.2, 0.75, 0.8), (0.1, 0.3, 0.25, 0.4), (0.5, 0.5, 0.5, 1.0),
                                                        (1e-5, 3e-5, 0.25, 4e-5)])
def test_verdict_normalizes_the_two_verdict_tokens(p_a, p_b, first_wins, mass):
    v = verdict(math.log(p_a), math.log(p_b))
    assert v.first_wins == pytest.approx(first_wins) and v.mass == pytest.approx(mass)


@pytest.mark.parametrize("i_first, j_first, min_mass, preference, disagree", [
    (Verdict(0.8, 0.9), Verdict(0.4, 0.9), 0.5, 0.7, False),  # i wins in both orders: (0.8 + 0.6) / 2
    (Verdict(0.8, 0.9), Verdict(0.7, 0.9), 0.5, 0.55, True),  # "the first one" both times: position bias
    (Verdict(0.2, 0.6), Verdict(0.9, 0.6), 0.5, 0.15, False),  # j wins in both orders
    (Verdict(0.8, 0.4), Verdict(0.4, 0.9), 0.5, None, None),  # one order does not parse: the pair is unjudged
    (Verdict(0.8, 0.4), Verdict(0.4, 0.9), 0.0, 0.7, False),  # min_mass 0: every verdict parses
    (None, Verdict(0.4, 0.9), 0.0, None, None),  # one order too long to judge
])
def test_pair_preference_averages_the_two_orders(i_first, j_first, min_mass, preference, disagree):
    p, d = pair_preference(i_first, j_first, min_mass)
    assert (p is None) == (preference is None) and d == disagree
    if preference is not None:
        assert p == pytest.approx(preference)


@pytest.mark.parametrize("n, preference, scores", [
    (3, {(0, 1): 0.7, (0, 2): 0.9, (1, 2): 0.5}, [0.8, 0.4, 0.3]),  # (0.7+0.9)/2, (0.3+0.5)/2, (0.1+0.5)/2
    (3, {(0, 1): 0.7, (0, 2): 0.9, (1, 2): None}, [0.8, 0.3, 0.1]),  # an unjudged pair counts for neither
    (2, {(0, 1): None}, [None, None]),
])
def test_response_scores_are_win_rates(n, preference, scores):
    assert response_scores(n, preference) == pytest.approx(scores)


def test_judge_text_fills_every_placeholder_once_and_keeps_braces():
    text = judge_text("Q {prompt} R {reference} A {response_a} B {response_b}", "x{y}", "{response_a}", "a", "b")
    assert text == "Q x{y} R {response_a} A a B b"


# ---- UPO -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margins, beta, mean, variance", [
    ([0.0, 0.0], 0.1, 0.5, 0.0),
    ([10.0, -10.0], 0.1, 0.5, 0.053388066758518156),  # sigmoid(+-1): (0.2310585786)^2
    ([5.0, 10.0, 15.0], 0.1, 0.7236974620085009, 0.006372079653152168),  # sigmoid(0.5), sigmoid(1), sigmoid(1.5)
    ([10.0, 10.0, 10.0], 0.1, S1, 0.0),
])
def test_mc_preference_by_hand(margins, beta, mean, variance):
    c = mc_preference(margins, beta)
    assert c.mean == pytest.approx(mean) and c.variance == pytest.approx(variance, abs=1e-15)


@pytest.mark.parametrize("variances, keep, flags", [
    ([0.3, 0.1, 0.2, 0.1], 0.5, [False, True, False, True]),
    ([0.3, 0.1, 0.2, 0.1], 0.25, [False, True, False, False]),  # equal variances: the earlier pair
    ([0.0] * 10, 0.3, [True] * 3 + [False] * 7),  # 0.3 * 10 keeps 3, not 4
    ([0.2, 0.1, 0.3], 0.1, [False, True, False]),  # at least one: ceil(0.3)
    ([0.2, 0.1, 0.3], 1.0, [True, True, True]),
])
def test_most_certain_keeps_the_lowest_variances(variances, keep, flags):
    assert most_certain(variances, keep) == flags


@pytest.mark.parametrize("variance, weight", [(0.0, 1.0), (0.25, 0.0), (0.053388066758518156, 0.7864477329659274)])
def test_certainty_weight_by_hand(variance, weight):
    assert certainty_weight(variance) == pytest.approx(weight)


def test_dropout_makes_the_passes_differ_and_is_undone(tiny_model_dir):
    from cream.engine.models import load_base_model, load_tokenizer
    from cream.engine.scoring import sequence_logprobs

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


# ---- B-STaR ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scores, z", [
    ([[1.0, 3.0], [None, 2.0]], [[-1.224744871391589, 1.224744871391589], [None, 0.0]]),  # mean 2, std sqrt(2/3)
    ([[2.0, 2.0], [2.0]], [[0.0, 0.0], [0.0]]),  # no spread: all at the mean
])
def test_standardized_by_hand(scores, z):
    assert standardized(scores) == [pytest.approx(row) for row in z]


@pytest.mark.parametrize("z, correct, texts, threshold, n_star, score", [
    ([1.0, 0.5, -1.0, None], [True, True, False, True], "abcd", 0.0, 4, 0.5),  # n=2, n'=2: min(2/4, 1) * 2/2
    ([1.0, 0.5, -1.0, None], [True, True, False, True], "abcd", -2.0, 4, 2 / 4 * 2 / 3),  # the wrong one selected too
    ([1.0, 0.5, -1.0, None], [True, True, False, True], "aacd", 0.0, 4, 1 / 4 * 1 / 2),  # a duplicate counts once
    ([1.0, 0.5, -1.0, None], [True, True, False, True], "abcd", 0.0, 1, 1.0),  # n* reached
    ([1.0, 0.5, -1.0, None], [True, True, False, True], "abcd", 2.0, 4, 0.0),  # nothing selected
    ([1.0, 0.5], [False, False], "ab", 0.0, 4, 0.0),  # nothing correct
])
def test_balance_score_by_hand(z, correct, texts, threshold, n_star, score):
    assert balance_score(z, correct, list(texts), threshold, n_star) == pytest.approx(score)


def test_mean_balance_and_the_best_setting():
    z, correct, texts = [[1.0, -1.0], [0.5, 0.2]], [[True, False], [False, True]], [["a", "b"], ["c", "d"]]
    assert mean_balance(z, correct, texts, 0.0, 1) == pytest.approx((1.0 + 0.5) / 2)
    assert best_setting({(0.5, 0.0): 0.3, (0.8, 0.0): 0.5, (0.8, 0.5): 0.5, (1.1, 0.0): 0.1}) == (0.8, 0.0)


# ---- configuration ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("upo.k=1", "upo.k"), ("upo.keep=0", "upo.keep"), ("upo.dropout=1.0", "upo.dropout"), ("upo.site=input", "upo.site"),
    ("upo.weighting=inverse", "upo.weighting"), ("bstar.temperatures=[]", "bstar.temperatures"),
    ("bstar.temperatures=[0.5,0]", "bstar.temperatures"), ("bstar.thresholds=[]", "bstar.thresholds"),
    ("bstar.probe_prompts=0", "bstar.probe_prompts"), ("bstar.n_star=0", "bstar.n_star"),
    ("self_reference.min_mass=1.5", "self_reference.min_mass"), ("self_reference.verdicts=[A]", "self_reference.verdicts"),
    ("self_reference.answer_tokens=0", "self_reference.answer_tokens"),
    ("self_reference.template=no_placeholders", "self_reference.template"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises((ConfigError, ConfigCompositionException), match=key.replace(".", r"\.")):
        _load(["experiment=smoke", override])


@pytest.mark.parametrize("overrides, message", [
    (["pairs=uncertainty", "upo.site=lora", "sft=full", "dpo=full"], r"`upo\.site`: lora needs LoRA adapters"),
    (["pairs=reward_threshold"], r"`sampling\.adaptive` and `pairs\.filters`"),
    (["sampling.adaptive=bstr"], r"`sampling\.adaptive`: unknown adaptive sampler 'bstr'; known: bstar, none"),
])
def test_plug_in_settings_are_refused_at_start_up(overrides, message):
    cfg = _load(["experiment=smoke", *overrides])
    with pytest.raises(ConfigError, match=message):
        preflight.check(cfg)


# ---- each method through the config on the tiny model, against CREAM on the same samples ---------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_methods(tmp_path_factory.mktemp("family"), {
        "upo": ("pairs=uncertainty", "upo.k=3", "upo.keep=0.5", "upo.weighting=certainty"),
        # the smoke's temperature only: the same samples as CREAM's, so the threshold alone makes the difference
        "bstar": ("sampling=bstar", "pairs=reward_threshold", "bstar.temperatures=[0.8]",
                  "bstar.thresholds=[-0.5,0.5]", "bstar.probe_prompts=2"),
        # a random model puts almost no mass on the verdict tokens: every verdict counts
        "selfref": ("rewarder=self_reference", "regularizer=none", "self_reference.min_mass=0",
                    "self_reference.answer_tokens=6")})


def test_upo_keeps_the_most_certain_half_of_cremas_pairs_with_its_weights(runs, tiny_model_dir, tmp_path):
    cream = {_key(p): p for p in _jsonl(_stage(runs["cream"], "pairs") / "pairs.jsonl")}
    upo = _jsonl(_stage(runs["upo"], "pairs") / "pairs.jsonl")
    assert {_key(p) for p in upo} <= set(cream) and len(upo) == math.ceil(0.5 * len(cream))
    for p in upo:
        assert 0 < p["weight"] <= 1 and p["target"] == cream[_key(p)]["target"]
    metrics = _metrics(runs["upo"], "pairs")
    assert metrics["upo/forward_passes"] == 3 * 2 * len(cream)  # 3 passes of each pair's chosen and rejected
    assert metrics["upo/mean_variance"] > 0  # the dropout passes differ
    assert metrics["upo/mean_weight"] == pytest.approx(sum(p["weight"] for p in upo) / len(upo))
    batch = _loss_inputs(runs["upo"], "cream", tiny_model_dir, tmp_path)
    assert sorted(batch["weight"].tolist()) == pytest.approx(sorted(p["weight"] for p in upo))
    assert any(w < 1 for w in batch["weight"].tolist())  # CREAM's weights are all 1
    assert _metrics(runs["upo"], "dpo")["dpo/pairs"] == len(upo)


def test_bstar_picks_its_setting_by_the_balance_score_and_drops_pairs_below_the_threshold(runs):
    choice = json.loads((_stage(runs["bstar"], "sample") / "adaptive.json").read_text())
    grid = {(t, h): v for t, h, v in choice["grid"]}
    assert set(grid) == {(0.8, -0.5), (0.8, 0.5)} and (choice["temperature"], choice["threshold"]) == best_setting(grid)
    sample_metrics = _metrics(runs["bstar"], "sample")
    assert sample_metrics["sample/temperature"] == 0.8 and sample_metrics["bstar/threshold"] == choice["threshold"]
    # the same samples and rewards as CREAM's; the pairs are CREAM's whose chosen response is selected
    assert (_stage(runs["bstar"], "sample") / "responses.jsonl").read_bytes() == \
        (_stage(runs["cream"], "sample") / "responses.jsonl").read_bytes()
    rewards = _jsonl(_stage(runs["cream"], "reward") / "rewards.jsonl")
    z = dict(zip([r["id"] for r in rewards], standardized([r["rewards"] for r in rewards])))
    cream = _jsonl(_stage(runs["cream"], "pairs") / "pairs.jsonl")
    expected = [_key(p) for p in cream if z[p["id"]][p["chosen_index"]] >= choice["threshold"]]
    assert [_key(p) for p in _jsonl(_stage(runs["bstar"], "pairs") / "pairs.jsonl")] == expected
    metrics = _metrics(runs["bstar"], "pairs")
    assert metrics["bstar/dropped_below_threshold"] == len(cream) - len(expected)
    assert metrics["explore/any_correct"] == sum(any(r["correct"]) for r in rewards) / len(rewards)  # pass@N
    assert {"bstar/selected_accuracy", "bstar/balance", "bstar/distinct_per_prompt"} <= set(metrics)


def test_self_reference_ranks_by_pairwise_win_rates(runs):
    rewards = _jsonl(_stage(runs["selfref"], "reward") / "rewards.jsonl")
    for row in rewards:
        scores = row["rewards"]
        assert all(0 <= s <= 1 for s in scores)
        assert sum(scores) == pytest.approx(len(scores) / 2)  # every pair judged: the win rates share n(n-1)/2 wins
    metrics = _metrics(runs["selfref"], "reward")
    n = len(rewards[0]["rewards"])
    assert metrics["self_reference/parse_rate"] == 1.0 and 0 <= metrics["self_reference/position_bias_rate"] <= 1
    assert metrics["self_reference/reference_answers"] == len(rewards)
    assert metrics["self_reference/forward_passes"] <= len(rewards) * n * (n - 1)  # both orders of each distinct pair
    selfref = _jsonl(_stage(runs["selfref"], "pairs") / "pairs.jsonl")
    by_id = {r["id"]: r["rewards"] for r in rewards}
    for p in selfref:  # best/worst under the win rates, not under CREAM's implicit reward
        assert p["chosen_reward"] == max(by_id[p["id"]]) and p["rejected_reward"] == min(by_id[p["id"]])
        assert p["target"] == 1.0
    cream = _jsonl(_stage(runs["cream"], "pairs") / "pairs.jsonl")
    assert [(p["chosen_reward"], p["rejected_reward"]) for p in selfref] != [(p["chosen_reward"], p["rejected_reward"]) for p in cream]
