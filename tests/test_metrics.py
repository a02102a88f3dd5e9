"""Metrics against values worked out by hand on toy masks with anisotropic spacing."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from spineseg.errors import GeometryError, OutputError
from spineseg.evaluation.metrics import EvaluationResult, pool, volume_metrics
from spineseg.evaluation.report import write_report

SPACING = (0.5, 1.0, 3.0)  # (x, y, z) mm, the Volume convention


def _box(shape=(10, 10, 10), z=(2, 6), y=(3, 7), x=(3, 7)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = 1
    return m


def test_two_boxes_shifted_along_z_match_hand_computation() -> None:
    # G: 4x4x4 voxels; P: the same box one slice (3 mm) higher.
    g, p = _box(), _box(z=(3, 7))
    m = volume_metrics(p, g, SPACING, "toy")
    # |G∩P| = 3 slices x 16 = 48, |G| = |P| = 64.
    assert m.intersection_voxels == 48
    assert m.dice == pytest.approx(2 * 48 / 128)
    assert m.iou == pytest.approx(48 / 80)
    assert m.sensitivity == pytest.approx(48 / 64)
    assert m.precision == pytest.approx(48 / 64)
    assert m.ref_volume_ml == pytest.approx(64 * 0.5 * 1.0 * 3.0 / 1000)
    # Surface voxels of a 4^3 box: 64 - 2^3 = 56. From P to G: P's top face (16) is 3 mm away,
    # the 4 inner voxels of P's bottom face are 0.5 mm (one x step) from G's side walls, the other
    # 36 lie on G's surface. The same holds from G to P (symmetric).
    assert m.asd_mm == pytest.approx((16 * 3.0 + 4 * 0.5) / 56, rel=1e-5)
    assert m.hd95_mm == pytest.approx(3.0)  # 16/56 of the distances are 3 mm
    # Per slice (axis 0): slices 2..6 have spine; Dice 0 at z=2 and z=6, 1 on z=3,4,5.
    assert m.n_spine_slices == 5
    assert m.mean_slice_dice == pytest.approx(3 / 5)


def test_distances_use_the_spacing_of_the_right_axis() -> None:
    g = _box()
    along_x = volume_metrics(_box(x=(4, 8)), g, SPACING)
    along_y = volume_metrics(_box(y=(4, 8)), g, SPACING)
    along_z = volume_metrics(_box(z=(3, 7)), g, SPACING)
    assert along_x.hd95_mm == pytest.approx(0.5)
    assert along_y.hd95_mm == pytest.approx(1.0)
    assert along_z.hd95_mm == pytest.approx(3.0)
    assert along_x.dice == along_y.dice == along_z.dice  # overlap does not see spacing


def test_empty_mask_conventions() -> None:
    empty = np.zeros((6, 8, 8), np.uint8)
    both = volume_metrics(empty, empty, SPACING)
    assert (both.dice, both.iou, both.hd95_mm, both.asd_mm) == (1.0, 1.0, 0.0, 0.0)
    assert math.isnan(both.sensitivity) and math.isnan(both.precision)
    assert both.n_spine_slices == 0 and math.isnan(both.mean_slice_dice)
    some = _box((6, 8, 8), z=(1, 3), y=(2, 4), x=(2, 4))
    missed = volume_metrics(empty, some, SPACING)
    assert missed.dice == 0.0 and missed.sensitivity == 0.0
    assert math.isnan(missed.hd95_mm) and math.isnan(missed.asd_mm)
    assert math.isnan(missed.precision)
    false_alarm = volume_metrics(some, empty, SPACING)
    assert false_alarm.precision == 0.0 and math.isnan(false_alarm.sensitivity)


def test_pooled_dsc_is_over_all_slices_not_a_mean_of_cases() -> None:
    g1 = _box()  # 64 voxels, perfectly predicted
    small_g = _box(z=(2, 3), y=(3, 5), x=(3, 5))  # 4 voxels
    small_p = _box(z=(2, 3), y=(3, 5), x=(5, 7))  # disjoint: Dice 0
    cases = [volume_metrics(g1, g1, SPACING, "a"), volume_metrics(small_p, small_g, SPACING, "b")]
    pooled = pool(cases)
    assert pooled.dsc == pytest.approx(2 * 64 / (68 + 68))
    assert pooled.iou == pytest.approx(64 / 72)
    assert pooled.mean["dice"] == pytest.approx(0.5)
    assert pooled.mean_slice_dice == pytest.approx(4 / 5)  # 4 perfect slices + 1 missed
    assert pooled.n_slices == 20 and pooled.n_spine_slices == 5
    assert pooled.n_undefined["hd95_mm"] == 0


def test_shape_and_spacing_are_checked() -> None:
    with pytest.raises(GeometryError):
        volume_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)), SPACING)
    with pytest.raises(GeometryError):
        volume_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), (1.0, 0.0, 1.0))


def test_report_files_nan_handling_and_no_overwrite(tmp_path) -> None:
    empty = np.zeros((6, 10, 10), np.uint8)
    g = _box((6, 10, 10), z=(1, 4))
    result = EvaluationResult.from_cases(
        [volume_metrics(g, g, SPACING, "good"), volume_metrics(empty, g, SPACING, "missed")],
        {"mode": "test"})
    out = write_report(result, tmp_path / "rep")
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["case"] for r in rows] == ["good", "missed"]
    assert rows[1]["hd95_mm"] == "" and float(rows[0]["dice"]) == 1.0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["cases"][1]["hd95_mm"] is None
    assert summary["pooled"]["n_undefined"]["hd95_mm"] == 1
    assert summary["pooled"]["dsc"] == pytest.approx(result.pooled.dsc)
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "| missed |" in md and "n/a" in md and "pooled" in md
    with pytest.raises(OutputError):
        write_report(result, out)
    write_report(result, out, overwrite=True)
