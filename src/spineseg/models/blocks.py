"""Stage units of the networks: U-Net's double convolution, its residual variant and the paper's
multi-scale residual unit with channel attention (MS-ResUnit).

Convolution + batch norm + ReLU come from MONAI's ``Convolution``. MONAI has no Res2Net-style
hierarchical split convolution and no CBAM channel attention (its ``ChannelSELayer`` is
squeeze-and-excitation: average pooling only, no max-pooled descriptor), so exactly those two are
written here by hand.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.blocks import Convolution
from torch import nn

from spineseg.errors import ModelError

__all__ = [
    "ChannelAttention",
    "DoubleConv",
    "HierarchicalConv",
    "MSResUnit",
    "ResidualDoubleConv",
    "conv_bn",
]

Hierarchy = Literal["paper", "res2net"]
HIERARCHIES: tuple[str, ...] = ("paper", "res2net")


def conv_bn(in_ch: int, out_ch: int, kernel_size: int = 3, act: bool = True) -> Convolution:
    """Conv (no bias: batch norm follows and would cancel it) → BN → optional ReLU, same padding."""
    return Convolution(2, in_ch, out_ch, kernel_size=kernel_size, act="RELU" if act else None,
                       norm="BATCH", bias=False)


def _shortcut(in_ch: int, out_ch: int) -> nn.Module:
    """Identity when the width is kept, else a 1×1 projection + BN (ResNet's option B)."""
    return nn.Identity() if in_ch == out_ch else conv_bn(in_ch, out_ch, 1, act=False)


class DoubleConv(nn.Sequential):
    """U-Net's stage unit: two 3×3 conv-BN-ReLU, no shortcut (Table 2, case 1)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(conv_bn(in_ch, out_ch), conv_bn(out_ch, out_ch))


class ResidualDoubleConv(nn.Module):
    """Two 3×3 convs with a shortcut, ReLU after the addition (Table 2, cases 2–3)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(in_ch, out_ch), conv_bn(out_ch, out_ch, act=False))
        self.shortcut = _shortcut(in_ch, out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ChannelAttention(nn.Module):
    """CBAM channel attention, the paper's eq. (3)–(4).

    Mc(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), F' = Mc(F) ⊗ F, with ONE two-layer MLP
    (1×1 convs, hidden width ``channels // reduction``, ReLU) shared by both descriptors:
    average pooling sees how much of a channel fires, max pooling how strongly. The hidden width
    is floored at ``min(channels, 4)``: narrow stages (32 channels with r = 16) would otherwise
    end in one or two ReLU units, which can die and freeze the whole gate.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1:
            raise ModelError(f"attention reduction must be >= 1, got {reduction}")
        hidden = max(channels // reduction, min(channels, 4))
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The channel weights Mc(F), shape (N, C, 1, 1), each in (0, 1)."""
        # Pooled from a contiguous (NCHW) copy: on a channels-last tensor each channel's pixels
        # are strided and torch's CPU reductions over them are slow (in bfloat16 ~10x the cost
        # of the copy), while a contiguous plane reduces at memory speed.
        f = x.contiguous()
        avg = torch.mean(f, dim=(2, 3), keepdim=True)
        mx = torch.amax(f, dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class HierarchicalConv(nn.Module):
    """Split channels into ``scales`` groups x1..xs and convolve them hierarchically.

    ``hierarchy="paper"`` is the paper's eq. (2): y1 = x1, y_i = K_i(x_i + y_{i-1}) for i >= 2,
    so y2 already sees x1. ``"res2net"`` is Res2Net's original: y2 = K2(x2) and
    y_i = K_i(x_i + y_{i-1}) for i >= 3. Each K_i is a 3×3 conv-BN-ReLU; the receptive field
    grows by 2 pixels per group (y2 3×3, y3 5×5, y4 7×7 in the paper's form), giving several
    scales at the cost of one.
    """

    def __init__(self, channels: int, scales: int = 4, hierarchy: Hierarchy = "paper") -> None:
        super().__init__()
        if scales < 2:
            raise ModelError(f"scales must be >= 2 for a hierarchy, got {scales}")
        if channels % scales:
            raise ModelError(f"bottleneck width {channels} is not divisible by scales={scales}")
        if hierarchy not in HIERARCHIES:
            raise ModelError(f"unknown hierarchy {hierarchy!r}; valid choices: "
                             f"{', '.join(HIERARCHIES)}")
        self.scales = scales
        self.hierarchy = hierarchy
        self.group = channels // scales
        self.convs = nn.ModuleList(conv_bn(self.group, self.group) for _ in range(scales - 1))

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs y1..ys, one per group (exposed so tests can probe each scale)."""
        xs = torch.split(x, self.group, dim=1)
        ys = [xs[0]]
        for i, conv in enumerate(self.convs, start=1):
            first_res2net = self.hierarchy == "res2net" and i == 1
            ys.append(conv(xs[i] if first_res2net else xs[i] + ys[-1]))
        return ys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.branches(x), dim=1)


class MSResUnit(nn.Module):
    """The paper's multi-scale residual unit with channel attention.

    1×1 conv-BN-ReLU reduce to ``out_ch // reduction`` → hierarchical 3×3 (or, with
    ``multiscale=False``, one plain 3×3 conv-BN-ReLU) → 1×1 conv-BN expand to ``out_ch`` →
    channel attention (optional) → + shortcut (identity, or 1×1 projection when the width
    changes) → ReLU. As in ResNet, the expanding conv has no ReLU of its own: the activation
    comes after the addition (method step 6).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        reduction: int = 2,
        scales: int = 4,
        hierarchy: Hierarchy = "paper",
        multiscale: bool = True,
        attention: bool = True,
        attention_reduction: int = 16,
    ) -> None:
        super().__init__()
        if reduction < 1 or out_ch % reduction:
            raise ModelError(f"unit width {out_ch} is not divisible by bottleneck "
                             f"reduction={reduction}")
        mid = out_ch // reduction
        self.reduce = conv_bn(in_ch, mid, 1)
        self.multiscale: nn.Module = (
            HierarchicalConv(mid, scales, hierarchy) if multiscale else conv_bn(mid, mid)
        )
        self.expand = conv_bn(mid, out_ch, 1, act=False)
        self.attention: nn.Module = (
            ChannelAttention(out_ch, attention_reduction) if attention else nn.Identity()
        )
        self.shortcut = _shortcut(in_ch, out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(self.expand(self.multiscale(self.reduce(x))))
        return self.act(y + self.shortcut(x))
