"""Augmentation on a real axial slice (ts_abdomen_3mm at L2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import RandFlipd
from scipy import ndimage

from spineseg.data.augment import (
    AugmentConfig,
    RandCorrelatedNoised,
    RandOsteoporosisd,
    train_transforms,
)
from spineseg.data.preprocess import Preprocessing
from spineseg.io.geometry import reorient
from spineseg.io.read import read_image

PP = Preprocessing()
OFF = AugmentConfig(prob_affine=0, prob_elastic=0, prob_flip_lr=0, prob_intensity=0,
                    prob_low_resolution=0, prob_blur=0, prob_white_noise=0,
                    prob_correlated_noise=0, prob_osteoporosis=0, prob_field_of_view=0,
                    prob_slice_thickness=0, prob_contrast_vessels=0)


@pytest.fixture(scope="module")
def sample(shared_data: Path) -> dict[str, torch.Tensor]:
    ct = reorient(read_image(shared_data / "ts_abdomen_3mm/ct.nii.gz"), "LPS")
    vert = reorient(read_image(shared_data / "ts_abdomen_3mm/vertebrae.nii.gz"), "LPS")
    z = int(np.median(np.flatnonzero((vert.array == 30).any(axis=(1, 2)))))  # L2
    spine = ((vert.array[z] >= 27) & (vert.array[z] <= 33)).astype(np.float32)
    return {"image": torch.from_numpy(PP.normalize(ct.array[z])[None]),
            "label": torch.from_numpy(spine[None])}


def run(cfg: AugmentConfig, s: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    t = train_transforms(cfg)
    t.set_random_state(seed=seed)
    return t(dict(s))


def test_full_pipeline_shapes_and_binary_label(sample: dict[str, torch.Tensor]) -> None:
    everything = AugmentConfig(prob_affine=1, prob_elastic=1, prob_flip_lr=1, prob_intensity=1,
                               prob_low_resolution=1, prob_blur=1, prob_white_noise=1,
                               prob_correlated_noise=1, prob_osteoporosis=1)
    for seed in range(3):
        out = run(everything, sample, seed)
        assert out["image"].shape == sample["image"].shape
        assert out["label"].shape == sample["label"].shape
        assert set(torch.unique(torch.as_tensor(out["label"])).tolist()) <= {0.0, 1.0}
        assert float(torch.as_tensor(out["label"]).sum()) > 0.5 * float(sample["label"].sum())
        assert not torch.equal(torch.as_tensor(out["image"]), sample["image"])
    a, b = run(everything, sample, 5), run(everything, sample, 5)
    assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))


def test_flip_is_left_right_only(sample: dict[str, torch.Tensor]) -> None:
    flips = [t for t in train_transforms().transforms if isinstance(t, RandFlipd)]
    assert len(flips) == 1
    out = run(replace(OFF, prob_flip_lr=1.0), sample, 0)
    assert torch.equal(torch.as_tensor(out["image"]), torch.flip(sample["image"], dims=[-1]))
    assert torch.equal(torch.as_tensor(out["label"]), torch.flip(sample["label"], dims=[-1]))


def test_correlated_noise_sd_in_hu() -> None:
    flat = {"image": torch.zeros(1, 128, 128)}
    for sd in (10.0, 80.0, 150.0):
        t = RandCorrelatedNoised("image", 1.0, (sd, sd), (1.0, 1.0), PP)
        t.set_random_state(seed=1)
        noise_hu = torch.as_tensor(t(flat)["image"]).numpy() * (PP.hu_max - PP.hu_min) / 2
        assert noise_hu.std() == pytest.approx(sd, rel=0.02)
        # Correlated: neighbouring pixels are alike (white noise would give ~0).
        assert np.corrcoef(noise_hu[0, :, :-1].ravel(), noise_hu[0, :, 1:].ravel())[0, 1] > 0.5
    t = RandCorrelatedNoised("image", 1.0, AugmentConfig().noise_sd_hu, (1.0, 1.0), PP)
    t.set_random_state(seed=2)
    drawn = []
    for _ in range(200):
        t.randomize()
        drawn.append(t.sd)
    lo, hi = AugmentConfig().noise_sd_hu
    assert lo <= 10 and hi >= 190  # reaches verse012's noise (~150 HU on the local-SD measure)
    assert min(drawn) < lo + 10 and max(drawn) > hi - 10  # the whole range is used
    assert all(lo <= d <= hi for d in drawn)


def test_osteoporosis_darkens_only_inside_spine(sample: dict[str, torch.Tensor]) -> None:
    t = RandOsteoporosisd("image", "label", 1.0, (60.0, 60.0), PP)
    t.set_random_state(seed=0)
    out = torch.as_tensor(t(dict(sample))["image"]).numpy()[0]
    before = sample["image"].numpy()[0]
    mask = sample["label"].numpy()[0] > 0
    assert np.array_equal(out[~mask], before[~mask])
    to_hu = (PP.hu_max - PP.hu_min) / 2
    interior = ndimage.binary_erosion(mask, iterations=2)
    assert np.median(out[interior]) * to_hu + 500 < np.median(before[interior]) * to_hu + 500 - 40
