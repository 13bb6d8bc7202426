"""SCIR (Self-Consistent Internal Rewards: "Self-Consistency of the Internal Reward Models Improves
Self-Rewarding Language Models", Zhou et al. 2025) as a pair filter.

Two internal reward models of the same LLM vote on each pair: the implicit DPO reward
r = log pi_t - log pi_ref (the reward stage's `implicit`, with the reference `rewarder.reference` names)
and the model's judge (`scir.judge`, a registered rewarder: `judge` as in the paper). Their preference
probabilities for the chosen response are
- implicit: sigmoid(dpo.beta * (r(chosen) - r(rejected))), the Bradley-Terry probability of the DPO
  implicit reward model whose reward is beta times the log-ratio;
- judge: sigmoid((s(chosen) - s(rejected)) / scir.judge_temperature); a response the judge could not
  score gives no vote.
A pair is kept only when both prefer chosen (both probabilities above 1/2), weighted by their product,
the joint confidence. With `scir.penalty` > 0 the loss adds penalty * CE(sigmoid(h), judge probability):
the policy's implicit preference of the pair pulled toward the judge's, which is a fixed target (computed
here, never differentiated). `scir/agreement_rate` is logged per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cream.config import Config
from cream.config.plugins import RewarderName
from cream.errors import ConfigError
from cream.rewards.pairing import preference_probability
from cream.plugins.contracts import FilterResult
from cream.plugins.registry import FILTERS, LOSSES, REWARDERS

IMPLICIT = RewarderName.implicit.value


@dataclass(frozen=True)
class Vote:
    implicit: float  # the implicit reward's probability that chosen wins
    judge: Optional[float]  # the judge's; None: it scored one of the two responses not at all
    agree: bool  # both prefer chosen
    weight: float  # the joint confidence implicit * judge when they agree, else 0


def vote(implicit_gap: float, judge_gap: Optional[float], beta: float, judge_temperature: float) -> Vote:
    """The two internal reward models' verdicts on a pair from their reward gaps (chosen - rejected)."""
    implicit = preference_probability(beta * implicit_gap, 1.0)
    judge = None if judge_gap is None else preference_probability(judge_gap, judge_temperature)
    agree = judge is not None and implicit > 0.5 and judge > 0.5
    return Vote(implicit, judge, agree, implicit * judge if agree else 0.0)


class ScirFilter:
    def rewarders(self, cfg: Config) -> tuple[str, ...]:
        return IMPLICIT, getattr(cfg.scir.judge, "value", cfg.scir.judge)

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
            votes.append(vote(implicit[c] - implicit[r], judge_gap, cfg.dpo.beta, cfg.scir.judge_temperature))
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
