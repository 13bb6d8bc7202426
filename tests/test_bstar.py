"""B-STaR against the official code (hkust-nlp/B-STaR at a0f5d95, train_code/determine_hyper.py, `dh` below, and
train_code/metric_modiacc_auto.py, `mm`): the balance score by hand, the grid choice on planted probe rows where
some responses are correct, the threshold filter on a planted shard, and the method through the config.

The official lines each expected value rests on:
- dh:82 a response is selected when its score is strictly above the threshold;
- dh:87-94 the selected (query, output) pairs are deduplicated before counting;
- dh:121 n' counts the correct ones among them, dh:125 n all of them;
- dh:128-133 the score is n'/n when n' >= 8, else (n' x n'/n) / 8: min(n'/n*, 1) x n'/n with n* = 8;
- dh:72 the gold solution joins every query's candidates at score 1.0: one more selected, correct response;
- dh:135 the mean over queries; dh:166-168, 223 the first of equal scores wins, thresholds searched upward;
- mm:457-477 the training data's threshold is the one with the best balance score on that data.
"""

import json
import math
from types import SimpleNamespace

import pytest

from cream.config.engine import SamplingConfig
from cream.methods.bstar import BstarConfig
from cream.errors import ConfigError
from cream.methods.bstar import (BalancedSampler, balance_score, best_setting, has_gold, mean_balance, selected,
                                 standardized)
from cream.plugins.registry import FILTERS
from cream.runs.rows import Pair, PromptSamples, Response, RewardRow, write_rows


@pytest.mark.parametrize("scores, z", [
    ([[1.0, 3.0], [None, 2.0]], [[-1.224744871391589, 1.224744871391589], [None, 0.0]]),  # mean 2, std sqrt(2/3)
    ([[2.0, 2.0], [2.0]], [[0.0, 0.0], [0.0]]),  # no spread: all at the mean
])
def test_standardized_by_hand(scores, z):
    assert standardized(scores) == [pytest.approx(row) for row in z]


def test_selection_is_strictly_above_the_threshold():
    assert selected([1.0, 0.0, -1.0, None], 0.0) == [True, False, False, False]  # dh:82, score > threshold


Z, CORRECT = [1.0, 0.5, 0.0, None], [True, True, False, True]


@pytest.mark.parametrize("z, correct, texts, threshold, n_star, gold, score", [
    # dh:82 strict: 0.0 is not above 0.0, so n = 2, n' = 2; dh:133: (2 x 2/2) / 8
    (Z, CORRECT, "abcd", 0.0, 8, False, 2 * (2 / 2) / 8),
    # dh:72 the gold solution: n = 3, n' = 3; dh:133: (3 x 3/3) / 8
    (Z, CORRECT, "abcd", 0.0, 8, True, 3 * (3 / 3) / 8),
    # n* = 2 reached (dh:129-130 with 8 -> 2): n'/n = 2/2
    (Z, CORRECT, "abcd", 0.0, 2, False, 1.0),
    # dh:87-94 duplicates: "a" twice and "b" selected: n = 2 distinct, n' = 1; dh:133: (1 x 1/2) / 8
    ([1.0, 0.8, 0.5, -1.0], [True, True, False, False], ["a", "a", "b", "c"], 0.0, 8, False, 1 * (1 / 2) / 8),
    # ... with the gold solution (dh:72): n = 3, n' = 2; (2 x 2/3) / 8
    ([1.0, 0.8, 0.5, -1.0], [True, True, False, False], ["a", "a", "b", "c"], 0.0, 8, True, 2 * (2 / 3) / 8),
    # an empty prompt: nothing selected, no gold: 0 (the harness's choice; the official always has the gold)
    ([-1.0, -2.0], [True, False], "ab", 0.0, 8, False, 0.0),
    # an empty prompt with the gold solution (dh:72): n = 1, n' = 1; (1 x 1/1) / 8
    ([-1.0, -2.0], [True, False], "ab", 0.0, 8, True, 1 * (1 / 1) / 8),
    # dh:129-130: 9 distinct correct and 1 wrong selected, n' >= 8: n'/n = 9/10
    ([1.0] * 10, [True] * 9 + [False], "abcdefghij", 0.0, 8, False, 9 / 10),
    # ... with the gold solution: 10/11
    ([1.0] * 10, [True] * 9 + [False], "abcdefghij", 0.0, 8, True, 10 / 11),
    # nothing correct: 0, or the gold alone among 3 (dh:72, 133): (1 x 1/3) / 8
    ([1.0, 1.0], [False, False], "ab", 0.0, 8, False, 0.0),
    ([1.0, 1.0], [False, False], "ab", 0.0, 8, True, 1 * (1 / 3) / 8),
])
def test_balance_score_by_hand(z, correct, texts, threshold, n_star, gold, score):
    assert balance_score(z, correct, list(texts), threshold, n_star, gold) == pytest.approx(score)


def test_mean_balance_counts_an_empty_prompt():
    z, correct, texts = [Z, [-1.0, -2.0]], [CORRECT, [True, False]], [list("abcd"), list("ab")]
    # dh:135 the mean over the prompts: (3/8 + 1/8) / 2 with the gold solution (dh:72), (2/8 + 0) / 2 without
    assert mean_balance(z, correct, texts, 0.0, 8, [True, True]) == pytest.approx((3 / 8 + 1 / 8) / 2)
    assert mean_balance(z, correct, texts, 0.0, 8) == pytest.approx((2 / 8 + 0) / 2)


def test_the_gold_solution_counts_where_the_answer_is_known():
    cfg = SimpleNamespace(bstar=BstarConfig())
    assert has_gold(cfg, ["4", "", " "]) == [True, False, False]
    assert has_gold(SimpleNamespace(bstar=BstarConfig(gold_solution=False)), ["4"]) == [False]


def test_best_setting_keeps_the_first_of_equal_scores():
    assert best_setting({(0.5, 0.0): 0.3, (0.8, 0.0): 0.5, (0.8, 0.5): 0.5, (1.1, 0.0): 0.1}) == (0.8, 0.0)  # dh:168, 223


def test_the_defaults_are_the_official_ones():
    settings = BstarConfig()
    assert settings.n_star == 8 and settings.gold_solution and settings.threshold_from == "shard"  # dh:129-133, 72
    with pytest.raises(ConfigError, match=r"bstar\.threshold_from"):
        BstarConfig(threshold_from="dev")


# ---- the grid choice on planted probe rows, some responses correct ------------------------------------------------


def _row(pid, answer, texts):
    return PromptSamples(pid, "gsm8k", f"question {pid}", answer, [1, 2],
                         [Response(t, [3 + i], True) for i, t in enumerate(texts)])


# Per temperature, two prompts (answers 4 and 7) with rewards 3, 1, -1, -3 in response order: over the probe's 8
# rewards, mean 0 and std sqrt(5), so z = 1.34, 0.45, -0.45, -1.34, and the thresholds -0.5, 0, 0.5 select each
# prompt's top 3, top 2 and top 1 responses.
REWARDS = [3.0, 1.0, -1.0, -3.0]
PROBE = {
    # collapsed: prompt 4's two best are the same correct text, prompt 7's are all wrong
    0.5: [_row("a", "4", ["The answer is 4.", "The answer is 4.", "The answer is 5.", "The answer is 6."]),
          _row("b", "7", ["The answer is 1.", "The answer is 2.", "The answer is 3.", "The answer is 5."])],
    # explores: three distinct correct answers to prompt 4, one to prompt 7
    0.8: [_row("a", "4", ["So 2 + 2 = 4.", "The answer is 4.", "Two and two make 4.", "The answer is 9."]),
          _row("b", "7", ["The answer is 7.", "The answer is 8.", "The answer is 1.", "The answer is 2."])],
}
# By hand (dh:72 the gold: n + 1, n' + 1; dh:87-94 distinct texts; dh:133 (n' x n'/n) / 8; dh:135 the mean):
EXPECTED_GRID = {
    (0.5, -0.5): ((2 * 2 / 3) / 8 + (1 * 1 / 4) / 8) / 2,  # a: {4, 5} + gold: n 3, n' 2; b: 3 wrong + gold: n 4, n' 1
    (0.5, 0.0): ((2 * 2 / 2) / 8 + (1 * 1 / 3) / 8) / 2,  # a: the duplicate counts once: n 2, n' 2; b: n 3, n' 1
    (0.5, 0.5): ((2 * 2 / 2) / 8 + (1 * 1 / 2) / 8) / 2,  # a: n 2, n' 2; b: n 2, n' 1
    (0.8, -0.5): ((4 * 4 / 4) / 8 + (2 * 2 / 4) / 8) / 2,  # a: 3 correct + gold: n 4, n' 4; b: 7, 8, 1 + gold: n 4, n' 2
    (0.8, 0.0): ((3 * 3 / 3) / 8 + (2 * 2 / 3) / 8) / 2,  # a: n 3, n' 3; b: 7, 8 + gold: n 3, n' 2
    (0.8, 0.5): ((2 * 2 / 2) / 8 + (2 * 2 / 2) / 8) / 2,  # a: n 2, n' 2; b: n 2, n' 2
}


def test_the_sampler_picks_the_grid_point_of_the_best_balance_not_the_first(tmp_path):
    assert EXPECTED_GRID[(0.8, -0.5)] == pytest.approx(5 / 16) and max(EXPECTED_GRID.values()) == EXPECTED_GRID[(0.8, -0.5)]
    assert EXPECTED_GRID[(0.5, -0.5)] < EXPECTED_GRID[(0.8, -0.5)]  # the tie rule's point, (0.5, -0.5), does not win
    sampler, calls = BalancedSampler(), []

    def probe(ctx, rows, temperature, folder):  # M_t's samples at `temperature` and their rewards, planted
        calls.append(([r.id for r in rows], temperature))
        return PROBE[temperature], [REWARDS, REWARDS], 16

    sampler.probe = probe
    cfg = SimpleNamespace(bstar=BstarConfig(temperatures=[0.5, 0.8], thresholds=[-0.5, 0.0, 0.5], probe_prompts=2),
                          sampling=SamplingConfig())
    shard = [_row(pid, answer, []) for pid, answer in (("a", "4"), ("b", "7"), ("c", "1"))]
    choice = sampler.choose(SimpleNamespace(cfg=cfg), shard, tmp_path)
    assert calls == [(["a", "b"], 0.5), (["a", "b"], 0.8)]  # the probe: the shard's first probe_prompts prompts
    assert {(t, h): v for t, h, v in choice.settings["grid"]} == pytest.approx(EXPECTED_GRID)
    assert (choice.sampling.temperature, choice.settings["threshold"]) == (0.8, -0.5)
    assert choice.metrics["bstar/probe_balance"] == pytest.approx(5 / 16) and choice.metrics["bstar/probe_forward_passes"] == 32


# ---- the filter on a planted shard -----------------------------------------------------------------------------------


SHARD = [_row("a", "4", ["The answer is 4.", "So it is 4.", "The answer is 5.", "The answer is 6."]),
         _row("b", "7", ["The answer is 7.", "The answer is 1.", "The answer is 2.", "The answer is 3."])]


def _pair(pid, chosen, rejected):
    return Pair(id=pid, task="gsm8k", answer="", prompt="q", chosen="x", rejected="y", chosen_reward=REWARDS[chosen],
                rejected_reward=REWARDS[rejected], consistency=1.0, chosen_correct=False, rejected_correct=False,
                prompt_ids=[1], chosen_ids=[2], rejected_ids=[3], ref_chosen_logps=-1.0, ref_rejected_logps=-1.0,
                chosen_index=chosen, rejected_index=rejected)


def _filter(tmp_path, rows, rewards, pairs, probe_threshold, **settings):
    write_rows(tmp_path / "responses.jsonl", rows)
    (tmp_path / "adaptive.json").write_text(json.dumps({"temperature": 0.8, "threshold": probe_threshold}))
    files = {("sample", "responses"): tmp_path / "responses.jsonl", ("sample", "adaptive"): tmp_path / "adaptive.json"}
    reward_rows = {r.id: RewardRow(id=r.id, task=r.task, answer=r.answer, rewards=list(rw), previous_rewards=None,
                                   correct=[c for c in corr], logps={}, n_tokens=[1] * len(rw))
                   for r, (rw, corr) in zip(rows, rewards)}
    ctx = SimpleNamespace(cfg=SimpleNamespace(bstar=BstarConfig(**settings)), file=lambda stage, name: files[(stage, name)])
    return FILTERS.get("reward_threshold").apply(pairs, reward_rows, ctx)


def test_the_filter_rechooses_the_threshold_on_the_shard_by_the_balance_score(tmp_path):
    correct = [[True, True, False, False], [True, False, False, False]]
    pairs = [_pair("a", 0, 3), _pair("a", 2, 3), _pair("b", 0, 3), _pair("b", 1, 3)]
    # by hand (the gold: n + 1, n' + 1; (n' x n'/n) / 8; the mean over a and b), thresholds top 3 / top 2 / top 1:
    balance = {-0.5: ((3 * 3 / 4) / 8 + (2 * 2 / 4) / 8) / 2,  # a: 4, 4', 5: n 4, n' 3; b: 7, 1, 2: n 4, n' 2
               0.0: ((3 * 3 / 3) / 8 + (2 * 2 / 3) / 8) / 2,  # a: 4, 4': n 3, n' 3; b: 7, 1: n 3, n' 2
               0.5: ((2 * 2 / 2) / 8 + (2 * 2 / 2) / 8) / 2}  # a: 4: n 2, n' 2; b: 7: n 2, n' 2
    assert max(balance, key=balance.get) == 0.0  # mm:457-477: the best threshold on the data itself
    result = _filter(tmp_path, SHARD, [(REWARDS, correct[0]), (REWARDS, correct[1])], pairs, -0.5,
                     thresholds=[-0.5, 0.0, 0.5])
    assert result.metrics["bstar/threshold"] == 0.0 and result.metrics["bstar/probe_threshold"] == -0.5
    assert result.metrics["bstar/balance"] == pytest.approx(balance[0.0])
    assert [result.metrics[f"bstar/balance/threshold{h}"] for h in (-0.5, 0.0, 0.5)] == pytest.approx(list(balance.values()))
    assert result.keep == [True, False, True, True]  # z -0.45 of a's third response is not above 0
    assert result.metrics["bstar/selected_accuracy"] == pytest.approx(3 / 4)  # a: 2 of 2, b: 1 of 2
    assert result.metrics["bstar/dropped_below_threshold"] == 1
    probe = _filter(tmp_path, SHARD, [(REWARDS, correct[0]), (REWARDS, correct[1])], pairs, -0.5,
                    thresholds=[-0.5, 0.0, 0.5], threshold_from="probe")
    assert probe.metrics["bstar/threshold"] == -0.5 and probe.keep == [True, True, True, True]


def test_the_filter_drops_a_chosen_response_exactly_at_the_threshold(tmp_path):
    rows = [_row("a", "4", ["x 4", "y 4", "z 5"])]
    # rewards 1, 0, -1: mean 0, so the second response's z is exactly 0, not above the threshold 0 (dh:82)
    result = _filter(tmp_path, rows, [([1.0, 0.0, -1.0], [True, True, False])],
                     [_pair("a", 0, 2), _pair("a", 1, 2)], 0.0, thresholds=[0.0], threshold_from="probe")
    assert result.keep == [True, False]


# ---- through the config on the tiny model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.test_methods import run_methods

    # the smoke's temperature only: the same samples as CREAM's, so the threshold alone makes the difference
    return run_methods(tmp_path_factory.mktemp("bstar"), {
        "bstar": ("sampling=bstar", "pairs=reward_threshold", "bstar.temperatures=[0.8]", "bstar.thresholds=[-0.5,0.5]",
                  "bstar.probe_prompts=2")})


def test_bstar_applies_the_threshold_of_the_best_balance_on_the_shard(runs):
    from tests.test_methods import _jsonl, _key, _metrics, _stage

    choice = json.loads((_stage(runs["bstar"], "sample") / "adaptive.json").read_text())
    assert {(t, h) for t, h, _ in choice["grid"]} == {(0.8, -0.5), (0.8, 0.5)}
    assert _metrics(runs["bstar"], "sample")["sample/temperature"] == 0.8
    assert (_stage(runs["bstar"], "sample") / "responses.jsonl").read_bytes() == \
        (_stage(runs["cream"], "sample") / "responses.jsonl").read_bytes()
    rewards = _jsonl(_stage(runs["cream"], "reward") / "rewards.jsonl")
    samples = {r["id"]: [resp["text"] for resp in r["responses"]] for r in _jsonl(_stage(runs["cream"], "sample") / "responses.jsonl")}
    # the standardized reward and the balance score written out here, from the official formula
    values = [x for r in rewards for x in r["rewards"] if x is not None]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / len(values))
    z = {r["id"]: [None if x is None else (x - mean) / std for x in r["rewards"]] for r in rewards}

    def balance(h):
        scores = []
        for r in rewards:
            chosen = {samples[r["id"]][k] for k, x in enumerate(z[r["id"]]) if x is not None and x > h}  # dh:82, 87-94
            right = {samples[r["id"]][k] for k, x in enumerate(z[r["id"]]) if x is not None and x > h and r["correct"][k]}
            n, n_correct = len(chosen) + 1, len(right) + 1  # dh:72: the gold solution
            scores.append(min(n_correct / 8, 1) * n_correct / n)  # dh:128-133
        return sum(scores) / len(scores)  # dh:135

    threshold = -0.5 if balance(-0.5) >= balance(0.5) else 0.5
    metrics = _metrics(runs["bstar"], "pairs")
    assert metrics["bstar/threshold"] == threshold and metrics["bstar/balance"] == pytest.approx(balance(threshold))
    cream = _jsonl(_stage(runs["cream"], "pairs") / "pairs.jsonl")
    expected = [_key(p) for p in cream if z[p["id"]][p["chosen_index"]] > threshold]
    assert [_key(p) for p in _jsonl(_stage(runs["bstar"], "pairs") / "pairs.jsonl")] == expected
    assert metrics["bstar/dropped_below_threshold"] == len(cream) - len(expected)
    assert metrics["explore/any_correct"] == sum(any(r["correct"]) for r in rewards) / len(rewards)  # pass@N
    assert {"bstar/selected_accuracy", "bstar/distinct_per_prompt"} <= set(metrics)
