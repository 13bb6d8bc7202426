"""The consistency-regularized DPO loss, kept apart from any trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_logits(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """h = beta * [(log pi(y+) - log pi_ref(y+)) - (log pi(y-) - log pi_ref(y-))], per pair."""
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def cream_loss(h: torch.Tensor, consistency: torch.Tensor) -> torch.Tensor:
    """C * (-log sigmoid(h)) + (1 - C) * (-log sigmoid(-h)), per pair.

    C = 1 is plain DPO; a constant C is conservative DPO (label smoothing 1 - C).
    """
    consistency = consistency.to(h.dtype)
    return -consistency * F.logsigmoid(h) - (1 - consistency) * F.logsigmoid(-h)
