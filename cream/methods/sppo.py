"""SPPO (Self-Play Preference Optimization, Wu et al. 2024, arXiv 2405.00675) as losses, checked against the
official code (uclaml/SPPO at 5e61c4e: `scripts/compute_prob.py`, `sppo/trainer.py`).

Each response y_i of a prompt has a win rate P(y_i > pi_t) (`win_rates`): the mean of its preference
probabilities P(y_i > y_j) = preference_probability(reward_scale(rewarder, dpo.beta) x (r_i - r_j), pairs.tau)
(`cream.rewards.pairing`, the one convention of every plug-in) over the prompt's scored responses. By default
(`sppo.opponents=all`) the mean runs over ALL K of them, the response itself included at P(y_i > y_i) = 1/2, as
the official code does: compute_prob.py:45 fills the K x K matrix prb[i][j] = 1 / (1 + exp(s_j - s_i)) diagonal
included, :84 sums each row, :96-97 divides by K. `sppo.opponents=others` averages over the K - 1 others instead
(leave-one-out); its (P - 1/2) is K/(K-1) times the official one.

SPPO regresses the log-ratio onto the win rate (trainer.py:876-879, eta = 1/beta):

    (log pi(y|x) - log pi_t(y|x) - eta * (P(y > pi_t) - 1/2))^2

`dpo.loss=sppo` (the layout `responses`) trains it per response. By default (`sppo.responses=paired`) on the
responses of the prompt's kept pairs, which under `pairs.strategy=best_worst` are the official ones: the argmax
and the argmin of the reward (compute_prob.py:85, 91-92), the loss averaged over them as trainer.py:879
averages loss_w and loss_l; `sppo.responses=all` trains every scored response of a prompt that kept a pair.
`sppo_hard` is TRL's pairwise variant: win rate 1 for chosen and 0 for rejected, so that it equals TRL 1.16's
`loss_type="sppo_hard"` on the same pair.

Differs from the official code: the preference model is the run's self-reward (no PairRM), its gap scaled by
`reward_scale` (dpo.beta for the implicit reward) and tempered by pairs.tau (1: the reward's own Bradley-Terry
probability, as PairRM's sigmoid(s_i - s_j)); eta = 1 / dpo.beta with the run's beta (the official scripts use
beta = 0.001, pipeline.sh:8), which for the implicit reward is also its scale; a prompt without a preference
(all rewards equal, identical texts, fewer than 2 scored) gives no example, as for every method, where the
official code would train its argmax = argmin response; unscored responses (a judge's None) take no part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from cream.errors import require
from cream.plugins.contracts import Loss
from cream.plugins.registry import LOSSES, SETTINGS
from cream.rewards.pairing import preference_probability, reward_scale


@dataclass
class SppoConfig:
    """SPPO's per-response targets (`dpo.loss=sppo`, cream/methods/sppo.py): each response's win rate against the
    prompt's scored responses, P(y_i > y_j) = sigmoid(reward_scale x (r_i - r_j) / pairs.tau)."""

    # all: the mean over every scored response of the prompt, itself included at 1/2 (the official
    # scripts/compute_prob.py) | others: the mean over the K - 1 others (leave-one-out; (P - 1/2) is K/(K-1) times all's)
    opponents: str = "all"
    # paired: the chosen and rejected responses of the prompt's kept pairs (the official trains the best and the worst,
    # pairs.strategy=best_worst) | all: every scored response of a prompt that kept a pair
    responses: str = "paired"

    def __post_init__(self) -> None:
        require(self.opponents in ("all", "others"), "sppo.opponents", f"expected all or others, got {self.opponents!r}")
        require(self.responses in ("paired", "all"), "sppo.responses", f"expected paired or all, got {self.responses!r}")


def win_rates(rewards: Sequence[Optional[float]], tau: Optional[float], scale: float = 1.0,
              opponents: str = "all") -> list[Optional[float]]:
    """Each scored response's mean P(y_i > y_j) = preference_probability(scale x (r_i - r_j), tau): over every
    scored response of the prompt, itself included at 1/2 (`all`, the official), or over the others (`others`).
    None for an unscored response, and for every response when fewer than two are scored (nobody to meet)."""
    scored = [i for i, r in enumerate(rewards) if r is not None]
    if len(scored) < 2:
        return [None] * len(rewards)
    meets = {i: [j for j in scored if opponents == "all" or j != i] for i in scored}
    return [None if r is None else sum(preference_probability(scale * (r - rewards[j]), tau) for j in meets[i]) / len(meets[i])
            for i, r in enumerate(rewards)]


def response_targets(rewards: Sequence[Optional[float]], paired: Sequence[int], cfg) -> list[Optional[float]]:
    """The `Loss.response_targets` of `sppo`: each trained response's win rate, None for the others."""
    rates = win_rates(rewards, cfg.pairs.tau, reward_scale(cfg.rewarder.name, cfg.dpo.beta), cfg.sppo.opponents)
    trained = set(paired) if cfg.sppo.responses == "paired" else set(range(len(rewards)))
    return [rate if i in trained else None for i, rate in enumerate(rates)]


def sppo_loss(logratio: torch.Tensor, win_rate: torch.Tensor, eta: float) -> torch.Tensor:
    """(log pi(y|x) - log pi_t(y|x) - eta * (win rate - 1/2))^2, per response."""
    return (logratio - eta * (win_rate.to(logratio.dtype) - 0.5)) ** 2


def _response_loss(logps: torch.Tensor, batch: dict, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logratio = logps - batch["ref_logps"]
    logged = {"logratio": logratio, "target": batch["target"], "weight": batch["weight"]}
    return batch["weight"] * sppo_loss(logratio, batch["target"], 1 / beta), logged


def _hard_pair_loss(logps: torch.Tensor, batch: dict, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    chosen, rejected = logps.chunk(2)  # the collator stacks [chosen; rejected]
    chosen_ratio, rejected_ratio = chosen - batch["ref_chosen_logps"], rejected - batch["ref_rejected_logps"]
    loss = sppo_loss(chosen_ratio, torch.ones_like(chosen_ratio), 1 / beta) + \
        sppo_loss(rejected_ratio, torch.zeros_like(rejected_ratio), 1 / beta)
    margin = chosen_ratio - rejected_ratio
    logged = {"rewards/margins": margin, "rewards/accuracies": (margin > 0).float(), "weight": batch["weight"]}
    return batch["weight"] * loss, logged


@dataclass(frozen=True)
class _SettingsLoss(Loss):
    settings: tuple[str, ...] = ()  # the configuration keys its examples depend on (`cream.plugins.registry.settings_of`)


# the win rates read `sppo` (and pairs.tau, rewarder.name, dpo.beta, which the pairs stage holds already)
LOSSES.register("sppo", _SettingsLoss("responses", ("target", "weight"), _response_loss, response_targets, ("sppo",)))
LOSSES.register("sppo_hard", Loss("pairs", ("weight",), _hard_pair_loss))
SETTINGS.register("sppo", SppoConfig)
