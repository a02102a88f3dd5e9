"""The notebook API: ``spineseg.segment`` on in-memory images, the result's save and conversions,
the progress switch, a short Volume repr and a clean ``dir(spineseg)``.

A tiny random-weight network (conftest's ``tiny_model_file``) with its threshold set to the 97th
percentile of its own output makes the mask a non-trivial, deterministic function of the image.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import spineseg
from spineseg.errors import InputError, OutputError
from spineseg.inference.api import volume_from_nibabel, volume_to_nibabel
from spineseg.inference.model_file import load_segmentation_model
from spineseg.inference.predict import PredictConfig
from spineseg.io import Volume, read_image, write_image
from spineseg.reconstruction import MeshConfig
from synthetic_ct import ct_volume

# A RAS-stored scan tilted 20° about z: flips and an oblique axis catch sign or transpose slips.
_C, _S = np.cos(np.radians(20)), np.sin(np.radians(20))
OBLIQUE_RAS = (-_C, _S, 0.0, -_S, -_C, 0.0, 0.0, 0.0, 1.0)
FAST = spineseg.SegmentConfig(predict=PredictConfig(batch_size=16, progress=False),
                              mesh=MeshConfig(max_faces=2000, smoothing_iterations=2),
                              keep_probabilities=True)


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> tuple[Volume, object]:
    base = ct_volume((8, 32, 32))
    vol = Volume(base.array, (2.0, 1.5, 3.0), (12.5, -40.0, 7.0), OBLIQUE_RAS)
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_image(vol, path)
    return read_image(path), path


@pytest.fixture(scope="module")
def model(tiny_model_file, ct_file):
    net = load_segmentation_model(tiny_model_file)
    probe = spineseg.segment(ct_file[0], net, FAST)
    net.threshold = float(np.percentile(probe.probabilities.array, 97))
    return net


def test_dir_is_the_public_api() -> None:
    public = [n for n in dir(spineseg) if not n.startswith("_")]
    assert public == ["SegmentConfig", "SegmentResult", "VertebraeResult", "Volume",
                      "label_vertebrae", "mask_statistics", "segment"]
    assert not hasattr(spineseg, "Any") and not hasattr(spineseg, "annotations")
    assert spineseg.Volume is Volume


def test_volume_repr_is_short_and_names_the_axes() -> None:
    vol = Volume(np.zeros((100, 200, 300), np.int16), (0.5, 0.5, 2.5), direction=OBLIQUE_RAS)
    text = repr(vol)
    assert len(text) < 160
    assert "(z, y, x)=(100, 200, 300)" in text and "int16" in text
    assert "(0.5, 0.5, 2.5) mm" in text and vol.orientation in text


def test_nibabel_conversion_agrees_with_itk_file_io(ct_file, tmp_path) -> None:
    vol, path = ct_file
    from_nib = volume_from_nibabel(nib.load(path))  # nibabel's reading of ITK's file
    assert np.array_equal(from_nib.array, vol.array) and from_nib.same_grid(vol)
    assert from_nib.meta["source"] == str(path.resolve())
    assert np.allclose(volume_to_nibabel(vol).affine, nib.load(path).affine, atol=1e-4)
    nib.save(volume_to_nibabel(vol), tmp_path / "back.nii.gz")  # and ITK reads nibabel's file
    back = read_image(tmp_path / "back.nii.gz")
    assert np.array_equal(back.array, vol.array) and back.same_grid(vol)
    four_d = nib.Nifti1Image(np.asarray(vol.array).T[..., None], nib.load(path).affine)
    assert volume_from_nibabel(four_d).same_grid(vol)


def test_segment_accepts_nibabel_and_simpleitk_images(ct_file, model) -> None:
    vol, path = ct_file
    ref = spineseg.segment(path, model, FAST)
    assert 0 < ref.mask.array.sum() < ref.mask.array.size
    for image in (nib.load(path), vol.to_sitk()):
        res = spineseg.segment(image, model, FAST)
        assert isinstance(res, spineseg.SegmentResult)
        assert res.mask.same_grid(vol) and np.array_equal(res.mask.array, ref.mask.array)
        assert np.allclose(res.probabilities.array, ref.probabilities.array)


@pytest.mark.parametrize("bad", [np.zeros((8, 32, 32), np.int16), object(), 3.0])
def test_other_inputs_are_input_errors_naming_what_works(bad) -> None:
    with pytest.raises(InputError, match="nibabel image") as info:
        spineseg.segment(bad)
    if isinstance(bad, np.ndarray):
        assert "spineseg.Volume(array_zyx, spacing_xyz)" in str(info.value)


def test_result_saves_and_converts(ct_file, model, tmp_path) -> None:
    vol, _ = ct_file
    res = spineseg.segment(vol, model, FAST)
    assert len(repr(res)) < 300
    written = res.save(tmp_path / "out")
    assert {p.name for p in written} == {"spine.nii.gz", "spine_prob.nii.gz", "spine.stl",
                                         "preview.png", "stats.json"}
    saved = nib.load(tmp_path / "out" / "spine.nii.gz")
    as_nib = res.to_nibabel()
    assert np.allclose(saved.affine, as_nib.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(saved.dataobj), np.asanyarray(as_nib.dataobj))
    assert as_nib.get_data_dtype() == np.uint8
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["spine_volume_ml"] > 0
    image = res.to_sitk()
    assert np.array_equal(sitk.GetArrayFromImage(image), res.mask.array)
    assert np.allclose(image.GetDirection(), vol.direction)
    assert np.allclose(image.GetOrigin(), vol.origin) and np.allclose(image.GetSpacing(),
                                                                       vol.spacing)
    with pytest.raises(OutputError, match="exists"):
        res.save(tmp_path / "out")
    names = {p.name for p in res.save(tmp_path / "out", overwrite=True, mesh_format=None,
                                      preview=False, probabilities=False)}
    assert names == {"spine.nii.gz", "stats.json"}


def test_save_refuses_probabilities_it_does_not_hold(ct_file, model, tmp_path) -> None:
    import dataclasses

    res = spineseg.segment(ct_file[0], model, dataclasses.replace(FAST, keep_probabilities=False,
                                                                  mesh=None))
    with pytest.raises(InputError, match="keep_probabilities"):
        res.save(tmp_path / "out", probabilities=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("progress", [True, False])
def test_progress_switch(ct_file, model, capsys, progress) -> None:
    spineseg.segment(ct_file[0], model, FAST, progress=progress)
    assert ("slices" in capsys.readouterr().err) == progress
