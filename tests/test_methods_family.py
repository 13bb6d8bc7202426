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
from cream.methods.upo import DropoutSite
from cream.errors import ConfigError
from cream.methods.self_reference import Verdict, judge_text, pair_preference, response_scores, verdict
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


# ---- UPO: tests/test_upo.py -----------------------------------------------------------------------------------


# ---- B-STaR: tests/test_bstar.py ------------------------------------------------------------------------------


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


UPO_K, UPO_DROPOUT = 4, 0.5
UPO_RUN = ("pairs=uncertainty", f"upo.k={UPO_K}", f"upo.dropout={UPO_DROPOUT}", "upo.selection=lowest",
           "upo.weighting=certainty")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_methods(tmp_path_factory.mktemp("family"), {
        # the selection that makes "the kept pairs are the certain ones" checkable (the official draw is random)
        "upo": UPO_RUN,
        # a random model puts almost no mass on the verdict tokens: every verdict counts
        "selfref": ("rewarder=self_reference", "regularizer=none", "self_reference.min_mass=0",
                    "self_reference.answer_tokens=6")})


def test_upo_keeps_the_certain_survivors_of_cremas_pairs(runs, tiny_model_dir, tmp_path):
    """The run's kept pairs against the official rules applied by hand to the filter's dropout passes, replayed:
    M1, the same sequences in the same order, the same seed (seed 0 x 1000 + iteration 1) and dropout."""
    from cream.engine.model_pool import ModelPool
    from cream.engine.models import load_tokenizer
    from cream.engine.scoring import logprobs_under
    from cream.methods.upo import seeded_dropout
    from cream.runs.model_ref import ModelRef
    from cream.runs.reader import RunReader
    from cream.runs.rows import Pair, RewardRow, read_rows

    candidates = read_rows(_stage(runs["cream"], "pairs") / "pairs.jsonl", Pair)  # UPO's, in the order it saw them
    rows = {r.id: r for r in read_rows(_stage(runs["upo"], "reward") / "rewards.jsonl", RewardRow)}
    cfg = _load(["experiment=smoke", *UPO_RUN])
    m1 = RunReader(runs["upo"]).models(ModelRef("m0", str(tiny_model_dir)), sft_enabled=True)[1]
    sequences = [s for p in candidates for s in ((p.prompt_ids, p.chosen_ids), (p.prompt_ids, p.rejected_ids))]
    passes = [logps for _, logps in logprobs_under(
        ModelPool(cfg.model), [m1], sequences, cfg.rewarder.batch_size, load_tokenizer(m1.base).pad_token_id, "replay",
        passes=UPO_K, within=lambda model: seeded_dropout(model, DropoutSite.attention, UPO_DROPOUT, 1))]

    def H(p):  # sampler.py 18, 20: -sum p log(p + 1e-10)
        return -(p * math.log(p + 1e-10) + (1 - p) * math.log(1 - p + 1e-10))

    bald, survives = [], []
    for m, pair in enumerate(candidates):
        implicit = rows[pair.id].scores["implicit"]
        gap = implicit[pair.chosen_index] - implicit[pair.rejected_index]
        p = [1 / (1 + math.exp(-0.1 * (gap + (lp[2 * m] - pair.ref_chosen_logps) - (lp[2 * m + 1] - pair.ref_rejected_logps))))
             for lp in passes]  # sigmoid(beta x margin of the pass)
        bald.append(H(sum(p) / UPO_K) - sum(H(q) for q in p) / UPO_K)  # sampler.py 16-21
        votes = sum(q >= 0.5 for q in p)  # mc_evaluation.py 56: argmax per pass, then of the counts (ties: chosen)
        survives.append(votes >= UPO_K - votes)  # main.py 342-347
    alive = [i for i in range(len(candidates)) if survives[i]]
    kept = sorted(sorted(alive, key=lambda i: (bald[i], i))[:max(1, int(0.5 * len(alive)))])  # main.py 369
    assert len(set(bald)) > 1  # the passes differ, and differently per pair: the ranking means something

    upo = _jsonl(_stage(runs["upo"], "pairs") / "pairs.jsonl")
    key = lambda p: (p.id, p.chosen_index, p.rejected_index)
    assert [_key(p) for p in upo] == [key(candidates[i]) for i in kept]  # the least uncertain of the survivors
    assert [p["weight"] for p in upo] == pytest.approx([1 - bald[i] / math.log(2) for i in kept], abs=1e-6)
    for p, i in zip(upo, kept):
        assert p["target"] == candidates[i].target
    metrics = _metrics(runs["upo"], "pairs")
    assert metrics["upo/dropped_noisy"] == len(candidates) - len(alive)
    assert metrics["upo/forward_passes"] == UPO_K * 2 * len(candidates)  # each pair's chosen and rejected per pass
    assert metrics["upo/kept_mean_uncertainty"] == pytest.approx(sum(bald[i] for i in kept) / len(kept), abs=1e-9)
    assert metrics["upo/mean_uncertainty"] == pytest.approx(sum(bald) / len(bald), abs=1e-9)
    batch = _loss_inputs(runs["upo"], "cream", tiny_model_dir, tmp_path)
    assert sorted(batch["weight"].tolist()) == pytest.approx(sorted(p["weight"] for p in upo))
    assert _metrics(runs["upo"], "dpo")["dpo/pairs"] == len(upo)


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
