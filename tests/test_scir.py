"""SCIR's votes against the paper (Zhou et al. 2025, arXiv 2502.08922) and the convention of
`cream.rewards.pairing`: each expected value below is computed by hand, never by the code under test.

- the implicit vote is the DPO implicit reward model's Bradley-Terry probability, sigmoid(beta x (r(y+) - r(y-)))
  with r the log-ratio (the paper's implicit reward model; reward_scale(implicit) = beta, tau 1);
- the judge's is sigmoid(score gap / scir.judge_temperature) (reward_scale = 1);
- a pair is kept only when both exceed 1/2, weighted by their product; a response the judge did not score gives
  no vote, so its pair is dropped and counted in `scir/unjudged`.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from cream import preflight
from cream.config import load_config
from cream.methods.scir import ScirConfig
from cream.errors import ConfigError
from cream.methods.scir import vote
from cream.plugins.registry import FILTERS
from cream.runs.rows import Pair, RewardRow

CONF = Path(__file__).resolve().parents[1] / "conf"

S1 = 0.7310585786300049  # sigmoid(1) = 1 / (1 + e^-1)
S2 = 0.8807970779778823  # sigmoid(2)
S_HALF = 0.6224593312018546  # sigmoid(0.5)


@pytest.mark.parametrize(
    "implicit_gap, judge_gap, temperature, implicit, judge, agree, weight",
    [
        (10.0, 1.0, 1.0, S1, S1, True, S1 * S1),  # beta 0.1: sigmoid(0.1 x 10); 0.5344466
        (20.0, 2.0, 2.0, S2, S1, True, S2 * S1),  # sigmoid(2) x sigmoid(2 / 2) = 0.6439143
        (5.0, 1.0, 2.0, S_HALF, S_HALF, True, S_HALF * S_HALF),  # the temperature divides the judge's gap only
        (10.0, -1.0, 1.0, S1, 1 - S1, False, 0.0),  # the judge prefers rejected
        (-5.0, 2.0, 1.0, 1 - S_HALF, S2, False, 0.0),  # the implicit reward does: sigmoid(-0.5) = 0.3775407
        (10.0, 0.0, 1.0, S1, 0.5, False, 0.0),  # a judge tie is no vote for chosen
        (0.0, 3.0, 1.0, 0.5, 0.9525741268224334, False, 0.0),  # an implicit tie neither
        (10.0, None, 1.0, S1, None, False, 0.0),  # unjudged: no vote
    ],
)
def test_vote_by_hand(implicit_gap, judge_gap, temperature, implicit, judge, agree, weight):
    v = vote(implicit_gap, judge_gap, beta=0.1, judge_temperature=temperature)
    assert v.implicit == pytest.approx(implicit) and v.agree == agree and v.weight == pytest.approx(weight)
    assert v.judge == (None if judge is None else pytest.approx(judge))


def _pair(i, chosen, rejected):
    return Pair(id=f"p{i}", task="gsm8k", answer="1", prompt="q", chosen="a", rejected="b", chosen_reward=1.0,
                rejected_reward=0.0, consistency=0.9, chosen_correct=False, rejected_correct=False, prompt_ids=[1],
                chosen_ids=[2], rejected_ids=[3], ref_chosen_logps=-1.0, ref_rejected_logps=-1.0,
                chosen_index=chosen, rejected_index=rejected)


def _apply(judge_name, cases, penalty=0.5, temperature=1.0):
    """The registered filter on one pair per case: (implicit scores, judge scores, chosen, rejected)."""
    cfg = SimpleNamespace(scir=ScirConfig(judge=judge_name, judge_temperature=temperature, penalty=penalty),
                          dpo=SimpleNamespace(beta=0.1))
    rows = {f"p{i}": RewardRow(f"p{i}", "gsm8k", "1", [0.0] * len(implicit), None, [False] * len(implicit), {},
                               [1] * len(implicit), scores={"implicit": implicit, judge_name: judge})
            for i, (implicit, judge, _, _) in enumerate(cases)}
    pairs = [_pair(i, c, r) for i, (_, _, c, r) in enumerate(cases)]
    return FILTERS.get("scir").apply(pairs, rows, SimpleNamespace(cfg=cfg))


def test_the_judge_path_with_unscored_responses():
    """The judge's scores as the judge rewarder leaves them: None where no judgement parsed. A pair with an
    unscored chosen or rejected response has no judge vote: dropped, counted, its penalty target 1/2."""
    result = _apply("judge", [
        ([10.0, 0.0, 5.0], [4.0, 3.0, None], 0, 1),  # both vote chosen: S1, S1; the unscored 3rd is not in the pair
        ([10.0, 0.0, 5.0], [4.0, None, 2.0], 0, 1),  # rejected unscored
        ([10.0, 0.0, 5.0], [None, 3.0, 2.0], 0, 2),  # chosen unscored
        ([10.0, 0.0, 5.0], [2.0, 3.0, 1.0], 0, 1),  # the judge prefers rejected: 1 - S1
        ([0.0, 20.0, 5.0], [5.0, 1.0, 3.0], 1, 2),  # chosen 1 over 2: implicit gap 15 -> sigmoid(1.5); judge -2
        ([10.0, 0.0], [None, None], 0, 1),  # no judgement parsed for either response
    ])
    assert result.keep == [True, False, False, False, False, False]
    assert result.weight == pytest.approx([S1 * S1, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert result.fields["penalty"] == [0.5] * 6
    assert result.fields["penalty_target"] == pytest.approx([S1, 0.5, 0.5, 1 - S1, 1 - S2, 0.5])  # sigmoid(-2) = 1 - S2
    m = result.metrics
    assert m["scir/unjudged"] == 3 and m["scir/agreement_rate"] == pytest.approx(1 / 6)
    assert m["scir/mean_weight"] == pytest.approx(S1 * S1)


def test_any_registered_rewarder_casts_the_second_vote_on_its_own_scale():
    # the likelihood's scale is 1 (only the implicit reward's is beta): sigmoid(0.5 / 0.5) = S1
    result = _apply("likelihood", [([10.0, 0.0], [-1.0, -1.5], 0, 1), ([30.0, 0.0], [-2.0, -1.0], 0, 1)],
                    penalty=0.0, temperature=0.5)
    assert result.keep == [True, False] and result.weight == pytest.approx([S1 * S1, 0.0])
    assert result.fields["penalty"] == [0.0, 0.0] and result.metrics["scir/unjudged"] == 0


def test_no_vote_at_all_gives_nan_rates_not_an_error():
    result = _apply("judge", [([10.0, 0.0], [None, 1.0], 0, 1)])
    assert result.keep == [False] and result.metrics["scir/unjudged"] == 1
    assert result.metrics["scir/agreement_rate"] == 0.0 and result.metrics["scir/mean_weight"] != result.metrics["scir/mean_weight"]


def _load(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return load_config(cfg)


@pytest.mark.parametrize("judge, message", [("jury", r"`scir\.judge`: unknown rewarder 'jury'"),
                                            ("implicit", r"`scir\.judge`: must name another rewarder")])
def test_the_judge_is_checked_against_the_registry_at_start_up(judge, message):
    cfg = _load(["experiment=smoke", "pairs=scir", f"scir.judge={judge}"])  # any name composes
    with pytest.raises(ConfigError, match=message):
        preflight.check(cfg)
