"""Per-task losses of the multi-task network, each masked to the samples that carry its label.

Why masked: real photos have disc and cup masks but no fovea, REFUGE-style photos without labels
have no glaucoma grade; a sample without a label must contribute nothing (not a zero target).
Each task is its own function so the MTL-IO mode can step one optimizer per task.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per sample, averaged; empty target and empty prediction count as a match."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    total = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + 1.0) / (total + 1.0)).mean()


def mask_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice, for disc and cup."""
    prob = prob.clamp(EPS, 1.0 - EPS)
    return F.binary_cross_entropy(prob, target) + soft_dice_loss(prob, target)


def fovea_loss(prob: torch.Tensor, heatmap: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """L1 on the Gaussian heatmap (MTL-IO), only for samples whose fovea is known."""
    if not bool(known.any()):
        return prob.sum() * 0.0
    return F.l1_loss(prob[known], heatmap[known])


def focal_loss(logit: torch.Tensor, label: torch.Tensor, known: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss for the glaucoma logit; samples with an unknown grade are left out."""
    if not bool(known.any()):
        return logit.sum() * 0.0
    logit, label = logit[known].flatten(), label[known].flatten()
    bce = F.binary_cross_entropy_with_logits(logit, label, reduction="none")
    p_true = torch.exp(-bce)
    return ((1.0 - p_true) ** gamma * bce).mean()


def task_losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unweighted loss per task: disc, cup, fovea, glaucoma."""
    return {
        "disc": mask_loss(out["disc"], batch["disc"]),
        "cup": mask_loss(out["cup"], batch["cup"]),
        "fovea": fovea_loss(out["fovea"], batch["fovea"], batch["fovea_known"]),
        "glaucoma": focal_loss(out["glaucoma"], batch["glaucoma"], batch["glaucoma_known"]),
    }
