"""The U-Net skeleton shared by the plain U-Net and the paper's network, and the plain U-Net.

Skeleton (Ronneberger et al. 2015, as the paper uses it): ``depth`` encoder stages each followed
by 2×2 max pooling, a bottom stage, a decoder that up-samples with a 2×2 stride-2 transposed
convolution, concatenates the encoder map of the same size and applies a stage unit, and a final
1×1 convolution to ``out_channels`` logits. Only the stage unit differs between networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from spineseg.models.blocks import DoubleConv
from spineseg.models.registry import ModelConfig, SegmentationNet, register_model, stage_widths

__all__ = ["UNet", "UNetConfig", "UNetSkeleton"]

UnitFactory = Callable[[int, int], nn.Module]


class UNetSkeleton(SegmentationNet):
    """Encoder–decoder with skip concatenation; ``unit(in_ch, out_ch)`` builds each stage."""

    def __init__(self, config: ModelConfig, unit: UnitFactory) -> None:
        super().__init__(config)
        widths = stage_widths(config.base_width, config.depth)
        ins = [config.in_channels, *widths[:-2]]
        self.encoders = nn.ModuleList(unit(i, o) for i, o in zip(ins, widths[:-1], strict=True))
        self.pool = nn.MaxPool2d(2)
        self.bottom = unit(widths[-2], widths[-1])
        # Decoder level i takes the map of level i+1, halves its width by up-sampling, and
        # concatenates the skip of level i (so the unit sees 2 * widths[i] channels).
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2)
            for i in reversed(range(config.depth))
        )
        self.decoders = nn.ModuleList(
            unit(2 * widths[i], widths[i]) for i in reversed(range(config.depth))
        )
        self.head = nn.Conv2d(widths[0], config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@dataclass(frozen=True)
class UNetConfig(ModelConfig):
    """The plain U-Net has no switches beyond the shared ones."""


class UNet(UNetSkeleton):
    """Plain U-Net: two 3×3 conv-BN-ReLU per stage (Table 1 baseline, Table 2 case 1)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config, DoubleConv)


@register_model("unet", UNetConfig)
def _build_unet(config: UNetConfig) -> UNet:
    return UNet(config)
