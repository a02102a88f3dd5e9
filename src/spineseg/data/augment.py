"""Training augmentation for 2D slice samples ``{"image": (1, H, W), "label": (1, H, W)}``.

Built from MONAI transforms; two small MONAI transforms are added for what MONAI lacks:
spatially correlated CT noise and osteoporotic bone (both call :mod:`spineseg.data.simulate`).
The image is already normalised by :class:`~spineseg.data.preprocess.Preprocessing`, so every HU
quantity here (noise SD, window shift, target bone density) is converted through its window.

Why these augmentations: real scans range from clean and dense (TotalSegmentator test cases, ~20
HU noise) to very noisy (VerSe, ~150 HU) and osteoporotic (vertebral-body interior 50–70 HU);
a model that has seen only the clean end learns "bright = spine" (see docs/anatomy.md).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    Rand2DElasticd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
)
from monai.utils import convert_to_dst_type, convert_to_numpy

from spineseg.data.acquisition import RandContrastVesselsd, RandFieldOfViewd, RandSliceThicknessd
from spineseg.data.preprocess import Preprocessing
from spineseg.data.simulate import correlated_noise, simulate_osteoporosis

KEYS: tuple[str, str] = ("image", "label")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; HU quantities in HU, angles in degrees, sizes in pixels."""

    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    prob_affine: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.15  # zoom factor drawn from [1 - scale, 1 + scale]
    prob_elastic: float = 0.2
    elastic_spacing: tuple[int, int] = (48, 48)  # control-point spacing (pixels)
    elastic_magnitude: tuple[float, float] = (0.0, 1.5)
    prob_flip_lr: float = 0.5  # left-right only: an anterior-posterior flip makes no anatomy
    prob_intensity: float = 0.5
    intensity_scale: float = 0.1  # contrast: factor in [1 - s, 1 + s] (window width jitter)
    shift_hu: float = 60.0  # window level jitter, ± HU
    prob_low_resolution: float = 0.2
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    prob_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.25, 1.0)  # pixels
    prob_white_noise: float = 0.15
    white_noise_max_hu: float = 60.0  # MONAI draws SD uniformly in [0, max]
    prob_correlated_noise: float = 0.5
    # Up to 200 HU of added field SD: correlated noise reads ~80% of that on the local-SD measure of
    # anatomy.md, so this reaches verse012 (~150 HU measured), the noisiest real scan we know.
    noise_sd_hu: tuple[float, float] = (10.0, 200.0)
    noise_corr_sigma: tuple[float, float] = (0.5, 2.0)  # sharp … soft kernel (pixels)
    prob_osteoporosis: float = 0.3
    osteoporosis_target_hu: tuple[float, float] = (50.0, 110.0)
    # Acquisition (spineseg.data.acquisition): spine-protocol field of view, sagittal/coronal
    # slice thickness seen axially, contrast-filled aorta and vena cava.
    prob_field_of_view: float = 0.3
    field_of_view_mm: tuple[float, float] = (80.0, 250.0)
    prob_slice_thickness: float = 0.2
    slice_thickness_mm: tuple[float, float] = (2.0, 4.0)
    prob_contrast_vessels: float = 0.2
    aorta_hu: tuple[float, float] = (150.0, 400.0)


class RandCorrelatedNoised(RandomizableTransform, MapTransform):
    """Add CT-like, spatially correlated Gaussian noise with an SD drawn in HU.

    MONAI only offers white noise (RandGaussianNoise, RandRicianNoise); real CT noise is
    low-passed by the reconstruction kernel, and its grain size changes what a network sees
    (blotches that look like trabecular texture), so white noise alone under-trains robustness.
    """

    def __init__(self, keys: KeysCollection, prob: float, sd_hu: tuple[float, float],
                 corr_sigma: tuple[float, float], preprocessing: Preprocessing,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.sd_hu = sd_hu
        self.corr_sigma = corr_sigma
        self.hu_per_unit = (preprocessing.hu_max - preprocessing.hu_min) / 2.0
        self.sd = 0.0
        self.sigma = 0.0
        self.seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.sd = float(self.R.uniform(*self.sd_hu))
        self.sigma = float(self.R.uniform(*self.corr_sigma))
        self.seed = int(self.R.randint(2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        rng = np.random.default_rng(self.seed)
        for key in self.key_iterator(d):
            img = d[key]
            arr = convert_to_numpy(img, dtype=np.float32)
            # Noise in-plane only (last two axes), independent per channel.
            sig = (0.0,) * (arr.ndim - 2) + (self.sigma, self.sigma)
            noise = correlated_noise(arr.shape, self.sd / self.hu_per_unit, sig, rng)
            d[key] = convert_to_dst_type(arr + noise, img, dtype=np.float32)[0]
        return d


class RandOsteoporosisd(RandomizableTransform, MapTransform):
    """Darken the trabecular interior of the labelled vertebrae to a random target HU.

    MONAI has no anatomy-aware intensity transform; this calls
    :func:`~spineseg.data.simulate.simulate_osteoporosis` on the slice (converted back to HU).
    """

    def __init__(self, keys: KeysCollection, label_key: str, prob: float,
                 target_hu: tuple[float, float], preprocessing: Preprocessing,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.target_hu = target_hu
        self.pp = preprocessing
        self.target = 0.0
        self.seed = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.target = float(self.R.uniform(*self.target_hu))
        self.seed = int(self.R.randint(2**31 - 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        mask = convert_to_numpy(d[self.label_key]) > 0.5
        if not mask.any():
            return d
        centre = (self.pp.hu_max + self.pp.hu_min) / 2.0
        half = (self.pp.hu_max - self.pp.hu_min) / 2.0
        rng = np.random.default_rng(self.seed)
        for key in self.key_iterator(d):
            img = d[key]
            arr = convert_to_numpy(img, dtype=np.float32)
            out = np.empty_like(arr)
            for c in range(arr.shape[0]):  # channel-first; simulate per channel slice
                hu = arr[c] * half + centre
                out[c] = (simulate_osteoporosis(hu, mask[min(c, mask.shape[0] - 1)],
                                                self.target, rng) - centre) / half
            d[key] = convert_to_dst_type(out, img, dtype=np.float32)[0]
        return d


def train_transforms(cfg: AugmentConfig | None = None) -> Compose:
    """The training augmentation pipeline for channel-first 2D dict samples.

    Order follows acquisition: anatomy (bone density, contrast-filled vessels) first, then
    geometry, then the scanner (slice thickness, contrast, resolution, blur), noise, so noise is
    never blurred away, and last the reconstruction's field of view, whose fill is noise-free. Image padding
    uses the border value (air at the edge of a CT) — zero would be 500 HU in the normalised
    scale — and the label is resampled nearest-neighbour so it stays binary.
    """
    cfg = cfg or AugmentConfig()
    half = (cfg.preprocessing.hu_max - cfg.preprocessing.hu_min) / 2.0
    rot = math.radians(cfg.rotate_deg)
    return Compose([
        RandOsteoporosisd("image", "label", cfg.prob_osteoporosis, cfg.osteoporosis_target_hu,
                          cfg.preprocessing),
        RandContrastVesselsd("image", "label", cfg.prob_contrast_vessels, cfg.aorta_hu,
                             cfg.preprocessing),
        RandAffined(KEYS, prob=cfg.prob_affine, rotate_range=rot,
                    scale_range=(cfg.scale, cfg.scale), mode=("bilinear", "nearest"),
                    padding_mode=("border", "zeros")),
        Rand2DElasticd(KEYS, spacing=cfg.elastic_spacing, magnitude_range=cfg.elastic_magnitude,
                       prob=cfg.prob_elastic, mode=("bilinear", "nearest"),
                       padding_mode=("border", "zeros")),
        # Columns run patient right -> left (axis 1 of the spatial dims): mirror images exist.
        RandFlipd(KEYS, prob=cfg.prob_flip_lr, spatial_axis=1),
        RandSliceThicknessd("image", cfg.prob_slice_thickness, cfg.slice_thickness_mm,
                            cfg.preprocessing),
        RandScaleIntensityd("image", factors=cfg.intensity_scale, prob=cfg.prob_intensity),
        RandShiftIntensityd("image", offsets=cfg.shift_hu / half, prob=cfg.prob_intensity),
        RandSimulateLowResolutiond("image", prob=cfg.prob_low_resolution,
                                   zoom_range=cfg.low_resolution_zoom, upsample_mode="bilinear"),
        RandGaussianSmoothd("image", sigma_x=cfg.blur_sigma, sigma_y=cfg.blur_sigma,
                            prob=cfg.prob_blur),
        RandGaussianNoised("image", prob=cfg.prob_white_noise, std=cfg.white_noise_max_hu / half),
        RandCorrelatedNoised("image", cfg.prob_correlated_noise, cfg.noise_sd_hu,
                             cfg.noise_corr_sigma, cfg.preprocessing),
        RandFieldOfViewd(KEYS, "label", cfg.prob_field_of_view, cfg.field_of_view_mm,
                         cfg.preprocessing),
    ])
