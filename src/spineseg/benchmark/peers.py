"""The networks spineseg is compared with, built with random weights (same arithmetic as trained).

* MONAI ``BasicUNet`` (2-D, default features 32-32-64-128-256-32), run through spineseg's own
  pipeline: isolates the cost of the network.
* The 3-D nnU-Net that ``TotalSegmentator --fast`` runs (task 297, "total_3mm"): a
  ``PlainConvUNet`` from ``dynamic_network_architectures`` on the volume resampled to 3 mm,
  sliding-window inference with half-patch overlap and Gaussian weighting, 118 output classes,
  argmax, nearest-neighbour back to the input grid. Published: patch (112, 112, 128), 3 mm
  isotropic, PlainConvUNet, z-score normalisation after clipping to [-1004, 1588] HU (mean
  -50.38, sd 503.39), no mirroring at test time. Stage count, widths, kernels and strides are
  what nnU-Net v2's default planner gives for that patch: 32 features doubling to a cap of 320,
  3×3×3 convolutions, pooling an axis while it stays >= 4 voxels (112 → 7 four times, 128 → 4
  five times), so 6 stages with the last stride (1, 1, 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from spineseg.data.preprocess import Preprocessing
from spineseg.errors import ModelError
from spineseg.inference.model_file import SegmentationModel
from spineseg.io import CANONICAL, Volume, reorient, resample_spacing, resample_to

__all__ = ["NnUNetFastSpec", "basic_unet_model", "build_nnunet_fast", "run_nnunet_fast"]


def basic_unet_model(preprocessing: Preprocessing, threshold: float = 0.5) -> SegmentationModel:
    """MONAI's 2-D BasicUNet with default features, wrapped to run in spineseg's pipeline.

    It reads the same input as ours: one channel per plane of the preprocessing's slice context.
    """
    from monai.networks.nets import BasicUNet

    net = BasicUNet(spatial_dims=2, in_channels=preprocessing.channels, out_channels=1).eval()
    # BasicUNet pools four times: slices are padded to multiples of 16 (model_config "depth").
    return SegmentationModel(network=net, model_name="monai.BasicUNet",
                             model_config={"depth": 4}, preprocessing=preprocessing,
                             threshold=threshold, source="random weights")


@dataclass(frozen=True)
class NnUNetFastSpec:
    """TotalSegmentator ``--fast`` network and inference settings (see the module docstring)."""

    patch_zyx: tuple[int, int, int] = (112, 112, 128)
    spacing_mm: float = 3.0
    features: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    strides: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2),
                                                 (2, 2, 2), (1, 1, 2))
    num_classes: int = 118
    overlap: float = 0.5
    clip_hu: tuple[float, float] = (-1004.0, 1588.0)
    mean_hu: float = -50.38
    sd_hu: float = 503.39

    @classmethod
    def tiny(cls) -> NnUNetFastSpec:
        """A 3-stage miniature for tests: same code path, milliseconds of arithmetic."""
        return cls(patch_zyx=(16, 16, 16), features=(4, 8, 16),
                   strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), num_classes=4)


def build_nnunet_fast(spec: NnUNetFastSpec) -> nn.Module:
    """The PlainConvUNet of ``spec`` in eval mode; ModelError if the package is missing."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError as exc:
        raise ModelError("the nnU-Net comparison needs the 'dynamic-network-architectures' "
                         "package (pip install dynamic-network-architectures); skip it with "
                         "--no-nnunet") from exc
    n = len(spec.features)
    return PlainConvUNet(
        input_channels=1, n_stages=n, features_per_stage=list(spec.features),
        conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * n,
        strides=[list(s) for s in spec.strides], n_conv_per_stage=[2] * n,
        num_classes=spec.num_classes, n_conv_per_stage_decoder=[2] * (n - 1), conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
    ).eval()


@torch.inference_mode()
def run_nnunet_fast(vol: Volume, net: nn.Module, spec: NnUNetFastSpec,
                    dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """TotalSegmentator-fast style inference of ``vol``; returns timings and the label shape.

    ``dtype`` other than float32 autocasts the sliding window to it on the CPU; nnU-Net's own
    predictor does that on CUDA only, so float32 is how its users run it on a CPU.

    Keys: ``total_s`` (resample → windows → argmax → back to the input grid), ``network_s``
    (the sliding window alone), ``windows`` and ``grid_zyx`` (the 3 mm grid).
    """
    from monai.inferers import sliding_window_inference

    t0 = time.perf_counter()
    canon = reorient(vol, CANONICAL)
    s = spec.spacing_mm
    low = resample_spacing(canon, (s, s, s), interpolation="linear",
                           default_value=float(spec.clip_hu[0]))
    x = np.clip(np.asarray(low.array, dtype=np.float32), *spec.clip_hu)
    x = (x - spec.mean_hu) / spec.sd_hu
    inp = torch.from_numpy(x)[None, None]
    t1 = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        logits = sliding_window_inference(inp, roi_size=spec.patch_zyx, sw_batch_size=1,
                                          predictor=net, overlap=spec.overlap, mode="gaussian")
    t2 = time.perf_counter()
    assert isinstance(logits, torch.Tensor)
    labels = torch.argmax(logits[0], dim=0).to(torch.uint8).numpy()
    del logits
    back = resample_to(low.with_array(labels), canon, interpolation="nearest")
    t3 = time.perf_counter()
    grid = [int(v) for v in low.array.shape]
    windows = int(np.prod([max(1, int(np.ceil((max(g, p) - p) / (p * (1 - spec.overlap)))) + 1)
                           for g, p in zip(grid, spec.patch_zyx, strict=True)]))
    return {"total_s": t3 - t0, "network_s": t2 - t1, "windows": windows, "grid_zyx": grid,
            "labels_shape": list(back.array.shape)}
