"""SPPO (Self-Play Preference Optimization, Wu et al. 2024, arXiv 2405.00675) as losses.

Each response y of a prompt has a win rate P(y > pi_t), its mean preference probability against the
prompt's other samples under the self-reward (`cream.rewards.pairing.win_rates`, P(y_i > y_j) = sigmoid((r_i -
r_j) / pairs.tau)). SPPO regresses the log-ratio onto it:

    (log pi(y|x) - log pi_t(y|x) - eta * (P(y > pi_t) - 1/2))^2

over every scored response (`dpo.loss=sppo`, the layout `responses`). `sppo_hard` is TRL's pairwise
variant: win rate 1 for chosen and 0 for rejected. eta = 1 / dpo.beta, TRL's convention, so that
`sppo_hard` here equals TRL 1.16's `loss_type="sppo_hard"` on the same pair.
"""

from __future__ import annotations

import torch

from cream.plugins.contracts import Loss
from cream.plugins.registry import LOSSES


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


LOSSES.register("sppo", Loss("responses", ("target", "weight"), _response_loss))
LOSSES.register("sppo_hard", Loss("pairs", ("weight",), _hard_pair_loss))
