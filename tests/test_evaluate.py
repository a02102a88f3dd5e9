"""Evaluation of mask files (through physical space) and of a checkpoint on a dataset split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.manifest import case_dir, read_manifest
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError
from spineseg.evaluation.evaluate import (
    evaluate_masks,
    evaluate_model,
    iter_slice_logits,
    predict_volume,
)
from spineseg.evaluation.metrics import volume_metrics
from spineseg.io import Volume, write_image
from spineseg.models import build_model
from spineseg.training.trainer import train
from test_train import tiny_config, write_tiny_dataset

SPACING = (0.8, 0.9, 2.0)


def _ref_volume() -> Volume:
    mask = np.zeros((6, 12, 10), np.uint8)
    mask[1:4, 2:6, 3:9] = 1  # off-centre in y, so a y flip moves it
    return Volume(mask, SPACING, origin=(10.0, -5.0, 3.0))


def _flipped_y(v: Volume) -> Volume:
    """The same physical image stored with the anterior-posterior voxel axis reversed."""
    ny = v.array.shape[1]
    origin = (v.origin[0], v.origin[1] + (ny - 1) * v.spacing[1], v.origin[2])
    direction = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    return Volume(np.ascontiguousarray(v.array[:, ::-1, :]), v.spacing, origin, direction)


def test_same_physical_mask_in_another_voxel_order_scores_one(tmp_path) -> None:
    ref = _ref_volume()
    pred = _flipped_y(ref)
    assert volume_metrics(pred.array, ref.array, SPACING).dice < 0.5  # raw arrays disagree
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    write_image(ref, tmp_path / "ref" / "p1.nii.gz")
    write_image(pred, tmp_path / "pred" / "p1.nii.gz")
    write_image(ref, tmp_path / "ref" / "p2.nii.gz")
    shifted = ref.with_array(np.roll(ref.array, 1, axis=0))  # one slice = 2 mm off
    write_image(_flipped_y(shifted), tmp_path / "pred" / "p2.nrrd")  # format may differ too
    result = evaluate_masks(tmp_path / "pred", tmp_path / "ref")
    p1, p2 = result.cases
    assert (p1.case, p1.dice, p1.hd95_mm, p1.asd_mm) == ("p1", 1.0, 0.0, 0.0)
    assert p2.dice == pytest.approx(2 * 48 / 144) and p2.hd95_mm == pytest.approx(2.0)
    assert result.pooled.n_cases == 2


def test_reference_without_prediction_is_refused(tmp_path) -> None:
    for name in ("ref", "pred"):
        (tmp_path / name).mkdir()
    write_image(_ref_volume(), tmp_path / "ref" / "a.nii.gz")
    write_image(_ref_volume(), tmp_path / "ref" / "b.nii.gz")
    write_image(_ref_volume(), tmp_path / "pred" / "a.nii.gz")
    with pytest.raises(InputError, match="b"):
        evaluate_masks(tmp_path / "pred", tmp_path / "ref")


def test_slice_logits_pad_and_crop_back_odd_sizes() -> None:
    torch.manual_seed(0)
    model = build_model("unet", base_width=4, depth=2).eval()
    hu = np.random.default_rng(0).normal(0, 300, (5, 37, 42)).astype(np.int16)
    with torch.inference_mode():
        chunks = list(iter_slice_logits(model, hu, Preprocessing(), divisor=4, batch_size=2))
    assert [s for s, _ in chunks] == [0, 2, 4]
    assert all(c.shape[1:] == (1, 37, 42) for _, c in chunks)
    mask = predict_volume(model, hu, Preprocessing(), divisor=4, batch_size=2)
    assert mask.shape == hu.shape and mask.dtype == np.uint8
    logits = torch.cat([c for _, c in chunks])[:, 0].numpy()
    assert np.array_equal(mask, (logits > 0).astype(np.uint8))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    data = write_tiny_dataset(root / "ds")
    train(tiny_config(data, root / "run", epochs=2, max_steps_per_epoch=4))
    return data, root / "run" / "best.pt"


def test_model_evaluation_agrees_with_mask_evaluation(trained, tmp_path) -> None:
    data, ckpt = trained
    result = evaluate_model(ckpt, data, "test")
    manifest = read_manifest(data)
    assert [c.case for c in result.cases] == manifest.case_ids("test")
    assert result.source["split"] == "test" and 0.0 <= result.pooled.dsc <= 1.0
    # The same predictions, written as files with their geometry, give the same numbers.
    model = build_model("unet", base_width=4, depth=2)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    for name in ("pred", "ref"):
        (tmp_path / name).mkdir()
    for cid in manifest.case_ids("test"):
        hu = np.load(case_dir(data, cid) / "image.npy")
        ref = np.load(case_dir(data, cid) / "mask.npy")
        pred = predict_volume(model, hu, Preprocessing(), divisor=4)
        spacing = tuple(manifest.cases[cid].spacing)
        write_image(Volume(pred, spacing), tmp_path / "pred" / f"{cid}.nii.gz")
        write_image(Volume(ref, spacing), tmp_path / "ref" / f"{cid}.nii.gz")
    from_files = evaluate_masks(tmp_path / "pred", tmp_path / "ref")
    assert from_files.pooled.dsc == pytest.approx(result.pooled.dsc)
    assert from_files.cases[0].hd95_mm == pytest.approx(result.cases[0].hd95_mm, nan_ok=True)


def test_cli_evaluate_both_modes(trained, tmp_path, capsys) -> None:
    data, ckpt = trained
    out = tmp_path / "model_report"
    assert main(["evaluate", "--model", str(ckpt), "--data", str(data), "--split", "val",
                 "-o", str(out)]) == 0
    assert "DSC" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["source"]["split"] == "val" and summary["pooled"]["n_cases"] == 1
    assert (out / "metrics.csv").is_file() and (out / "summary.md").is_file()
    assert main(["evaluate", "--model", str(ckpt), "--data", str(data), "-o", str(out)]) == 4

    for name in ("ref", "pred"):
        (tmp_path / name).mkdir()
    write_image(_ref_volume(), tmp_path / "ref" / "x.nii.gz")
    write_image(_flipped_y(_ref_volume()), tmp_path / "pred" / "x.nii.gz")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "-o", str(tmp_path / "mask_report")]) == 0
    assert "DSC 100.00 %" in capsys.readouterr().out
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "-o", str(tmp_path / "r")]) == 3
    assert main(["evaluate", "--model", str(tmp_path / "ref" / "x.nii.gz"), "--data", str(data),
                 "-o", str(tmp_path / "r2")]) == 5  # not a checkpoint: ModelError


def test_real_ras_mask_against_its_lps_copy(shared_data, tmp_path) -> None:
    from scipy import ndimage

    from spineseg.io import read_image, reorient

    ref = read_image(shared_data / "ts_abdomen_3mm" / "spine.nii.gz")  # RAS on disk
    lps = reorient(ref, "LPS")
    assert not np.array_equal(lps.array, ref.array)  # really another voxel order
    for name in ("ref", "same", "grown"):
        (tmp_path / name).mkdir()
    write_image(ref, tmp_path / "ref" / "ab.nii.gz")
    write_image(lps, tmp_path / "same" / "ab.nrrd")
    grown = lps.with_array(ndimage.binary_dilation(lps.array > 0).astype(np.uint8))
    write_image(grown, tmp_path / "grown" / "ab.nii.gz")
    same = evaluate_masks(tmp_path / "same", tmp_path / "ref").cases[0]
    assert (same.dice, same.hd95_mm, same.asd_mm) == (1.0, 0.0, 0.0)
    worse = evaluate_masks(tmp_path / "grown", tmp_path / "ref").cases[0]
    assert 0.5 < worse.dice < 1.0 and worse.sensitivity == 1.0
    # Every grown voxel is one 3 mm step from the reference; distances from the reference can be
    # larger where growth filled a gap (its surface moved away), so HD95 is at least 3 mm.
    assert 3.0 <= worse.hd95_mm < 6.1 and worse.precision < 1.0
