"""SPPO against the official code (uclaml/SPPO at 5e61c4e): the win rates by hand, the examples the pairs stage
writes, the square loss, and the method through the config on the tiny model.

Official lines cited beside the expected values: scripts/compute_prob.py:45 P(i > j) = 1 / (1 + exp(s_j - s_i))
over the K x K matrix, the diagonal included (1/2); :84 the row sums; :96-97 divided by K; :85, 91-92 the argmax
and the argmin are the trained responses; sppo/trainer.py:877-879 the loss, (loss_w + loss_l) / 2, eta = 1 / beta.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from cream.methods.sppo import SppoConfig
from cream.errors import ConfigError
from cream.methods.sppo import response_targets, sppo_loss, win_rates
from cream.plugins.registry import LOSSES
from cream.runs.rows import Pair, PromptSamples, Response, RewardRow
from cream.stages.pairs import scored_responses

S1, S2, S3 = 0.7310585786300049, 0.8807970779778823, 0.9525741268224334  # sigmoid(1), sigmoid(2), sigmoid(3)
REWARDS = [2.0, 0.0, None, 1.0, -1.0]  # K = 4 scored responses and an unscored one
# compute_prob.py:45, 84, 96: (1/2 + sum over the 3 others of sigmoid(r_i - r_j)) / 4
OFFICIAL = [(0.5 + S2 + S1 + S3) / 4, (0.5 + (1 - S2) + (1 - S1) + S1) / 4, None,
            (0.5 + (1 - S1) + S1 + S2) / 4, (0.5 + (1 - S3) + (1 - S1) + (1 - S2)) / 4]
OTHERS = [(S2 + S1 + S3) / 3, ((1 - S2) + (1 - S1) + S1) / 3, None, ((1 - S1) + S1 + S2) / 3,
          ((1 - S3) + (1 - S1) + (1 - S2)) / 3]  # leave-one-out: the 3 others only


def test_official_win_rates_by_hand():
    assert OFFICIAL == pytest.approx([0.7661074458575801, 0.4048007305055294, None, 0.5951992694944706, 0.23389255414241986])
    assert win_rates(REWARDS, 1.0) == pytest.approx(OFFICIAL)
    assert sum(r for r in OFFICIAL if r is not None) == pytest.approx(4 / 2)  # the rates of K responses sum to K/2


def test_leave_one_out_win_rates_are_k_over_k_minus_1_further_from_one_half():
    assert win_rates(REWARDS, 1.0, opponents="others") == pytest.approx(OTHERS)
    # (all - 1/2) = (sum_j!=i P - (K-1)/2) / K and (others - 1/2) = (sum_j!=i P - (K-1)/2) / (K-1): a factor K/(K-1)
    for official, others in zip(OFFICIAL, OTHERS):
        if official is not None:
            assert others - 0.5 == pytest.approx(4 / 3 * (official - 0.5))


@pytest.mark.parametrize("rewards, tau, opponents, expected", [
    ([3.0, 1.0, 1.0, None], None, "all", [(0.5 + 1 + 1) / 3, (0 + 0.5 + 0.5) / 3, (0 + 0.5 + 0.5) / 3, None]),  # hard: 1, 1/2, 0
    ([3.0, 1.0, 1.0, None], None, "others", [1.0, 0.25, 0.25, None]),
    ([2.0, None], 1.0, "all", [None, None]),  # nobody to meet
    ([1.0, 0.0], 2.0, "all", [(0.5 + 1 / (1 + math.exp(-0.5))) / 2, (0.5 + 1 / (1 + math.exp(0.5))) / 2]),  # gap / tau
])
def test_win_rates_hard_unscored_and_tempered(rewards, tau, opponents, expected):
    assert win_rates(rewards, tau, opponents=opponents) == pytest.approx(expected)


def _cfg(rewarder="likelihood", beta=0.1, tau=1.0, **sppo):
    return SimpleNamespace(pairs=SimpleNamespace(tau=tau), rewarder=SimpleNamespace(name=rewarder),
                           dpo=SimpleNamespace(beta=beta, loss="sppo"), sppo=SppoConfig(**sppo))


def test_the_implicit_rewards_gap_is_scaled_by_beta():
    # rewards 10 and 0 of the implicit reward at beta 0.1: P = sigmoid(0.1 x 10) = sigmoid(1); (1/2 + P) / 2
    assert response_targets([10.0, 0.0], [0, 1], _cfg("implicit")) == pytest.approx([(0.5 + S1) / 2, (0.5 + 1 - S1) / 2])
    assert response_targets([1.0, 0.0], [0, 1], _cfg("likelihood")) == pytest.approx([(0.5 + S1) / 2, (0.5 + 1 - S1) / 2])


def _stage_inputs():
    texts = ["two", "zero", "none", "one", "minus one"]
    sample = PromptSamples("p", "gsm8k", "q", "1", [5], [Response(t, [i + 10], True) for i, t in enumerate(texts)])
    row = RewardRow(id="p", task="gsm8k", answer="1", rewards=REWARDS, previous_rewards=None,
                    correct=[False] * 5, logps={"m1": [-1.0, -2.0, -3.0, -4.0, -5.0]}, n_tokens=[1] * 5)
    pair = Pair(id="p", task="gsm8k", answer="1", prompt="q", chosen="two", rejected="minus one", chosen_reward=2.0,
                rejected_reward=-1.0, consistency=1.0, chosen_correct=False, rejected_correct=False, prompt_ids=[5],
                chosen_ids=[10], rejected_ids=[14], ref_chosen_logps=-1.0, ref_rejected_logps=-5.0,
                chosen_index=0, rejected_index=4)
    return [pair], {"p": row}, {"p": sample}


@pytest.mark.parametrize("sppo, indices, targets", [
    ({}, [0, 4], [OFFICIAL[0], OFFICIAL[4]]),  # the official: the argmax and the argmin (compute_prob.py:85, 91-92)
    ({"responses": "all"}, [0, 1, 3, 4], [OFFICIAL[0], OFFICIAL[1], OFFICIAL[3], OFFICIAL[4]]),  # every scored one
    ({"opponents": "others"}, [0, 4], [OTHERS[0], OTHERS[4]]),
])
def test_the_pairs_stage_writes_the_losss_targets(sppo, indices, targets):
    pairs, rows, samples = _stage_inputs()
    out = scored_responses(pairs, rows, samples, "m1", LOSSES.get("sppo"), _cfg(**sppo))
    assert [r.index for r in out] == indices
    assert [r.target for r in out] == pytest.approx(targets)
    assert [r.ref_logps for r in out] == [rows["p"].logps["m1"][i] for i in indices]
    assert [r.completion_ids for r in out] == [[10 + i] for i in indices]


def test_a_responses_loss_without_targets_is_refused():
    from cream.errors import StageError
    from cream.plugins.contracts import Loss

    pairs, rows, samples = _stage_inputs()
    with pytest.raises(StageError, match="response targets"):
        scored_responses(pairs, rows, samples, "m1", Loss("responses", ("target",), lambda *a: None), _cfg())


@pytest.mark.parametrize("override, key", [({"opponents": "every"}, "sppo.opponents"), ({"responses": "some"}, "sppo.responses")])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SppoConfig(**override)


# ---- the loss ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("logratio, win_rate, eta, loss", [(0.3, 0.8, 10.0, 7.29), (-0.5, 0.2, 10.0, 6.25),
                                                           (0.0, 0.5, 10.0, 0.0), (2.0, 1.0, 4.0, 0.0)])
def test_sppo_square_loss_by_hand(logratio, win_rate, eta, loss):
    assert sppo_loss(torch.tensor([logratio]), torch.tensor([win_rate]), eta).item() == pytest.approx(loss)


def test_the_mean_over_a_pairs_two_responses_is_the_official_pair_loss():
    # trainer.py:877-879 at beta 0.1 (eta 10): ((0.3 - 10 (0.8 - 1/2))^2 + (-0.5 - 10 (0.2 - 1/2))^2) / 2
    batch = {"ref_logps": torch.tensor([-10.0, -10.0]), "target": torch.tensor([0.8, 0.2]), "weight": torch.tensor([1.0, 1.0])}
    loss, _ = LOSSES.get("sppo").per_example(torch.tensor([-9.7, -10.5]), batch, 0.1)
    assert loss.mean().item() == pytest.approx((7.29 + 6.25) / 2)


def test_sppo_hard_by_hand():
    # TRL 1.16: (chosen log-ratio - 0.5 / beta)^2 + (rejected log-ratio + 0.5 / beta)^2 = (1 - 5)^2 + (-2 + 5)^2
    batch = {"ref_chosen_logps": torch.tensor([-10.0]), "ref_rejected_logps": torch.tensor([-10.0]),
             "weight": torch.tensor([1.0])}
    loss, _ = LOSSES.get("sppo_hard").per_example(torch.tensor([-9.0, -12.0]), batch, 0.1)
    assert loss.item() == pytest.approx(25.0)


# ---- through the config on the tiny model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.test_methods import run_methods

    return run_methods(tmp_path_factory.mktemp("sppo"), {"sppo": ("dpo.loss=sppo", "pairs.tau=1.0")})


def test_sppo_trains_each_prompts_best_and_worst_response_on_its_official_win_rate(runs, tiny_model_dir, tmp_path):
    from tests.test_methods import _jsonl, _load, _loss_inputs, _metrics, _stage

    beta = _load(["experiment=smoke"]).dpo.beta  # the implicit reward's scale
    examples = _jsonl(_stage(runs["sppo"], "pairs") / "scored_responses.jsonl")
    rewards = {r["id"]: r for r in _jsonl(_stage(runs["sppo"], "reward") / "rewards.jsonl")}
    pairs = _jsonl(_stage(runs["sppo"], "pairs") / "pairs.jsonl")
    assert [e["id"] for e in examples] == [i for p in pairs for i in (p["id"], p["id"])]  # best_worst: one pair each
    for p in pairs:
        own = [e for e in examples if e["id"] == p["id"]]
        r = rewards[p["id"]]["rewards"]
        assert sorted(e["index"] for e in own) == sorted([p["chosen_index"], p["rejected_index"]])
        for e in own:  # compute_prob.py:45, 84, 96 with P = sigmoid(beta x gap), the diagonal at 1/2
            scored = [x for x in r if x is not None]
            official = sum(1 / (1 + math.exp(-beta * (r[e["index"]] - x))) for x in scored) / len(scored)
            assert e["target"] == pytest.approx(official)
        assert [e["ref_logps"] for e in own] == [rewards[p["id"]]["logps"]["m1"][e["index"]] for e in own]
    batch = _loss_inputs(runs["sppo"], "sppo", tiny_model_dir, tmp_path)
    assert len(batch["input_ids"]) == len(examples)  # one sequence per response
    assert sorted(batch["target"].tolist()) == pytest.approx(sorted(e["target"] for e in examples))
    metrics = _metrics(runs["sppo"], "dpo")
    assert metrics["dpo/responses"] == len(examples) and metrics["dpo/forward_sequences"] == len(examples)
