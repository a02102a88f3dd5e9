"""Round trips through every format keep geometry and voxels; writes are atomic and safe."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spineseg.errors import OutputError
from spineseg.io import Volume, read_image, resample_to, write_dicom_series, write_image


@pytest.fixture(scope="module")
def small_ct(shared_data) -> Volume:
    """A 24x20x8 crop of the real abdominal CT (RAS, non-identity direction), as int16 HU."""
    full = read_image(shared_data / "ts_abdomen_3mm" / "ct.nii.gz")
    image = full.to_sitk()[50:74, 40:60, 50:58]
    crop = Volume.from_sitk(sitk.Cast(image, sitk.sitkInt16))
    assert crop.orientation == "RAS"
    return crop


def _same_geometry(a: Volume, b: Volume, tol: float) -> None:
    assert a.array.shape == b.array.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"])
def test_round_trip_file_formats(small_ct, tmp_path, ext):
    path = write_image(small_ct, tmp_path / f"crop{ext}")
    back = read_image(path)
    _same_geometry(back, small_ct, 1e-5)
    assert back.array.dtype == small_ct.array.dtype
    np.testing.assert_array_equal(back.array, small_ct.array)
    assert back.meta["source"] == str(path.resolve())
    # only the target (and the data file of a detached header) — no temporary left behind
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == (sorted([f"crop{ext}", "crop.raw"]) if ext in (".mhd", ".nhdr")
                     else [f"crop{ext}"])


def test_round_trip_float_with_nan(small_ct, tmp_path):
    arr = small_ct.array.astype(np.float32)
    arr[0, 0, :3] = np.nan
    back = read_image(write_image(small_ct.with_array(arr), tmp_path / "f.nii.gz"))
    np.testing.assert_array_equal(back.array, arr)  # NaN == NaN for assert_array_equal
    assert back.meta["nonfinite"] == "3"


def test_round_trip_dicom_series(small_ct, tmp_path):
    folder = write_dicom_series(small_ct, tmp_path / "series")
    assert len(list(folder.glob("*.dcm"))) == small_ct.shape_xyz[2]
    back = read_image(folder)
    _same_geometry(back, small_ct, 1e-4)
    np.testing.assert_array_equal(back.array, small_ct.array)
    assert back.meta["modality"] == "CT"
    assert back.meta["series_uid"].startswith("2.25.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # temp folder renamed away


def test_dicom_left_handed_grid_is_flipped_but_physically_identical(small_ct, tmp_path):
    # LAS (det -1) cannot be expressed in DICOM (normal = row x column): same image, z reversed.
    flipped = Volume.from_sitk(sitk.Flip(small_ct.to_sitk(), [True, False, False]))
    assert np.linalg.det(flipped.direction_matrix) < 0
    back = read_image(write_dicom_series(flipped, tmp_path / "las"))
    assert np.linalg.det(back.direction_matrix) > 0
    aligned = resample_to(back, flipped)
    np.testing.assert_array_equal(aligned.array, flipped.array)


def test_write_refuses_existing_target_and_keeps_it(small_ct, tmp_path):
    target = write_image(small_ct, tmp_path / "a.nii.gz")
    before = target.read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        write_image(small_ct.with_array(small_ct.array + 1), target)
    assert target.read_bytes() == before
    write_image(small_ct.with_array(small_ct.array + 1), target, overwrite=True)
    np.testing.assert_array_equal(read_image(target).array, small_ct.array + 1)


def test_write_never_over_its_input(small_ct, tmp_path):
    target = write_image(small_ct, tmp_path / "in.nrrd")
    vol = read_image(target)
    with pytest.raises(OutputError, match="read from"):
        write_image(vol, tmp_path / "." / "in.nrrd", overwrite=True)
    folder = write_dicom_series(small_ct, tmp_path / "dcm")
    with pytest.raises(OutputError, match="read from"):
        write_dicom_series(read_image(folder), folder, overwrite=True)


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".mhd"])
def test_failing_write_leaves_nothing_behind(small_ct, tmp_path, monkeypatch, ext):
    def half_write(image, name, *args, **kwargs):
        with open(name, "wb") as f:  # a partial file, then the disk "fills up"
            f.write(b"partial")
        raise RuntimeError("ITK ERROR: no space left on device")

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    with pytest.raises(OutputError, match="no space left"):
        write_image(small_ct, tmp_path / f"out{ext}")
    assert list(tmp_path.iterdir()) == []


def test_failing_dicom_write_leaves_nothing_behind(small_ct, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = sitk.ImageFileWriter.Execute

    def flaky(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("ITK ERROR: disk full")
        return real(self, *args)

    monkeypatch.setattr(sitk.ImageFileWriter, "Execute", flaky)
    with pytest.raises(OutputError, match="disk full"):
        write_dicom_series(small_ct, tmp_path / "series")
    assert list(tmp_path.iterdir()) == []


def test_dicom_overwrite_only_replaces_a_dicom_folder(small_ct, tmp_path):
    folder = write_dicom_series(small_ct, tmp_path / "s")
    with pytest.raises(OutputError, match="already exists"):
        write_dicom_series(small_ct, folder)
    write_dicom_series(small_ct.with_array(small_ct.array - 5), folder, overwrite=True)
    np.testing.assert_array_equal(read_image(folder).array, small_ct.array - 5)
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(OutputError, match=r"other than \.dcm"):
        write_dicom_series(small_ct, folder, overwrite=True)
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_unsupported_output_extension(small_ct, tmp_path):
    with pytest.raises(OutputError, match="unsupported"):
        write_image(small_ct, tmp_path / "x.png")
