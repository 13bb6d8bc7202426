"""The losses, kept apart from any trainer: pure functions of log-probs and labels, registered by name
(`dpo.loss`, `cream.plugins.registry.LOSSES`) with the example layout and the per-example columns they read.

`cream` is the only pairwise loss with a soft label: target*(-log s(h)) + (1-target)*(-log s(-h)) with the
pair's label `target`, which is the consistency C the pair trains with (CREAM), 1 (plain DPO), OSP's strength p,
or their combination `soft_label`; each pair's loss is multiplied by its `weight`, and a second label term
(SCIR's inconsistency penalty, against the pair's `penalty_target`) is added with the pair's `penalty` weight.
The measured consistency C_j never reaches a loss: the consistency stage turns it into the C a pair trains
with, and the pairs stage that C into `target`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cream.plugins.contracts import Loss
from cream.plugins.registry import LOSSES


def dpo_logits(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """h = beta * [(log pi(y+) - log pi_ref(y+)) - (log pi(y-) - log pi_ref(y-))], per pair."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def cream_loss(h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """target * (-log sigmoid(h)) + (1 - target) * (-log sigmoid(-h)), per pair: the cross-entropy of sigmoid(h)
    against the pair's label `target` (C itself when the preference is sure, `soft_label`).

    A target of 1 is plain DPO; a constant target is conservative DPO (label smoothing 1 - target).
    """
    target = target.to(h.dtype)
    return -target * F.logsigmoid(h) - (1 - target) * F.logsigmoid(-h)


def soft_label(consistency: float, strength: float) -> float:
    """The `target` of a pair whose ranking is trusted with C (`consistency`) and whose preference has strength p:
    C*p + (1-C)*(1-p), the probability that chosen wins when the ranking is right with probability C.
    It is p when C = 1, C when p = 1, and 1/2 whenever either is 1/2."""
    return consistency * strength + (1 - consistency) * (1 - strength)


def _pair_loss(logps: torch.Tensor, batch: dict, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    chosen, rejected = logps.chunk(2)  # the collator stacks [chosen; rejected]
    h = dpo_logits(chosen, rejected, batch["ref_chosen_logps"], batch["ref_rejected_logps"], beta)
    label_term = cream_loss(h, batch["target"]) + batch["penalty"] * cream_loss(h, batch["penalty_target"])
    logged = {"rewards/margins": h / beta, "rewards/accuracies": (h > 0).float(), "target": batch["target"],
              "weight": batch["weight"], "logps/chosen": chosen, "logps/rejected": rejected}
    return batch["weight"] * label_term, logged


CREAM = LOSSES.register("cream", Loss("pairs", ("target", "weight", "penalty", "penalty_target"), _pair_loss))
