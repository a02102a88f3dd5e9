"""Reorientation and resampling through physical space.

Images and masks from different files rarely share a voxel order (the reference masks of the
chest series store the anterior-posterior axis flipped), so alignment always goes through physical
coordinates: :func:`reorient` permutes/flips axes exactly, :func:`resample_to` interpolates one
image onto another's grid, never by comparing raw arrays.
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from spineseg.errors import GeometryError, ResourceError
from spineseg.io.read import DEFAULT_MAX_VOXELS
from spineseg.io.volume import Volume

#: The processing orientation (ITK/DICOM letters: where each axis *points to*): identity
#: direction, array[z] an axial slice viewed radiologically.
CANONICAL = "LPS"

_INTERPOLATORS = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear,
                  "bspline": sitk.sitkBSpline}
_AXIS_LETTERS = ("LR", "PA", "SI")


def _check_code(code: str) -> str:
    code = code.upper()
    axes = sorted(next((i for i, pair in enumerate(_AXIS_LETTERS) if c in pair), -1) for c in code)
    if len(code) != 3 or axes != [0, 1, 2]:
        raise GeometryError(f"invalid orientation code {code!r}: three letters, one from each of "
                            "L/R, P/A, S/I (e.g. 'LPS', 'RAS', 'PIR')")
    return code


def reorient(volume: Volume, code: str = CANONICAL) -> Volume:
    """Permute/flip the voxel axes so that they point as ``code`` says (ITK letter convention).

    Exact (no interpolation): the physical image is unchanged, only the storage order differs, and
    ``reorient(reorient(v, c), v.orientation)`` gives back ``v`` voxel for voxel. For an oblique
    direction :func:`sitk.DICOMOrient` picks, per voxel axis, the anatomical axis it is closest to;
    the result keeps its oblique direction cosines (permuted/negated), so its orientation code is
    the nearest one, not an exact axis alignment.
    """
    code = _check_code(code)
    if volume.orientation == code:
        return volume
    image = sitk.DICOMOrient(volume.to_sitk(), code)
    return Volume.from_sitk(image, dict(volume.meta))


def physical_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical (LPS mm) box of the voxel *extents* (corners ± half a voxel)."""
    image_dir = volume.direction_matrix
    size = np.array(volume.shape_xyz, float)
    corners = np.array(list(itertools.product(*[(-0.5, s - 0.5) for s in size])))
    points = np.asarray(volume.origin) + (corners * np.asarray(volume.spacing)) @ image_dir.T
    return points.min(axis=0), points.max(axis=0)


def _interpolator(interpolation: str) -> int:
    try:
        return _INTERPOLATORS[interpolation]
    except KeyError:
        raise GeometryError(f"unknown interpolation {interpolation!r} "
                            f"(use one of {', '.join(_INTERPOLATORS)})") from None


def _output_pixel(moving: Volume, interpolation: str) -> int:
    """Nearest keeps labels and HU in their own type; smooth kernels need floats."""
    if interpolation == "nearest":
        return sitk.sitkUnknown  # sitk.Resample then keeps the input pixel type
    return sitk.sitkFloat64 if moving.array.dtype == np.float64 else sitk.sitkFloat32


def resample_to(moving: Volume, reference: Volume, *, interpolation: str = "nearest",
                default_value: float = 0.0) -> Volume:
    """``moving`` sampled on ``reference``'s grid, matching physical points (identity transform).

    Voxels of the reference outside ``moving`` get ``default_value`` (use -1024 for CT, 0 for
    masks). Raises :class:`GeometryError` when the two images do not overlap at all — almost
    always a wrong pairing or a broken header, which a silent all-background result would hide.
    """
    interp = _interpolator(interpolation)
    lo_m, hi_m = physical_bounds(moving)
    lo_r, hi_r = physical_bounds(reference)
    if np.any(np.minimum(hi_m, hi_r) <= np.maximum(lo_m, lo_r)):
        raise GeometryError(
            "the images do not overlap in physical space: "
            f"moving spans {np.round(lo_m, 1).tolist()}..{np.round(hi_m, 1).tolist()} mm, "
            f"reference {np.round(lo_r, 1).tolist()}..{np.round(hi_r, 1).tolist()} mm (LPS)")
    image = sitk.Resample(moving.to_sitk(), reference.to_sitk(), sitk.Transform(), interp,
                          float(default_value), _output_pixel(moving, interpolation))
    return Volume.from_sitk(image, dict(moving.meta))


def resample_spacing(volume: Volume, spacing_xyz: tuple[float, float, float], *,
                     interpolation: str = "linear", default_value: float = 0.0,
                     max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Resample to a new voxel spacing, keeping origin, direction and physical extent.

    The new size is ``round(size * old / new)`` per axis, so the extent matches to within one new
    voxel. An axis given its current spacing is reproduced exactly (the sample points coincide).
    """
    new = tuple(float(s) for s in spacing_xyz)
    if len(new) != 3 or any(not np.isfinite(s) or s <= 0 for s in new):
        raise GeometryError(f"invalid target spacing {spacing_xyz} (three values > 0)")
    interp = _interpolator(interpolation)
    size = [max(1, round(n * old / s)) for n, old, s in
            zip(volume.shape_xyz, volume.spacing, new, strict=True)]
    if int(np.prod(size, dtype=np.float64)) > max_voxels:
        raise ResourceError(f"resampling to {new} mm would give {'x'.join(map(str, size))} "
                            f"voxels, above the limit of {max_voxels:,}")
    image = sitk.Resample(volume.to_sitk(), size, sitk.Transform(), interp, volume.origin, new,
                          volume.direction, float(default_value),
                          _output_pixel(volume, interpolation))
    return Volume.from_sitk(image, dict(volume.meta))


def nearest_axes(volume: Volume) -> tuple[int, int, int]:
    """For each physical axis (x, y, z), the voxel axis (0 = i/x, 1 = j/y, 2 = k/z) pointing
    closest to it: the permutation :func:`reorient` applies, computed without touching voxels."""
    absdir = np.abs(volume.direction_matrix)  # column i: where voxel axis i points
    order = [-1, -1, -1]
    for flat in np.argsort(-absdir, axis=None):  # greedy by cosine: a permutation always results
        phys, vox = divmod(int(flat), 3)
        if order[phys] < 0 and vox not in order:
            order[phys] = vox
    return order[0], order[1], order[2]


def obliquity_deg(volume: Volume) -> float:
    """Largest angle (degrees) between a voxel axis and the physical axis it is stored along.

    0 for any axis-aligned voxel order (LPS, RAS, PIR, ...); the tilt that reorientation alone
    leaves in the "axial" slices of an oblique scan (a 60° rotation about one axis leaves 30°).
    """
    order = nearest_axes(volume)
    cosines = [abs(float(volume.direction_matrix[phys, vox])) for phys, vox in enumerate(order)]
    return float(np.degrees(np.arccos(np.clip(min(cosines), 0.0, 1.0))))


def axis_aligned_grid(volume: Volume, spacing_xyz: tuple[float, float, float]) -> tuple[
        tuple[int, int, int], tuple[float, float, float]]:
    """``(size_xyz, origin)`` of the identity-direction (LPS) grid with ``spacing_xyz`` that covers
    ``volume``'s physical extent, centred on it; nothing is allocated."""
    spacing = np.asarray(spacing_xyz, dtype=float)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise GeometryError(f"invalid target spacing {spacing_xyz} (three values > 0)")
    lo, hi = physical_bounds(volume)
    size = np.maximum(1, np.ceil((hi - lo) / spacing - 1e-6)).astype(int)
    origin = (lo + hi) / 2 - (size - 1) / 2 * spacing
    return ((int(size[0]), int(size[1]), int(size[2])),
            (float(origin[0]), float(origin[1]), float(origin[2])))


def resample_axis_aligned(volume: Volume, spacing_xyz: tuple[float, float, float], *,
                          interpolation: str = "linear", default_value: float = 0.0,
                          max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """``volume`` resampled onto :func:`axis_aligned_grid` (identity direction, canonical LPS).

    For oblique scans, whose voxel rows no reorientation can turn into true axial slices; points
    of the box outside the scan get ``default_value`` (-1024 for CT).
    """
    size, origin = axis_aligned_grid(volume, spacing_xyz)
    if int(np.prod(size, dtype=np.float64)) > max_voxels:
        raise ResourceError(f"resampling onto an axis-aligned grid at {tuple(spacing_xyz)} mm "
                            f"would give {'x'.join(map(str, size))} voxels, above the limit of "
                            f"{max_voxels:,}")
    image = sitk.Resample(volume.to_sitk(), list(size), sitk.Transform(),
                          _interpolator(interpolation), origin,
                          tuple(float(s) for s in spacing_xyz), tuple(np.eye(3).ravel()),
                          float(default_value), _output_pixel(volume, interpolation))
    return Volume.from_sitk(image, dict(volume.meta))
