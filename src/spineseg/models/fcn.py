"""FCN-8s-style baseline (Long et al. 2015), trained from scratch (no downloaded weights).

VGG-style encoder: stage i is two 3×3 conv-BN-ReLU of ``base_width * 2**i`` channels followed
by 2×2 max pooling; the bottom stage (FCN's fc6/fc7, here 3×3 convs) works at 1/2**depth. As in
FCN-8s, 1×1 score layers on the three coarsest scales are fused coarse-to-fine: the coarse score
is up-sampled ×2 by a transposed conv and added to the next one, and the sum is up-sampled to
the input size. With depth 4 the three scales are 1/16, 1/8, 1/4 (VGG's 1/32, 1/16, 1/8 need 5
pools, which a 3 mm slice cannot afford). Batch norm is added (VGG-BN) so it trains from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from spineseg.models.blocks import DoubleConv
from spineseg.models.registry import ModelConfig, SegmentationNet, register_model, stage_widths

__all__ = ["FCN", "FCNConfig"]


@dataclass(frozen=True)
class FCNConfig(ModelConfig):
    """FCN needs three scales to fuse, hence depth >= 2."""

    min_depth: ClassVar[int] = 2


def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable ×``factor`` up-sampling initialised to bilinear interpolation, as in FCN."""
    kernel = 2 * factor
    up = nn.ConvTranspose2d(channels, channels, kernel, stride=factor, padding=factor // 2,
                            bias=False)
    centre = (kernel - 1) / 2
    ramp = 1 - torch.abs(torch.arange(kernel, dtype=torch.float32) - centre) / factor
    bilinear = ramp[:, None] * ramp[None, :]
    with torch.no_grad():
        up.weight.zero_()
        for c in range(channels):
            up.weight[c, c] = bilinear
    return up


class FCN(SegmentationNet):
    """FCN-8s-style fully convolutional network (Table 1 baseline)."""

    def __init__(self, config: FCNConfig) -> None:
        super().__init__(config)
        widths = stage_widths(config.base_width, config.depth)
        ins = [config.in_channels, *widths[:-1]]
        self.stages = nn.ModuleList(DoubleConv(i, o) for i, o in zip(ins, widths, strict=True))
        self.pool = nn.MaxPool2d(2)
        out = config.out_channels
        # Score layers, coarsest first: bottom (1/2**depth), then the two encoder stages above.
        self.scores = nn.ModuleList(nn.Conv2d(widths[-1 - k], out, 1) for k in range(3))
        self.up2 = nn.ModuleList(_upsampler(out, 2) for _ in range(2))
        factor = 2 ** (config.depth - 2)
        self.final_up: nn.Module = _upsampler(out, factor) if factor > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else self.pool(x))
            feats.append(x)
        fused = self.scores[0](feats[-1])
        for k in (1, 2):
            fused = self.up2[k - 1](fused) + self.scores[k](feats[-1 - k])
        return self.final_up(fused)


@register_model("fcn", FCNConfig)
def _build_fcn(config: FCNConfig) -> FCN:
    return FCN(config)
