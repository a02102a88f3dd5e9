"""SegNet baseline (Badrinarayanan et al. 2017): encoder–decoder without skip concatenation.

The encoder stores the arg-max positions of each 2×2 max pooling; the decoder up-samples with
max-unpooling at exactly those positions (sparse maps, no learned up-sampling) and densifies them
with conv-BN-ReLU. Stage i works at ``base_width * 2**i`` channels; the last conv of each decoder
stage narrows to the width of the next unpooling, as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spineseg.models.blocks import DoubleConv, conv_bn
from spineseg.models.registry import ModelConfig, SegmentationNet, register_model, stage_widths

__all__ = ["SegNet", "SegNetConfig"]


@dataclass(frozen=True)
class SegNetConfig(ModelConfig):
    """SegNet has no switches beyond the shared ones."""


class SegNet(SegmentationNet):
    """Encoder–decoder with pooling-index unpooling (Table 1 baseline)."""

    def __init__(self, config: SegNetConfig) -> None:
        super().__init__(config)
        w = stage_widths(config.base_width, config.depth)
        d = config.depth
        ins = [config.in_channels, *w[: d - 1]]
        self.encoders = nn.ModuleList(DoubleConv(i, o) for i, o in zip(ins, w[:d], strict=True))
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.bottom = nn.Sequential(conv_bn(w[d - 1], w[d]), conv_bn(w[d], w[d - 1]))
        # Decoder level i: unpool to w[i] channels, conv, then narrow to w[i-1] (w[0] at the top).
        self.decoders = nn.ModuleList(
            nn.Sequential(conv_bn(w[i], w[i]), conv_bn(w[i], w[max(i - 1, 0)]))
            for i in reversed(range(d))
        )
        self.head = nn.Conv2d(w[0], config.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        indices = []
        for enc in self.encoders:
            x, idx = self.pool(enc(x))
            indices.append(idx)
        x = self.bottom(x)
        for dec, idx in zip(self.decoders, reversed(indices), strict=True):
            x = dec(self.unpool(x, idx))
        return self.head(x)


@register_model("segnet", SegNetConfig)
def _build_segnet(config: SegNetConfig) -> SegNet:
    return SegNet(config)
