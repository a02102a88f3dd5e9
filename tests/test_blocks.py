"""The hand-written parts: CBAM channel attention, the hierarchical split convolution (paper's
eq. (2) vs Res2Net's) and the MS-ResUnit; plus the paper's parameter claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spineseg.errors import ModelError
from spineseg.models import (
    ChannelAttention,
    HierarchicalConv,
    MSResUnit,
    ResidualDoubleConv,
    build_model,
    count_parameters,
)


def test_channel_attention_matches_a_hand_computation():
    rng = np.random.default_rng(7)
    f = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    w1 = rng.normal(size=(4, 4)).astype(np.float32)  # hidden = max(4 // 2, min(4, 4)) = 4
    b1 = rng.normal(size=4).astype(np.float32)
    w2 = rng.normal(size=(4, 4)).astype(np.float32)
    b2 = rng.normal(size=4).astype(np.float32)
    att = ChannelAttention(4, reduction=2)
    with torch.no_grad():
        att.mlp[0].weight.copy_(torch.from_numpy(w1)[:, :, None, None])
        att.mlp[0].bias.copy_(torch.from_numpy(b1))
        att.mlp[2].weight.copy_(torch.from_numpy(w2)[:, :, None, None])
        att.mlp[2].bias.copy_(torch.from_numpy(b2))
        out = att(torch.from_numpy(f)).numpy()

    def mlp(v: np.ndarray) -> np.ndarray:  # v: (N, C)
        return np.maximum(v @ w1.T + b1, 0) @ w2.T + b2

    gate = 1 / (1 + np.exp(-(mlp(f.mean(axis=(2, 3))) + mlp(f.max(axis=(2, 3))))))
    np.testing.assert_allclose(out, f * gate[:, :, None, None], rtol=1e-5, atol=1e-6)


def test_channel_attention_shares_one_mlp_and_floors_the_hidden_width():
    att = ChannelAttention(64, reduction=16)
    convs = [m for m in att.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 4), (4, 64)]
    assert ChannelAttention(32, reduction=16).mlp[0].out_channels == 4
    assert ChannelAttention(128, reduction=16).mlp[0].out_channels == 8


def _positive_hierarchy(hierarchy: str, channels: int = 8) -> HierarchicalConv:
    """Eval mode (BN = fixed affine, no batch coupling) and positive weights (all ReLUs open), so
    gradients reveal the true connectivity, not where random weights happen to cancel."""
    torch.manual_seed(0)
    block = HierarchicalConv(channels, scales=4, hierarchy=hierarchy).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.rand_like(p) * 0.5 + 0.1)
    return block


@pytest.mark.parametrize(("hierarchy", "depends"), [("paper", True), ("res2net", False)])
def test_y2_depends_on_x1_only_in_the_papers_form(hierarchy, depends):
    block = _positive_hierarchy(hierarchy)
    x = torch.rand(1, 8, 9, 9, requires_grad=True)
    y = block.branches(x)
    assert len(y) == 4
    (grad,) = torch.autograd.grad(y[1].sum(), x)
    x1_grad = grad[:, :2]  # the first of 4 groups of 2 channels
    if depends:
        assert x1_grad.abs().sum() > 0
    else:
        assert torch.count_nonzero(x1_grad) == 0
    assert grad[:, 2:4].abs().sum() > 0  # x2 always feeds y2
    assert torch.count_nonzero(grad[:, 4:]) == 0  # x3, x4 never do


def _footprint(block: HierarchicalConv, branch: int, size: int = 15) -> int:
    """Number of input pixels that influence the centre pixel of y_branch (any channel)."""
    x = torch.rand(1, 8, size, size, requires_grad=True)
    y = block.branches(x)[branch]
    (grad,) = torch.autograd.grad(y[0, :, size // 2, size // 2].sum(), x)
    return int(torch.count_nonzero(grad.abs().sum(dim=(0, 1))))


@pytest.mark.parametrize("hierarchy", ["paper", "res2net"])
def test_receptive_field_grows_with_the_group_index(hierarchy):
    block = _positive_hierarchy(hierarchy)
    sides = [round(float(np.sqrt(_footprint(block, i)))) for i in range(4)]
    assert sides == [1, 3, 5, 7]  # y1 = x1 (1×1), then 3×3, 5×5, 7×7 as the paper states
    assert _footprint(block, 3) > _footprint(block, 1)


def test_hierarchy_output_keeps_the_width_and_y1_is_x1():
    block = _positive_hierarchy("paper")
    x = torch.rand(2, 8, 6, 6)
    out = block(x)
    assert out.shape == x.shape
    assert torch.equal(out[:, :2], x[:, :2])


@pytest.mark.parametrize(
    ("kwargs", "hier", "att"),
    [({}, True, True), ({"multiscale": False}, False, True), ({"attention": False}, True, False)],
)
def test_msres_unit_switches(kwargs, hier, att):
    unit = MSResUnit(16, 32, reduction=2, scales=4, attention_reduction=4, **kwargs)
    assert isinstance(unit.multiscale, HierarchicalConv) is hier
    assert isinstance(unit.attention, ChannelAttention) is att
    assert isinstance(unit.shortcut, torch.nn.Module) and not isinstance(
        unit.shortcut, torch.nn.Identity)  # 16 -> 32 channels needs a projection
    y = unit(torch.randn(2, 16, 8, 8))
    assert y.shape == (2, 32, 8, 8)
    assert (y >= 0).all()  # ReLU after the addition
    assert isinstance(MSResUnit(32, 32).shortcut, torch.nn.Identity)


def test_msres_unit_bottleneck_reduces_then_expands():
    unit = MSResUnit(32, 64, reduction=2, scales=4)
    assert unit.reduce.conv.out_channels == 32
    assert unit.expand.conv.in_channels == 32 and unit.expand.conv.out_channels == 64
    assert all(c.conv.in_channels == 8 for c in unit.multiscale.convs)


def test_residual_double_conv_is_residual():
    torch.manual_seed(0)
    block = ResidualDoubleConv(8, 8).eval()
    with torch.no_grad():
        for p in block.body.parameters():
            p.zero_()  # body outputs 0 (BN bias 0): the unit reduces to ReLU(identity)
        x = torch.randn(1, 8, 6, 6)
        assert torch.allclose(block(x), torch.relu(x))


def test_widths_not_divisible_by_scales_are_refused():
    with pytest.raises(ModelError, match="not divisible by scales=4"):
        HierarchicalConv(6, scales=4)
    with pytest.raises(ModelError, match="reduction=3"):
        MSResUnit(8, 16, reduction=3)


def test_paper_network_is_smaller_than_unet_at_the_default_width():
    msr = build_model("msrunet")
    unet = build_model("unet")
    assert msr.config.base_width == unet.config.base_width == 32
    assert msr.config.depth == unet.config.depth == 4
    assert count_parameters(msr) < count_parameters(unet)
