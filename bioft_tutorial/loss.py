"""The training objective, used by training and evaluation alike: a *sum* over labelled targets.

A sum, not a mean: a step divides it by the labelled targets of the whole step (every micro-batch, every
process), so the gradient is the same however the step is cut into batches or spread over GPUs.
Needs only torch (and the label convention of :mod:`bioft_tutorial.data`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bioft_tutorial.data import IGNORE_INDEX  # -100: no target here; PyTorch's cross-entropy skips it


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed loss over labelled targets, in fp32: cross-entropy (nats) for class ids (``-100`` ignored),
    squared error for float targets.

    Args:
        logits: (B, L, C) per token, or (B, C) per sequence (C = 1 for regression).
        labels: (B, L) or (B,) int64 class ids, or (B,) float targets.

    Returns:
        A scalar tensor: nats (classes) or squared units (regression), summed.
    """
    if labels.is_floating_point():
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="sum")
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")
