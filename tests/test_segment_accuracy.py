"""The shipped default model on the real cases, through the product pipeline.

These are regression guards for the shipped weights (the model card has the full picture,
including cross-validated numbers on cases its recipe never saw). All seven real patients are
in the shipped model's training data, so these figures measure the pipeline + weights end to end
(geometry, resampling, post-processing, the padding to the training patch), not
generalisation.
"""

from __future__ import annotations

import numpy as np
import pytest

from spineseg.data.simulate import add_ct_noise
from spineseg.evaluation import evaluate_mask_pair
from spineseg.inference.model_file import load_segmentation_model
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.predict import PredictConfig
from spineseg.io import read_image, reorient, resample_to, write_image
from spineseg.reconstruction import voxel_to_physical

# Measured with the committed weights (see docs/model-card.md), minus a small margin; these are
# also the release guards a new shipped model must meet.
MIN_DICE = {"ts_chest": 0.81, "ts_abdomen": 0.90}  # measured 0.849, 0.922
MIN_DICE_NOISE100_CHEST = 0.81  # measured 0.844

CFG = SegmentConfig(predict=PredictConfig(progress=False))


@pytest.fixture(scope="module")
def model():
    return load_segmentation_model(None)


@pytest.fixture(scope="module")
def chest(shared_data):
    ct = read_image(shared_data / "ts_chest_dicom")
    ref = read_image(shared_data / "ts_chest_dicom_ref" / "spine.nii.gz")
    return ct, ref


@pytest.fixture(scope="module")
def abdomen(shared_data):
    return (read_image(shared_data / "ts_abdomen_3mm" / "ct.nii.gz"),
            read_image(shared_data / "ts_abdomen_3mm" / "spine.nii.gz"))


@pytest.fixture(scope="module")
def abdomen_result(abdomen, model):
    return segment(abdomen[0], model, CFG)


def test_chest_dicom_series(chest, model):
    ct, ref = chest
    res = segment(ct, model, CFG)
    assert res.mask.same_grid(ct)
    assert evaluate_mask_pair(res.mask, ref).dice >= MIN_DICE["ts_chest"]


def test_abdomen_and_its_mesh(abdomen, abdomen_result):
    ct, ref = abdomen
    assert evaluate_mask_pair(abdomen_result.mask, ref).dice >= MIN_DICE["ts_abdomen"]
    mesh = abdomen_result.mesh
    assert mesh is not None and len(mesh.faces) > 1000
    nx, ny, nz = ct.shape_xyz
    corners = np.array([[x, y, z] for x in (-0.5, nx - 0.5) for y in (-0.5, ny - 0.5)
                        for z in (-0.5, nz - 0.5)])
    phys = voxel_to_physical(ct, corners)
    assert (mesh.vertices >= phys.min(0) - 1e-6).all()
    assert (mesh.vertices <= phys.max(0) + 1e-6).all()
    assert np.ptp(mesh.vertices[:, 2]) > 100.0  # spans the lumbar column cranio-caudally


@pytest.mark.parametrize("code", ["PIR", "LAS"])
def test_other_voxel_order_same_physical_mask(abdomen, abdomen_result, model, tmp_path, code):
    path = write_image(reorient(abdomen[0], code), tmp_path / f"ct_{code}.nii.gz")
    other = segment(path, model, CFG)
    back = resample_to(other.mask, abdomen[0], interpolation="nearest")
    np.testing.assert_array_equal(back.array, abdomen_result.mask.array)


def test_chest_with_correlated_noise_sd100(chest, model):
    ct, ref = chest
    noisy_hu = add_ct_noise(ct.array.astype(np.float32), 100.0, np.random.default_rng(0),
                            kernel="sharp")
    noisy = ct.with_array(np.clip(np.rint(noisy_hu), -1024, 3071).astype(np.int16))
    res = segment(noisy, model, CFG)
    assert evaluate_mask_pair(res.mask, ref).dice >= MIN_DICE_NOISE100_CHEST


# Spine-protocol crops stored as sagittal slices (no air in the field of view), measured 0.846,
# 0.846, 0.897: they must pass through the pipeline with their vertebral bodies. Run without the
# padding to the training patch, the previous shipped file kept only 0.47-0.62 of such scans.
MIN_DICE_SAGITTAL_CROP = {"verse006": 0.82, "verse007": 0.82, "verse008": 0.87}


@pytest.mark.parametrize("case", sorted(MIN_DICE_SAGITTAL_CROP))
def test_sagittal_spine_crop_keeps_its_vertebral_bodies(shared_data, model, case):
    ct = read_image(shared_data / case / "ct.nii.gz")
    ref = resample_to(read_image(shared_data / case / "spine.nii.gz"), ct,
                      interpolation="nearest")
    m = evaluate_mask_pair(segment(ct, model, CFG).mask, ref)
    assert m.dice >= MIN_DICE_SAGITTAL_CROP[case] and m.sensitivity >= 0.78


def test_abdomen_takes_little_other_anatomy_for_spine(abdomen, abdomen_result):
    # Forgetting whole-body anatomy shows as bone beside the column taken as spine (S1, pelvis,
    # rib heads): more than 3 mm from the reference, measured 1.9 mL; the release guard is the
    # previous shipped file's 6.3 mL + 2 mL.
    from scipy import ndimage

    ct, ref = abdomen
    r = np.asarray(ref.array) > 0
    beyond = ndimage.distance_transform_edt(~r, sampling=ct.spacing[::-1]) > 3.0
    ml = float((np.asarray(abdomen_result.mask.array > 0) & beyond).sum()) * np.prod(
        ct.spacing) / 1000.0
    assert ml <= 8.35
