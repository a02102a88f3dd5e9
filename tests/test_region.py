"""Coarse-to-fine inference: the region around the column, at its edge, on a curve, on a narrow
field of view, on partial coverage, and when the coarse pass finds nothing.

The network here is a 1×1 convolution that marks every voxel above 300 HU (``bone_model``): it
runs through the real slice-inference code (batching, boxes, padding) and its answer is known
exactly, so what the region keeps and drops can be checked voxel by voxel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from spineseg.cli.main import main
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError
from spineseg.inference.model_file import SegmentationModel, load_segmentation_model
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.postprocess import PostprocessConfig
from spineseg.inference.predict import PredictConfig, predict_probabilities
from spineseg.inference.region import (
    RegionConfig,
    column_region,
    region_boxes,
    sample_slices,
)
from spineseg.io import Volume, write_image

BONE_HU = 300.0


def bone_model() -> SegmentationModel:
    """Probability > 0.5 exactly where the slice is above 300 HU (a steep sigmoid)."""
    pre = Preprocessing(spacing_xy=(1.0, 1.0))
    net = nn.Conv2d(1, 1, 1)
    centre, half = (pre.hu_max + pre.hu_min) / 2, (pre.hu_max - pre.hu_min) / 2
    with torch.no_grad():
        net.weight.fill_(200.0)
        net.bias.fill_(-200.0 * (BONE_HU - centre) / half)
    return SegmentationModel(network=net.eval(), model_name="bone", model_config={"depth": 0},
                             preprocessing=pre, threshold=0.5, source="test")


def body_ct(shape_zyx: tuple[int, int, int], spacing_z: float = 1.0) -> np.ndarray:
    """Soft tissue (40 HU) filling an ellipse of the slice, air around it."""
    z, h, w = shape_zyx
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.48 * w)) ** 2 < 1
    return np.broadcast_to(np.where(body, 40, -1000), (z, h, w)).astype(np.int16).copy()


def add_disc(hu: np.ndarray, zs: slice, cy: float, cx: float, r: float) -> None:
    yy, xx = np.mgrid[:hu.shape[1], :hu.shape[2]]
    hu[zs][:, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 700


def run(hu: np.ndarray, region: bool, spacing_z: float = 1.0,
        spacing_xy: float = 1.0) -> tuple[np.ndarray, np.ndarray, dict]:
    vol = Volume(hu, (spacing_xy, spacing_xy, spacing_z))
    cfg = SegmentConfig(predict=PredictConfig(progress=False, batch_size=4), mesh=None,
                        keep_probabilities=True, postprocess=PostprocessConfig(enabled=False),
                        region=RegionConfig(enabled=region))
    res = segment(vol, bone_model(), cfg)
    return res.mask.array, res.probabilities.array, res.stats


# ------------------------------------------------------------------------------ building blocks


def test_coarse_slices_include_first_and_last_and_are_at_most_a_step_apart():
    z = sample_slices(100, 1.0, 15.0)
    assert z[0] == 0 and z[-1] == 99 and np.diff(z).max() <= 15
    assert sample_slices(100, 3.0, 15.0).tolist() == np.unique(
        np.rint(np.linspace(0, 99, 21)).astype(int)).tolist()
    assert sample_slices(1, 1.0, 15.0).tolist() == [0]
    assert sample_slices(3, 20.0, 15.0).tolist() == [0, 1, 2]


def test_region_between_findings_is_their_union_held_beyond_the_ends():
    found = np.array([[10, 20, 30, 40], [50, 60, 70, 80]])
    boxes = region_boxes(np.array([10, 20]), found, (30, 200, 200), (5, 6))
    np.testing.assert_array_equal(boxes[0], [5, 25, 24, 46])  # before the first: held
    np.testing.assert_array_equal(boxes[10], [5, 25, 24, 46])
    np.testing.assert_array_equal(boxes[15], [5, 65, 24, 86])  # between: union of both
    np.testing.assert_array_equal(boxes[29], [45, 65, 64, 86])  # after the last: held
    clipped = region_boxes(np.array([0]), np.array([[0, 3, 195, 200]]), (2, 200, 200), (5, 6))
    np.testing.assert_array_equal(clipped[1], [0, 8, 189, 200])


def test_specks_on_a_coarse_slice_do_not_count_as_column():
    coarse = np.zeros((1, 200, 200), dtype=np.float16)
    coarse[0, 90:110, 90:110] = 1.0  # 400 mm²: column
    coarse[0, 5, 5] = 1.0  # 1 mm²: noise
    reg = column_region(coarse, np.array([0]), (1, 200, 200), 0.5, (1.0, 1.0),
                        RegionConfig(margin_mm=10.0, column_mm=(1.0, 1.0), snap_mm=0.0))
    np.testing.assert_array_equal(reg.boxes[0], [80, 120, 80, 120])


def test_a_part_of_a_vertebra_is_widened_to_a_whole_one_and_thin_strips_are_kept():
    """Only a spinous process (10×10 mm) found: the region reaches 55 mm in front of its centre
    plus the 60 mm margin, where the vertebral body lies (0.5 mm pixels: mm become voxels)."""
    coarse = np.zeros((1, 700, 700), dtype=np.float16)
    coarse[0, 300:320, 340:360] = 1.0
    reg = column_region(coarse, np.array([0]), (1, 700, 700), 0.5, (0.5, 0.5))
    # y: 310 ± (110 mm / 2 + 60 mm) = 310 ± 230 voxels; x: 350 ± (40 mm + 60 mm)
    np.testing.assert_array_equal(reg.boxes[0], [80, 540, 150, 550])
    # An edge 20 mm (40 voxels) short of the slice's edge is moved onto it; 35 mm is not.
    near = region_boxes(np.array([0]), np.array([[100, 120, 100, 120]]), (1, 300, 300),
                        (40, 80), (60, 60))
    np.testing.assert_array_equal(near[0], [0, 160, 0, 200])
    far = region_boxes(np.array([0]), np.array([[110, 120, 150, 160]]), (1, 300, 300),
                       (40, 40), (60, 60))
    np.testing.assert_array_equal(far[0], [70, 160, 110, 200])


@pytest.mark.parametrize("bad", [{"step_mm": 0.0}, {"margin_mm": -1.0},
                                 {"min_area_mm2": float("nan")}])
def test_region_config_refuses_nonsense(bad):
    with pytest.raises(InputError, match="region"):
        RegionConfig(**bad)


def test_predict_boxes_zero_outside_and_skip_empty_slices():
    hu = body_ct((6, 48, 48))
    add_disc(hu, slice(None), 24, 24, 6)
    model = bone_model()
    cfg = PredictConfig(progress=False, batch_size=4)
    whole = predict_probabilities(model, hu, cfg)
    full_boxes = np.tile([0, 48, 0, 48], (6, 1))
    np.testing.assert_array_equal(predict_probabilities(model, hu, cfg, boxes=full_boxes), whole)
    boxes = full_boxes.copy()
    boxes[1] = (10, 30, 12, 40)
    boxes[2] = (0, 0, 0, 0)  # empty: not computed
    out = predict_probabilities(model, hu, cfg, boxes=boxes)
    np.testing.assert_array_equal(out[1, 10:30, 12:40], whole[1, 10:30, 12:40])
    assert not out[1, :10].any() and not out[1, :, 40:].any() and not out[2].any()
    np.testing.assert_array_equal(out[3:], whole[3:])
    with pytest.raises(InputError, match="boxes"):
        predict_probabilities(model, hu, cfg, boxes=full_boxes[:3])


# ------------------------------------------------------------------------------ whole pipeline


def test_region_edge_keeps_what_is_inside_and_zeroes_what_is_outside():
    """Column (a 21 mm disc) at x 140–160 mm, widened to a vertebra's 80 mm (x 110–190) plus the
    60 mm margin: the region is x 50–250 (y 35–265). A bone blob at x ~240 lies inside and is
    kept exactly as on whole slices; one at x ~275 lies outside and its probability is 0. Both
    sit on slices the coarse pass does not sample."""
    hu = body_ct((40, 300, 400))
    add_disc(hu, slice(None), 150, 150, 10)
    add_disc(hu, slice(5, 9), 150, 240, 4)
    add_disc(hu, slice(5, 9), 150, 275, 4)
    assert not set(sample_slices(40, 1.0, 15.0)) & set(range(5, 9))
    mask_w, prob_w, _ = run(hu, region=False)
    mask_r, prob_r, stats = run(hu, region=True)
    assert stats["region"]["enabled"] and not stats["region"]["whole_slices"]
    assert stats["region"]["block_yx"] == [35, 266, 50, 251]
    assert stats["region"]["pixel_fraction"] < 0.45
    inside = (slice(None), slice(35, 266), slice(50, 251))
    np.testing.assert_array_equal(prob_r[inside], prob_w[inside])
    np.testing.assert_array_equal(mask_r[inside], mask_w[inside])
    assert mask_w[6, 150, 240] and mask_r[6, 150, 240]  # inside: kept
    assert mask_w[6, 150, 275] and not mask_r[6, 150, 275]  # outside: dropped
    outside = np.ones(hu.shape, dtype=bool)
    outside[inside] = False
    assert not prob_r[outside].any() and not mask_r[outside].any()


def test_scoliotic_curve_is_followed_and_nothing_is_lost():
    """The column drifts 250 mm sideways and back over 60 slices of 2 mm (steeper than any
    scoliosis): more than one box of vertebra + 2 × 60 mm could hold. The region follows it,
    so each slice's region is a fraction of the block, and the mask equals the whole-slice one."""
    hu = body_ct((60, 200, 600), spacing_z=2.0)
    for z in range(60):
        add_disc(hu, slice(z, z + 1), 100, 150 + 250 * np.sin(np.pi * z / 59) ** 2, 9)
    mask_w, _, _ = run(hu, region=False, spacing_z=2.0)
    mask_r, _, stats = run(hu, region=True, spacing_z=2.0)
    assert mask_w.sum() > 0 and not stats["region"]["whole_slices"]
    x0, x1 = stats["region"]["block_yx"][2:]
    y0, y1 = stats["region"]["block_yx"][:2]
    assert x1 - x0 >= 250 + 80 + 120  # the block spans the whole curve
    # ... but each slice's region is much narrower than the block (the curve is followed)
    block_fraction = (y1 - y0) * (x1 - x0) / (200 * 600)
    assert stats["region"]["pixel_fraction"] < 0.6 * block_fraction
    np.testing.assert_array_equal(mask_r, mask_w)


def test_partial_coverage_and_first_and_last_slices():
    """The column fills only the lower half of the scan, and touches both end slices' edges: the
    region is held from the last finding over the slices above it."""
    hu = body_ct((40, 300, 300))
    add_disc(hu, slice(0, 20), 150, 150, 10)
    add_disc(hu, slice(39, 40), 150, 150, 10)  # the last slice: a lone fragment, still found
    mask_w, _, _ = run(hu, region=False)
    mask_r, _, stats = run(hu, region=True)
    assert not stats["region"]["whole_slices"]
    np.testing.assert_array_equal(mask_r, mask_w)
    assert mask_r[0].any() and mask_r[39].any()


def test_narrow_field_of_view_is_segmented_on_whole_slices():
    """A 110 mm spine-protocol crop: column box plus 60 mm reaches every edge."""
    hu = body_ct((30, 110, 110))
    add_disc(hu, slice(None), 55, 55, 10)
    hu[:, :, :] = np.where(hu == -1000, 30, hu)  # a crop: tissue to the edges, no air
    mask_w, prob_w, _ = run(hu, region=False)
    mask_r, prob_r, stats = run(hu, region=True)
    assert stats["region"]["pixel_fraction"] == 1.0
    np.testing.assert_array_equal(prob_r, prob_w)
    np.testing.assert_array_equal(mask_r, mask_w)


def test_nothing_found_by_the_coarse_pass_falls_back_to_whole_slices():
    """Bone only on slices the coarse pass does not sample: whole slices, nothing lost."""
    hu = body_ct((40, 300, 300))
    add_disc(hu, slice(2, 10), 150, 200, 10)
    assert not set(sample_slices(40, 1.0, 15.0)) & set(range(2, 10))
    mask_w, _, _ = run(hu, region=False)
    mask_r, _, stats = run(hu, region=True)
    assert stats["region"]["whole_slices"] and stats["region"]["column_found_on"] == 0
    assert mask_w.sum() > 0
    np.testing.assert_array_equal(mask_r, mask_w)


def test_region_on_a_resampled_grid_matches_whole_slices():
    """0.8 mm input: the model's 1 mm block is mapped back onto the input grid's block."""
    hu = body_ct((30, 480, 480))
    add_disc(hu, slice(None), 240, 250, 12)
    mask_w, prob_w, _ = run(hu, region=False, spacing_xy=0.8)
    mask_r, prob_r, stats = run(hu, region=True, spacing_xy=0.8)
    assert stats["region"]["pixel_fraction"] < 0.5
    np.testing.assert_array_equal(mask_r, mask_w)
    np.testing.assert_allclose(prob_r, prob_w, atol=1e-3)


def test_cli_full_slice_flag_turns_the_region_off(tmp_path, tiny_model_file):
    hu = body_ct((12, 64, 64))
    add_disc(hu, slice(None), 32, 32, 6)
    src = write_image(Volume(hu, (1.0, 1.0, 1.0)), tmp_path / "ct.nii.gz")
    base = ["segment", str(src), "--model", str(tiny_model_file), "--quiet", "--mesh", "none",
            "--no-preview", "--device", "cpu"]
    assert main([*base, "-o", str(tmp_path / "on")]) == 0
    assert main([*base, "-o", str(tmp_path / "off"), "--full-slice"]) == 0
    on = json.loads((tmp_path / "on" / "stats.json").read_text(encoding="utf-8"))
    off = json.loads((tmp_path / "off" / "stats.json").read_text(encoding="utf-8"))
    assert on["region"]["enabled"] is True and off["region"]["enabled"] is False


def test_region_cut_on_the_whole_slice_pooling_grid(tiny_model_file):
    """msrunet pools twice (4-pixel cells). A region cut inside the body box is read on the
    whole-slice pass's padded grid, not re-padded around itself, so two cells in from the cut
    its probabilities are the whole-slice ones exactly (a re-padded region shifts the pooling
    grid and changes every pixel), and at the cut they differ by a float16 step or so."""
    model = load_segmentation_model(tiny_model_file)
    hu = body_ct((4, 61, 59))
    add_disc(hu, slice(None), 30, 29, 6)
    # float32: the comparison is exact, and reduced precision moves values by more than that.
    cfg = PredictConfig(progress=False, crop_to_body=False, precision="float32")
    whole = predict_probabilities(model, hu, cfg)
    for y0, y1, x0, x1 in ((3, 61, 1, 58), (9, 50, 10, 50)):
        part = predict_probabilities(model, hu, cfg, boxes=np.tile([y0, y1, x0, x1], (4, 1)))
        inner = (slice(None), slice(y0 + 8, y1 - 8), slice(x0 + 8, x1 - 8))
        np.testing.assert_array_equal(part[inner], whole[inner])
        box = (slice(None), slice(y0, y1), slice(x0, x1))
        np.testing.assert_allclose(part[box].astype(np.float32),
                                   whole[box].astype(np.float32), atol=2e-3)


def test_post_processing_on_the_threshold_block_gives_the_same_mask(monkeypatch):
    """Resampling back, island removal and meshing run on the block where the probability
    reaches the threshold (not the region's whole block): the mask is the same voxel for voxel,
    on a 0.8 mm grid where the probabilities are interpolated."""
    from spineseg.inference import pipeline

    hu = body_ct((24, 400, 400))
    add_disc(hu, slice(None), 200, 205, 14)
    add_disc(hu, slice(4, 12), 230, 180, 5)  # a second, smaller piece beside the column
    vol = Volume(hu, (0.8, 0.8, 1.0))
    seen: list[tuple[int, ...]] = []
    real = pipeline.clean_mask

    def spy(mask, *args, **kwargs):
        seen.append(mask.shape)
        return real(mask, *args, **kwargs)

    monkeypatch.setattr(pipeline, "clean_mask", spy)
    base = SegmentConfig(predict=PredictConfig(progress=False, batch_size=4))
    tight = segment(vol, bone_model(), base)
    block = segment(vol, bone_model(), SegmentConfig(predict=base.predict,
                                                    keep_probabilities=True))
    assert tight.mask.array.sum() > 1000
    np.testing.assert_array_equal(tight.mask.array, block.mask.array)
    assert len(tight.mesh.faces) == len(block.mesh.faces)
    (tz, ty, tx), (bz, by, bx) = seen
    assert tz == bz and ty * tx < 0.5 * by * bx  # the bone's neighbourhood, not the region
    assert ty >= 2 * 14 / 0.8 and tx >= 2 * 14 / 0.8
