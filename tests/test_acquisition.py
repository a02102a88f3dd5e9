"""Acquisition augmentations: spine-protocol field of view, sagittal slice thickness, contrast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spineseg.data.acquisition import RandContrastVesselsd, RandFieldOfViewd, RandSliceThicknessd
from spineseg.data.preprocess import Preprocessing

PP = Preprocessing()  # 1 mm grid, window -1000..2000 HU


def _body_slice(channels: int = 3) -> dict[str, torch.Tensor]:
    """A 160 mm slice: soft-tissue body (40 HU) in air, a 30 mm 'vertebral body' (700 HU) at
    rows 90-120, columns 65-95, labelled."""
    hu = np.full((160, 160), -1000.0, np.float32)
    yy, xx = np.mgrid[0:160, 0:160]
    hu[(yy - 80) ** 2 / 70**2 + (xx - 80) ** 2 / 78**2 <= 1] = 40.0
    label = np.zeros((160, 160), np.float32)
    label[90:120, 65:95] = 1.0
    hu[label > 0] = 700.0
    img = np.repeat(PP.normalize(hu)[None], channels, axis=0).astype(np.float32)
    return {"image": torch.from_numpy(img), "label": torch.from_numpy(label[None])}


def test_field_of_view_cuts_around_the_column_and_clears_the_label_outside():
    floor = float(PP.normalize(np.array([PP.hu_min]))[0])
    for seed in range(12):
        t = RandFieldOfViewd(("image", "label"), "label", prob=1.0, size_mm=(80.0, 120.0),
                             preprocessing=PP)
        t.set_random_state(seed)
        out = t(_body_slice())
        img, lab = out["image"].numpy(), out["label"].numpy()
        outside = img[0] == floor
        assert outside.any()  # the 160 mm body never fits in a <= 120 mm field of view
        assert not (lab[0] > 0)[outside].any()  # nothing labelled outside the field of view
        assert (img == img[0:1]).all()  # every context channel cut alike
        # Centred on the column (±20 mm): the 30 mm body stays at least partly in view.
        assert lab[0].sum() > 0


def test_field_of_view_with_probability_zero_is_identity():
    s = _body_slice()
    t = RandFieldOfViewd(("image", "label"), "label", prob=0.0, size_mm=(80.0, 120.0),
                         preprocessing=PP)
    out = t(s)
    assert torch.equal(out["image"], s["image"]) and torch.equal(out["label"], s["label"])


@pytest.mark.parametrize("axis_prob, blurred_axis", [(1.0, -1), (0.0, -2)])
def test_slice_thickness_blurs_one_axis_only(axis_prob, blurred_axis):
    s = _body_slice(channels=1)
    t = RandSliceThicknessd("image", prob=1.0, thickness_mm=(4.0, 4.0), preprocessing=PP,
                            left_right_prob=axis_prob)
    t.set_random_state(0)
    out = t(s)["image"].numpy()[0]
    src = s["image"].numpy()[0]
    edge_lr = np.abs(np.diff(out[105, 55:105])).max()  # across the body's left/right edges
    edge_ap = np.abs(np.diff(out[80:130, 80])).max()  # across its anterior/posterior edges
    sharp_lr = np.abs(np.diff(src[105, 55:105])).max()
    sharp_ap = np.abs(np.diff(src[80:130, 80])).max()
    if blurred_axis == -1:
        assert edge_lr < 0.5 * sharp_lr and edge_ap == pytest.approx(sharp_ap, rel=0.05)
    else:
        assert edge_ap < 0.5 * sharp_ap and edge_lr == pytest.approx(sharp_lr, rel=0.05)
    assert torch.equal(t(s)["label"], s["label"])  # the label keeps its fine grid


def test_contrast_vessels_are_bright_soft_tissue_in_front_of_the_body_and_not_labelled():
    s = _body_slice()
    t = RandContrastVesselsd(("image",), "label", prob=1.0, aorta_hu=(300.0, 300.0),
                             preprocessing=PP)
    t.set_random_state(0)
    out = t(dict(s))
    img = out["image"].numpy()
    changed = np.abs(img - s["image"].numpy()).max(axis=0) > 1e-6
    assert changed.any()
    ys = np.nonzero(changed)[0]
    assert ys.max() < 90  # anterior of the body (rows run anterior -> posterior)
    assert not (s["label"].numpy()[0] > 0)[changed].any()
    air = s["image"].numpy()[0] < PP.normalize(np.array([-500.0]))[0]
    assert not (changed & air).any()  # never paints outside the body
    bright = PP.normalize(np.array([250.0]))[0]
    assert (img[0][changed] > bright).all()
    assert torch.equal(out["label"], s["label"])


def test_training_pipeline_includes_the_acquisition_transforms():
    from spineseg.data.augment import train_transforms

    names = {type(t).__name__ for t in train_transforms().transforms}
    assert {"RandFieldOfViewd", "RandSliceThicknessd", "RandContrastVesselsd"} <= names
