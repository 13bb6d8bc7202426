"""SCIR (Self-Consistent Internal Rewards: "Self-Consistency of the Internal Reward Models Improves
Self-Rewarding Language Models", Zhou et al. 2025, arXiv 2502.08922) as a pair filter.

Two internal reward models of the same LLM vote on each pair: the implicit DPO reward
r = log pi_t - log pi_ref (the reward stage's `implicit`, with the reference `rewarder.reference` names)
and the model's judge (`scir.judge`, a registered rewarder: `judge` as in the paper). Each turns its reward
gap into the probability that chosen wins by the convention of `cream.rewards.pairing`,
preference_probability(reward_scale(R, dpo.beta) x gap, tau):
- implicit: sigmoid(dpo.beta x (r(chosen) - r(rejected))) (tau 1), the Bradley-Terry probability of the DPO
  implicit reward model whose reward is beta times the log-ratio;
- judge: sigmoid((s(chosen) - s(rejected)) / scir.judge_temperature) (scale 1); a response the judge could
  not score gives no vote (the pair is dropped, counted in `scir/unjudged`).
A pair is kept only when both prefer chosen (both probabilities above 1/2), weighted by their product,
the joint confidence. With `scir.penalty` > 0 the loss adds penalty * CE(sigmoid(h), judge probability):
the policy's implicit preference of the pair pulled toward the judge's, which is a fixed target (computed
here, never differentiated). `scir/agreement_rate` is logged per iteration.

Where this differs from the paper, by choice:
- it votes once per iteration, before training, on M_t's rewards; the paper collects both models'
  predictions in each training step, from the model being trained, and its penalty enforces consistency
  *and confidence* between them. Here the votes are fixed: the selection and weights do not follow the
  policy as it trains, and the penalty pulls only toward the judge's probability (no confidence term).
  A vote computed once keeps the pairs stage a filter like the others (no judge call inside the trainer).
- the penalty's h is the policy's implicit margin relative to M_t (DPO's reference here), while the vote's
  implicit reward uses `rewarder.reference` (M0 by default, as CREAM's reward): the two implicit
  preferences are of different reward models unless rewarder.reference names M_t. DPO here always trains
  relative to M_t (the model it starts from), and the vote reads the reward stage's implicit reward, the
  one every other method's pairs are ranked by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cream.config import Config
from cream.errors import ConfigError, require
from cream.rewards.pairing import preference_probability, reward_scale
from cream.plugins.contracts import FilterResult
from cream.plugins.registry import FILTERS, LOSSES, REWARDERS, SETTINGS


@dataclass
class ScirConfig:
    """SCIR's filter (`pairs.filters=[scir]`): the implicit reward and a judge vote on each pair."""

    # the rewarder of the second vote, a registered name (checked at start-up): the model's own judge (the paper)
    judge: str = "judge"
    # the judge's preference probability sigmoid(score gap / judge_temperature)
    judge_temperature: float = 1.0
    # weight of the inconsistency penalty pulling sigmoid(h) toward the judge's probability; 0 = off
    penalty: float = 0.0

    def __post_init__(self) -> None:
        require(self.judge_temperature > 0, "scir.judge_temperature", f"must be > 0, got {self.judge_temperature}")
        require(self.penalty >= 0, "scir.penalty", f"must be >= 0, got {self.penalty}")

IMPLICIT = "implicit"  # the rewarder of the first vote, as it registers


@dataclass(frozen=True)
class Vote:
    implicit: float  # the implicit reward's probability that chosen wins
    judge: Optional[float]  # the judge's; None: it scored one of the two responses not at all
    agree: bool  # both prefer chosen
    weight: float  # the joint confidence implicit * judge when they agree, else 0


def vote(implicit_gap: float, judge_gap: Optional[float], beta: float, judge_temperature: float,
         judge_name: str = "judge") -> Vote:
    """The two internal reward models' verdicts on a pair from their reward gaps (chosen - rejected)."""
    implicit = preference_probability(reward_scale(IMPLICIT, beta) * implicit_gap, 1.0)
    judge = None if judge_gap is None else preference_probability(
        reward_scale(judge_name, beta) * judge_gap, judge_temperature)
    agree = judge is not None and implicit > 0.5 and judge > 0.5
    return Vote(implicit, judge, agree, implicit * judge if agree else 0.0)


class ScirFilter:
    settings = ("scir", "dpo.beta")  # what its result reads: its group and the implicit vote's scale

    def rewarders(self, cfg: Config) -> tuple[str, ...]:
        return IMPLICIT, cfg.scir.judge

    def check(self, cfg: Config) -> None:
        REWARDERS.get(cfg.scir.judge, "scir.judge")
        if cfg.scir.judge == IMPLICIT:
            raise ConfigError("config key `scir.judge`: must name another rewarder than `implicit`, which casts the "
                              "other vote (the paper's second vote is the model's judge, `judge`)")
        if cfg.scir.penalty > 0 and "penalty" not in LOSSES.get(cfg.dpo.loss).columns:
            raise ConfigError(f"config key `scir.penalty`: dpo.loss={cfg.dpo.loss} has no penalty term; use "
                              f"dpo.loss=cream or scir.penalty=0")

    def apply(self, pairs, rewards, ctx) -> FilterResult:
        cfg = ctx.cfg
        judge_name = self.rewarders(cfg)[1]
        votes = []
        for pair in pairs:
            scores = rewards[pair.id].scores
            implicit, judge = scores[IMPLICIT], scores[judge_name]
            c, r = pair.chosen_index, pair.rejected_index
            judge_gap = None if judge[c] is None or judge[r] is None else judge[c] - judge[r]
            votes.append(vote(implicit[c] - implicit[r], judge_gap, cfg.dpo.beta, cfg.scir.judge_temperature, judge_name))
        kept = [v for v in votes if v.agree]
        metrics = {
            "scir/agreement_rate": len(kept) / len(votes) if votes else float("nan"),
            "scir/unjudged": sum(v.judge is None for v in votes),
            "scir/mean_weight": sum(v.weight for v in kept) / len(kept) if kept else float("nan"),
        }
        return FilterResult(
            keep=[v.agree for v in votes], weight=[v.weight for v in votes], metrics=metrics,
            fields={"penalty": [cfg.scir.penalty] * len(votes),
                    "penalty_target": [0.5 if v.judge is None else v.judge for v in votes]},
        )


FILTERS.register("scir", ScirFilter())
SETTINGS.register("scir", ScirConfig)
