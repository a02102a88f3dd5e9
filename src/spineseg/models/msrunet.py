"""The paper's network: a U-Net whose every stage is a multi-scale residual unit with channel
attention (MS-ResUnit), plus the switches that reproduce the paper's ablations (Tables 2–3).

The defaults are the proposed network (Table 2 case 4 = Table 3 case 3). ``ABLATIONS`` names the
config of every table row so experiments and tests refer to them by one name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from spineseg.errors import ModelError
from spineseg.models.blocks import HIERARCHIES, DoubleConv, MSResUnit, ResidualDoubleConv
from spineseg.models.registry import ModelConfig, register_model
from spineseg.models.unet import UNetSkeleton

__all__ = ["ABLATIONS", "UNITS", "MSRUNet", "MSRUNetConfig"]

UNITS: tuple[str, ...] = ("double", "double_res", "msres")


@dataclass(frozen=True)
class MSRUNetConfig(ModelConfig):
    """Config of the multi-scale residual attention U-Net.

    ``unit``: "msres" (the paper's), "double" (two 3×3 convs, no shortcut) or "double_res"
    (two 3×3 convs with a shortcut); ``units_per_stage`` repeats it. The MS-ResUnit switches
    (``multiscale``, ``attention``, ``hierarchy``, ``scales``, ``reduction`` = bottleneck factor,
    ``attention_reduction`` = CBAM's MLP ratio r) only act when ``unit == "msres"``.
    """

    unit: str = "msres"
    units_per_stage: int = 1
    multiscale: bool = True
    attention: bool = True
    hierarchy: str = "paper"
    scales: int = 4
    reduction: int = 2
    attention_reduction: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit not in UNITS:
            raise ModelError(f"unknown unit {self.unit!r}; valid choices: {', '.join(UNITS)}")
        if self.hierarchy not in HIERARCHIES:
            raise ModelError(f"unknown hierarchy {self.hierarchy!r}; valid choices: "
                             f"{', '.join(HIERARCHIES)}")
        for name in ("units_per_stage", "reduction", "attention_reduction"):
            if getattr(self, name) < 1:
                raise ModelError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scales < 2:
            raise ModelError(f"scales must be >= 2, got {self.scales}")
        if self.unit == "msres":
            # The bottleneck of every stage must split evenly into the scale groups.
            step = self.reduction * (self.scales if self.multiscale else 1)
            if self.base_width % step:
                raise ModelError(
                    f"base_width={self.base_width} must be divisible by reduction*scales={step} "
                    f"so each stage's bottleneck splits into {self.scales} equal groups")


def _unit_factory(cfg: MSRUNetConfig) -> Any:
    if cfg.unit == "double":
        single: Any = DoubleConv
    elif cfg.unit == "double_res":
        single = ResidualDoubleConv
    else:
        single = partial(MSResUnit, reduction=cfg.reduction, scales=cfg.scales,
                         hierarchy=cfg.hierarchy, multiscale=cfg.multiscale,
                         attention=cfg.attention, attention_reduction=cfg.attention_reduction)

    def make(in_ch: int, out_ch: int) -> nn.Module:
        units = [single(in_ch, out_ch)]
        units += [single(out_ch, out_ch) for _ in range(cfg.units_per_stage - 1)]
        return units[0] if len(units) == 1 else nn.Sequential(*units)

    return make


class MSRUNet(UNetSkeleton):
    """U-Net skeleton with the configured stage unit (MS-ResUnit by default)."""

    def __init__(self, config: MSRUNetConfig) -> None:
        super().__init__(config, _unit_factory(config))


@register_model("msrunet", MSRUNetConfig)
def _build_msrunet(config: MSRUNetConfig) -> MSRUNet:
    return MSRUNet(config)


# The paper's ablation rows as msrunet configs (overrides of the defaults).
# Table 3's "residual blocks" column is read as the multi-scale residual structure (the
# hierarchical split); "no" keeps the unit's bottleneck, shortcut and attention but puts one plain
# 3×3 conv where the hierarchy was. Note that Table 3 case 1 (95.60) equals Table 2 case 2
# (0.9560): the authors may have reused the plain residual unit there; "table2_case2" is that net.
ABLATIONS: dict[str, dict[str, Any]] = {
    "table2_case1": {"unit": "double", "units_per_stage": 1},
    "table2_case2": {"unit": "double_res", "units_per_stage": 1},
    "table2_case3": {"unit": "double_res", "units_per_stage": 2},
    "table2_case4": {"unit": "msres", "units_per_stage": 1},
    "table2_case5": {"unit": "msres", "units_per_stage": 2},
    "table3_case1": {"unit": "msres", "multiscale": True, "attention": False},
    "table3_case2": {"unit": "msres", "multiscale": False, "attention": True},
    "table3_case3": {"unit": "msres", "multiscale": True, "attention": True},
    "res2net_hierarchy": {"unit": "msres", "hierarchy": "res2net"},
}
