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


def test_midline_bone_off_the_column_is_dropped_but_a_missed_vertebra_is_not_an_end():
    """Pubic symphysis far below the column and a sternum in front of it are midline but not
    column; a 40 mm gap (a vertebra the network missed) must not cut the column in two, and a
    spinous process 55 mm behind the axis is still column."""
    z, y, x = 145, 260, 200
    hu = np.full((z, y, x), -1000, np.int16)
    hu[:, 20:250, 0:200] = 40
    parts = {k: np.zeros((z, y, x), bool) for k in ("column", "spinous", "symphysis", "sternum")}
    for z0 in (72, 84, 96, 108, 120, 132):  # 20 mm vertebrae, 4 mm discs ...
        parts["column"][z0:z0 + 10, 150:180, 85:115] = True
    parts["column"][40:50, 150:180, 85:115] = True  # ... and one below a 44 mm gap
    parts["spinous"][110:116, 215:222, 96:104] = True  # 52 mm behind the column's centre
    parts["symphysis"][0:4, 110:125, 90:110] = True  # 72 mm below the lowest vertebra
    parts["sternum"][84:124, 60:72, 92:108] = True  # 95 mm in front, as long as 2 vertebrae
    mask = np.zeros((z, y, x), bool)
    for m in parts.values():
        mask |= m
    cleaned = clean_mask(mask, SPACING, hu=hu)[0].astype(bool)
    assert cleaned[parts["column"]].all() and cleaned[parts["spinous"]].all()
    assert not cleaned[parts["symphysis"]].any() and not cleaned[parts["sternum"]].any()
