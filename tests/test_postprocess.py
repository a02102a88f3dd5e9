"""Island removal keeps the column and drops hip-bone, rib and speck false positives."""

from __future__ import annotations

import numpy as np

from spineseg.inference.postprocess import PostprocessConfig, body_midline, clean_mask

SPACING = (1.0, 1.0, 2.0)  # x, y, z mm


def _scene() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A body 200 mm wide centred at x=100, five midline 'vertebrae' separated by 'discs',
    two large lateral 'iliac wings' (each bigger than any vertebra), a rib stub, a speck."""
    z, y, x = 60, 160, 200
    hu = np.full((z, y, x), -1000, np.int16)
    hu[:, 20:150, 0:200] = 40
    parts: dict[str, np.ndarray] = {k: np.zeros((z, y, x), bool) for k in
                                    ("column", "hips", "rib", "speck", "process")}
    for k in range(5):
        parts["column"][2 + 11 * k: 11 + 11 * k, 90:120, 85:115] = True
    parts["hips"][5:50, 60:130, 10:40] = True
    parts["hips"][5:50, 60:130, 160:190] = True
    parts["rib"][52:56, 60:70, 140:160] = True
    parts["speck"][20, 30, 100] = True
    parts["process"][14:18, 120:126, 118:128] = True  # a separate posterior-element piece
    mask = np.zeros((z, y, x), bool)
    for m in parts.values():
        mask |= m
    return mask, hu, parts


def test_keeps_column_drops_hips_ribs_and_specks():
    mask, hu, parts = _scene()
    cleaned, report = clean_mask(mask, SPACING, hu=hu)
    cleaned = cleaned.astype(bool)
    assert (cleaned[parts["column"]]).all()
    assert (cleaned[parts["process"]]).all()
    assert not cleaned[parts["hips"]].any()
    assert not cleaned[parts["rib"]].any()
    assert not cleaned[parts["speck"]]
    assert report.removed_small == 1 and report.removed_lateral == 3


def test_disabled_and_empty_are_identity():
    mask, hu, _ = _scene()
    same, _ = clean_mask(mask, SPACING, PostprocessConfig(enabled=False), hu=hu)
    np.testing.assert_array_equal(same.astype(bool), mask)
    empty, report = clean_mask(np.zeros_like(mask), SPACING, hu=hu)
    assert not empty.any() and report.components_in == 0


def test_midline_follows_the_body_not_the_grid():
    hu = np.full((3, 10, 50), -1000, np.int16)
    hu[:, :, 10:31] = 0  # body spans x 10..30
    np.testing.assert_allclose(body_midline(hu, -500.0), 20.0)
