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


FOVEA_PEAK_WEIGHT = 1.0


def fovea_loss(prob: torch.Tensor, heatmap: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """L1 on the Gaussian heatmap (MTL-IO), only for samples whose fovea is known.

    Plain L1 over the whole map is minimised almost as well by an all-zero map (the Gaussian covers
    ~0.2% of the pixels), which is what our first model learned. The second term is the same L1
    weighted by the heatmap itself and normalised by its mass, so missing the peak costs as much as
    the whole background.
    """
    if not bool(known.any()):
        return prob.sum() * 0.0
    prob, heatmap = prob[known], heatmap[known]
    error = (prob - heatmap).abs()
    dims = tuple(range(1, error.ndim))
    peak = (error * heatmap).sum(dims) / heatmap.sum(dims).clamp_min(EPS)
    return error.mean() + FOVEA_PEAK_WEIGHT * peak.mean()


def focal_loss(logit: torch.Tensor, label: torch.Tensor, known: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss for the glaucoma logit; samples with an unknown grade are left out."""
    if not bool(known.any()):
        return logit.sum() * 0.0
    logit, label = logit[known].flatten(), label[known].flatten()
    bce = F.binary_cross_entropy_with_logits(logit, label, reduction="none")
    p_true = torch.exp(-bce)
    return ((1.0 - p_true) ** gamma * bce).mean()


def task_losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], tasks=None) -> dict[str, torch.Tensor]:
    """Unweighted loss per task the network has an output for (disc, cup, fovea, glaucoma), or only for
    `tasks`: an MTL-IO step and a single-task arm need one loss, not all four."""
    losses = {
        "disc": lambda: mask_loss(out["disc"], batch["disc"]),
        "cup": lambda: mask_loss(out["cup"], batch["cup"]),
        "fovea": lambda: fovea_loss(out["fovea"], batch["fovea"], batch["fovea_known"]),
        "glaucoma": lambda: focal_loss(out["glaucoma"], batch["glaucoma"], batch["glaucoma_known"]),
    }
    return {task: loss() for task, loss in losses.items() if task in out and (tasks is None or task in tasks)}
