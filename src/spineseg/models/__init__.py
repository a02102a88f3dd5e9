"""Networks built by name: the paper's multi-scale residual attention U-Net and its baselines.

Importing this package registers ``msrunet``, ``unet``, ``fcn`` and ``segnet``; build one with
``build_model(name, **config)``. Pure torch/MONAI: this package reads no files.
"""

from spineseg.models import fcn, msrunet, segnet, unet  # noqa: F401  (registers the networks)
from spineseg.models.blocks import (
    ChannelAttention,
    DoubleConv,
    HierarchicalConv,
    MSResUnit,
    ResidualDoubleConv,
)
from spineseg.models.fcn import FCN, FCNConfig
from spineseg.models.msrunet import ABLATIONS, MSRUNet, MSRUNetConfig
from spineseg.models.profile import ModelProfile, count_parameters, profile_model, profile_models
from spineseg.models.registry import (
    ModelConfig,
    SegmentationNet,
    build_model,
    config_class,
    list_models,
    register_model,
    stage_widths,
)
from spineseg.models.segnet import SegNet, SegNetConfig
from spineseg.models.unet import UNet, UNetConfig

__all__ = [
    "ABLATIONS",
    "FCN",
    "ChannelAttention",
    "DoubleConv",
    "FCNConfig",
    "HierarchicalConv",
    "MSRUNet",
    "MSRUNetConfig",
    "MSResUnit",
    "ModelConfig",
    "ModelProfile",
    "ResidualDoubleConv",
    "SegNet",
    "SegNetConfig",
    "SegmentationNet",
    "UNet",
    "UNetConfig",
    "build_model",
    "config_class",
    "count_parameters",
    "list_models",
    "profile_model",
    "profile_models",
    "register_model",
    "stage_widths",
]
