"""DICOM series: real-series geometry, sorting by position, several series, broken series."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from spineseg.cli.main import main
from spineseg.errors import GeometryError, InputError
from spineseg.io import (
    Volume,
    list_dicom_series,
    read_image,
    resample_to,
    write_dicom_series,
)
from spineseg.io.itk_common import preserve_locale


@pytest.fixture(scope="module")
def chest(shared_data) -> Volume:
    return read_image(shared_data / "ts_chest_dicom")


@pytest.fixture(scope="module")
def small(chest) -> Volume:
    image = chest.to_sitk()[200:230, 300:324, 4:10]
    return Volume.from_sitk(image)


def _positions_from_headers(folder) -> list[float]:
    out = []
    for f in sorted(folder.iterdir()):
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        r.ReadImageInformation()
        out.append(float(r.GetMetaData("0020|0032").split("\\")[2]))
    return out


def test_chest_series_geometry(chest, shared_data):
    assert chest.shape_xyz == (512, 512, 20)
    np.testing.assert_allclose(chest.spacing, (0.977, 0.977, 2.0), atol=1e-3)
    assert chest.orientation == "LPS"
    assert chest.meta["modality"] == "CT"
    assert chest.meta["source"] == str((shared_data / "ts_chest_dicom").resolve())
    z = _positions_from_headers(shared_data / "ts_chest_dicom")
    # origin is the lowest slice, spacing the mean step of the header positions
    assert chest.origin[2] == pytest.approx(min(z))
    assert chest.spacing[2] == pytest.approx((max(z) - min(z)) / (len(z) - 1))
    assert chest.array.dtype == np.int16
    assert chest.array.min() >= -1024  # rescale intercept applied: HU, not stored values


def test_sorting_ignores_file_names(chest, shared_data, tmp_path):
    # Rename the files so that name order is a scrambled permutation of position order.
    files = sorted((shared_data / "ts_chest_dicom").iterdir())
    perm = np.random.default_rng(0).permutation(len(files))
    for i, f in zip(perm, files, strict=True):
        shutil.copy(f, tmp_path / f"IM{i:04d}")
    again = read_image(tmp_path)
    np.testing.assert_array_equal(again.array, chest.array)
    assert again.same_grid(chest, tol=1e-6)
    assert np.all(np.diff(chest.array.reshape(20, -1).mean(axis=1)) != 0)  # slices differ


def test_reference_mask_aligned_through_physical_space_lies_on_bone(chest, shared_data):
    mask = read_image(shared_data / "ts_chest_dicom_ref" / "spine.nii.gz")
    aligned = resample_to(mask, chest, interpolation="nearest")
    assert aligned.array.dtype == mask.array.dtype
    inside = aligned.array > 0
    assert inside.sum() > 1000
    assert chest.array[inside].mean() > 200


def test_raw_mask_array_is_misaligned(chest, shared_data):
    """The trap the README warns about: same shape, flipped A-P axis, so raw arrays mislead."""
    mask = read_image(shared_data / "ts_chest_dicom_ref" / "spine.nii.gz")
    aligned = resample_to(mask, chest).array > 0
    raw = mask.array > 0
    assert raw.shape == chest.array.shape  # nothing warns you: shapes agree
    raw_hu = chest.array[raw].mean()
    assert raw_hu < 0  # lands in soft tissue / air, far from bone
    dice = 2 * np.logical_and(raw, aligned).sum() / (raw.sum() + aligned.sum())
    assert dice < 0.2
    # and flipping the A-P axis by hand is exactly what physical-space alignment did
    np.testing.assert_array_equal(raw[:, ::-1, :], aligned)


def test_two_series_pick_the_larger_and_record_it(small, tmp_path, caplog):
    big = write_dicom_series(small, tmp_path / "a")
    little = write_dicom_series(Volume.from_sitk(small.to_sitk()[:, :, :3]), tmp_path / "b")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in [*big.iterdir(), *little.iterdir()]:
        shutil.copy(f, mixed / f"{f.parent.name}_{f.name}")
    series = list_dicom_series(mixed)
    assert [s.n_slices for s in series] == [6, 3]
    uid_big, uid_little = series[0].uid, series[1].uid
    with caplog.at_level(logging.WARNING):
        vol = read_image(mixed)
    assert vol.shape_xyz[2] == 6
    assert vol.meta["series_uid"] == uid_big
    assert uid_little in vol.meta["series_note"] and uid_big in vol.meta["series_note"]
    assert any(uid_little in r.getMessage() for r in caplog.records)
    chosen = read_image(mixed, series_uid=uid_little)
    assert chosen.shape_xyz[2] == 3 and "series_note" not in chosen.meta
    np.testing.assert_array_equal(chosen.array, small.array[:3])
    with pytest.raises(InputError, match=uid_little):
        read_image(mixed, series_uid="1.2.3.4")


def test_cli_series_option(small, tmp_path, capsys):
    write_dicom_series(small, tmp_path / "s")
    uid = list_dicom_series(tmp_path / "s")[0].uid
    assert main(["info", str(tmp_path / "s"), "--series", uid]) == 0
    assert uid in capsys.readouterr().out
    assert main(["info", str(tmp_path / "s"), "--series", "9.9"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error:") and uid in err


def test_missing_slice_is_refused(small, tmp_path):
    folder = write_dicom_series(small, tmp_path / "s")
    sorted(folder.iterdir())[2].unlink()
    with pytest.raises(InputError, match="1 missing slice"):
        read_image(folder)


def _write_slices(folder, slices, uid="2.25.1"):
    """Hand-made series: each (2D int16 array, z position, pixel spacing) with one series UID."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with preserve_locale():  # GDCM's writer sets the process locale to "C"
        _write_each(writer, folder, slices, uid)
    return folder


def _write_each(writer, folder, slices, uid) -> None:
    for k, (arr, z, sp) in enumerate(slices):
        img = sitk.GetImageFromArray(arr.astype(np.int16))
        img.SetSpacing((sp, sp))
        for key, value in {"0020|000e": uid, "0020|000d": "2.25.2", "0008|0060": "CT",
                           "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"2.25.3{k}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{z}",
                           "0020|0013": str(k)}.items():
            img.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{k}.dcm"))
        writer.Execute(img)


def test_mixed_slice_sizes_are_refused(tmp_path):
    a, b = np.zeros((8, 8)), np.zeros((6, 8))
    folder = _write_slices(tmp_path / "s", [(a, 0, 1), (a, 1, 1), (b, 2, 1), (a, 3, 1)])
    with pytest.raises(InputError, match="mixed size"):
        read_image(folder)


def test_mixed_pixel_spacing_is_refused(tmp_path):
    a = np.zeros((8, 8))
    folder = _write_slices(tmp_path / "s", [(a, 0, 1), (a, 1, 1), (a, 2, 0.5)])
    with pytest.raises(InputError, match="mixed pixel spacing"):
        read_image(folder)


def test_uneven_slice_spacing_is_refused(tmp_path):
    a = np.zeros((8, 8))
    folder = _write_slices(tmp_path / "s", [(a, z, 1) for z in (0, 2, 4, 5.3, 7.3)])
    with pytest.raises(InputError, match="inconsistent slice spacing"):
        read_image(folder)


def test_duplicate_positions_are_refused(tmp_path):
    a = np.zeros((8, 8))
    folder = _write_slices(tmp_path / "s", [(a, z, 1) for z in (0, 1, 1, 2)])
    with pytest.raises(InputError, match="same position"):
        read_image(folder)


def test_single_slice_is_2d(tmp_path):
    folder = _write_slices(tmp_path / "s", [(np.zeros((8, 8)), 0, 1)])
    with pytest.raises(GeometryError, match="2D"):
        read_image(folder)


def test_writing_a_series_leaves_the_callers_locale_alone(tmp_path) -> None:
    import locale

    before = locale.setlocale(locale.LC_ALL, None)
    write_dicom_series(Volume(np.zeros((3, 8, 8), np.int16), (1.0, 1.0, 1.0)), tmp_path / "s")
    assert locale.setlocale(locale.LC_ALL, None) == before
