"""The MTL-IO paper's network (Pascal et al., Sci Rep 2022), rebuilt as the speed reference line.

A U-Net with a VGG13-like encoder (64-128-256-512-512, two 3x3 convolutions per level) and a
bilinear decoder, 1x1 sigmoid heads for disc, cup and fovea and a global-max-pooled linear glaucoma
head on the bottleneck: 17.3 M parameters. We never ship it; `glaucoscreen bench` runs it the same
way as our engines so our speed is quoted as a ratio against it.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, mid: int | None = None):
        mid = mid or cout
        super().__init__(nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = DoubleConv(cin, cout, cin // 2)

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], 1))


class ReferenceUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inc = DoubleConv(3, 64)
        self.downs = nn.ModuleList([DoubleConv(64, 128), DoubleConv(128, 256), DoubleConv(256, 512), DoubleConv(512, 512)])
        self.ups = nn.ModuleList([Up(1024, 256), Up(512, 128), Up(256, 64), Up(128, 64)])
        self.heads = nn.Conv2d(64, 3, 1)  # disc, cup, fovea
        self.dropout = nn.Dropout(0.8)
        self.classifier = nn.Linear(512, 1)

    def forward(self, x):
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        bottleneck = skips.pop()
        y = bottleneck
        for up in self.ups:
            y = up(y, skips.pop())
        maps = torch.sigmoid(self.heads(y))
        logit = self.classifier(self.dropout(torch.amax(bottleneck, dim=(2, 3))))
        return maps[:, 0:1], maps[:, 1:2], maps[:, 2:3], logit


def export(path, size: int = 256) -> int:
    """Write the reference network (random weights: only its speed matters) as ONNX; returns parameters."""
    torch.manual_seed(0)
    net = ReferenceUNet().eval()
    torch.onnx.export(net, (torch.zeros(1, 3, size, size),), str(path), input_names=["image"],
                      output_names=["disc", "cup", "fovea", "glaucoma"], opset_version=17, dynamo=False,
                      dynamic_axes={name: {0: "N"} for name in ("image", "disc", "cup", "fovea", "glaucoma")})
    return sum(p.numel() for p in net.parameters())
