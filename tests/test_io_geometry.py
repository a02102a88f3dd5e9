"""Reorientation is an exact permutation; resampling goes through physical space."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spineseg.errors import GeometryError
from spineseg.io import (
    CANONICAL,
    Volume,
    read_image,
    reorient,
    resample_spacing,
    resample_to,
    write_image,
)


@pytest.fixture(scope="module")
def ras(shared_data) -> Volume:
    full = read_image(shared_data / "ts_abdomen_3mm" / "ct.nii.gz")
    crop = Volume.from_sitk(full.to_sitk()[40:70, 30:52, 40:56])
    assert crop.orientation == "RAS"
    return crop


def restore(vol: Volume, perm: tuple[int, int, int], flip: tuple[bool, bool, bool]) -> Volume:
    """Re-store ``vol`` by hand (numpy + index->point maths, no DICOMOrient): new voxel axis a is
    old axis perm[a], reversed where flip[a]. Same physical image, different storage order."""
    xyz = vol.array.transpose(2, 1, 0).transpose(perm)
    xyz = np.flip(xyz, axis=[a for a in range(3) if flip[a]])
    n = vol.shape_xyz
    first = [0, 0, 0]
    for a in range(3):
        first[perm[a]] = n[perm[a]] - 1 if flip[a] else 0
    d = vol.direction_matrix
    cols = [d[:, perm[a]] * (-1 if flip[a] else 1) for a in range(3)]
    return Volume(np.ascontiguousarray(xyz.transpose(2, 1, 0)),
                  tuple(vol.spacing[perm[a]] for a in range(3)),
                  vol.to_sitk().TransformIndexToPhysicalPoint(first),
                  tuple(np.column_stack(cols).ravel()))


@pytest.mark.parametrize(("code", "perm", "flip"), [
    ("PIR", (1, 2, 0), (True, True, False)),
    ("LAS", (0, 1, 2), (True, False, False)),
])
def test_restored_volume_reorients_to_the_same_canonical(ras, tmp_path, code, perm, flip):
    stored = restore(ras, perm, flip)
    assert stored.orientation == code
    on_disk = read_image(write_image(stored, tmp_path / f"{code}.nii.gz"))
    assert on_disk.orientation == code
    expected = restore(ras, (0, 1, 2), (True, True, False))  # RAS -> LPS by hand
    assert expected.orientation == CANONICAL
    canon = reorient(on_disk)
    assert canon.orientation == CANONICAL
    np.testing.assert_array_equal(canon.array, expected.array)
    assert canon.same_grid(expected, tol=1e-5)
    np.testing.assert_array_equal(reorient(ras).array, expected.array)
    back = reorient(canon, on_disk.orientation)
    np.testing.assert_array_equal(back.array, on_disk.array)
    assert back.same_grid(on_disk, tol=1e-5)


def test_reorient_is_exact_for_oblique_directions(ras):
    angle = np.deg2rad(12)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])
    oblique = Volume(ras.array, ras.spacing, ras.origin, tuple((rot @ ras.direction_matrix).ravel()))
    canon = reorient(oblique)
    assert canon.orientation == CANONICAL  # nearest axis order
    np.testing.assert_array_equal(canon.array, ras.array[:, ::-1, ::-1])  # no interpolation
    # still the oblique physical grid: every voxel centre maps to the same point
    a, b = oblique.to_sitk(), canon.to_sitk()
    nx, ny, _ = oblique.shape_xyz
    np.testing.assert_allclose(a.TransformIndexToPhysicalPoint((0, 0, 3)),
                               b.TransformIndexToPhysicalPoint((nx - 1, ny - 1, 3)), atol=1e-6)


def test_reorient_rejects_bad_codes(ras):
    for bad in ("LLS", "XYZ", "LP"):
        with pytest.raises(GeometryError, match="orientation code"):
            reorient(ras, bad)


def test_resample_to_same_grid_is_identity_and_keeps_dtype(ras):
    out = resample_to(ras, ras)
    assert out.array.dtype == ras.array.dtype
    np.testing.assert_array_equal(out.array, ras.array)
    lin = resample_to(ras, ras, interpolation="linear")
    assert lin.array.dtype == np.float32
    np.testing.assert_allclose(lin.array, ras.array, atol=1e-3)


def test_resample_to_other_storage_order(ras):
    lps = reorient(ras)
    np.testing.assert_array_equal(resample_to(lps, ras).array, ras.array)


def test_resample_to_uses_default_outside(ras):
    shifted = Volume(ras.array, ras.spacing,
                     tuple(np.add(ras.origin, (0, 0, 3 * ras.spacing[2]))), ras.direction)
    out = resample_to(shifted, ras, default_value=-1024)
    assert np.all(out.array[:3] == -1024)
    np.testing.assert_array_equal(out.array[3:], ras.array[:-3])


def test_resample_to_refuses_disjoint_images(ras):
    far = Volume(ras.array, ras.spacing, tuple(np.add(ras.origin, (0, 0, 500))), ras.direction)
    with pytest.raises(GeometryError, match="do not overlap"):
        resample_to(far, ras)


def test_resample_spacing_keeps_extent_and_origin(ras):
    sx, sy, sz = ras.spacing
    fine = resample_spacing(ras, (sx / 2, sy / 2, sz))
    nx, ny, nz = ras.shape_xyz
    assert fine.shape_xyz == (2 * nx, 2 * ny, nz)
    assert fine.origin == ras.origin and fine.direction == ras.direction
    # the points shared by both grids keep their values (linear interpolation is exact there)
    np.testing.assert_allclose(fine.array[:, ::2, ::2], ras.array, atol=1e-3)
    coarse = resample_spacing(ras, (2 * sx, 2 * sy, sz), interpolation="nearest")
    assert coarse.array.dtype == ras.array.dtype
    assert coarse.shape_xyz == (round(nx / 2), round(ny / 2), nz)


def test_resample_spacing_validates(ras):
    with pytest.raises(GeometryError):
        resample_spacing(ras, (0, 1, 1))
    with pytest.raises(GeometryError, match="interpolation"):
        resample_spacing(ras, (1, 1, 1), interpolation="cubic")
    from spineseg.errors import ResourceError

    with pytest.raises(ResourceError):
        resample_spacing(ras, (1e-3, 1e-3, 1e-3))


def test_dicomorient_matches_volume_orientation_property():
    vol = Volume(np.zeros((2, 3, 4), np.int16), (1, 1, 1),
                 direction=(0, 0, -1, 1, 0, 0, 0, -1, 0))
    assert vol.orientation == sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        vol.direction)
    assert reorient(vol, "RAS").orientation == "RAS"
