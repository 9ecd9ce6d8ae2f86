"""The multi-task network: output shapes, parameter budget, and that ImageNet weights really load."""
from __future__ import annotations

import pytest
import torch

from models.net import EfficientNetLite0, build_net, load_pretrained_encoder, parameter_count, pretrained_lite0_path

PARAMETER_BUDGET = 4_500_000


def test_outputs_and_parameter_budget():
    net = build_net(pretrained=False).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 96, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "disc": (2, 1, 96, 96), "cup": (2, 1, 96, 96), "fovea": (2, 1, 96, 96), "glaucoma": (2, 1)}
    for name in ("disc", "cup", "fovea"):
        assert 0.0 <= float(out[name].min()) and float(out[name].max()) <= 1.0
    assert 3_000_000 < parameter_count(net) < PARAMETER_BUDGET


def test_pretrained_encoder_weights_are_the_files():
    state = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
    net = build_net(pretrained=True)
    for key in ("_conv_stem.weight", "_blocks.7._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(net.encoder.state_dict()[key], state[key])
    fresh = build_net(pretrained=False)
    assert not torch.equal(fresh.encoder.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"])


def test_an_incomplete_weight_file_is_refused(tmp_path):
    state = torch.load(pretrained_lite0_path(), map_location="cpu", weights_only=True)
    del state["_blocks.3._expand_conv.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(RuntimeError, match="1 missing keys"):
        load_pretrained_encoder(EfficientNetLite0(), tmp_path / "partial.pth")
