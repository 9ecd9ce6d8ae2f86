"""The disc-crop glaucoma classifier: a second opinion on the same crop the segmentation's pass 2 sees.

Why a separate engine: the multi-task logit shares its encoder with four other tasks and is trained
on the same few dozen glaucomatous photos; GlaucoScreen classifies the disc plus margin on its own,
and the MTL-IO paper gains by fusing independent estimates. It takes the pass-2 input tensor as it
is (256 px, three disc diameters, ImageNet-normalised), so the unit adds one inference and no
preprocessing.

Size: the first 11 blocks of EfficientNet-Lite0 (through the 112-channel stage, stride 16) keep the
ImageNet features that matter at this scale for 0.70 M parameters; with the segmentation network
(3.96 M) and the progression engine (0.26 M) all engines stay under 5 M.
"""
from __future__ import annotations

import torch
from torch import nn

from models.net import LiteStem, load_pretrained_encoder

ENCODER_BLOCKS = 11


class DiscClassifier(nn.Module):
    """forward(x) -> {glaucoma: N x 1 logit}; the same output name as the segmentation network's head,
    so training, validation and export treat both alike."""

    def __init__(self, dropout: float = 0.5, width: int = 192):
        super().__init__()
        self.encoder = LiteStem(ENCODER_BLOCKS)
        self.neck = nn.Sequential(nn.Conv2d(self.encoder.out_channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU6())
        self.glaucoma = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.neck(self.encoder(x))
        return {"glaucoma": self.glaucoma(torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1))}


def build_classifier(pretrained: bool = True, dropout: float = 0.5) -> DiscClassifier:
    net = DiscClassifier(dropout=dropout)
    if pretrained:
        load_pretrained_encoder(net.encoder)
    return net
