"""Statistics of a mask over its CT, the figures users compare between tools.

Voxel count, volume, bounding box (voxel indices and LPS millimetres) and the mean and median HU
inside the mask (what TotalSegmentator reports as ``intensity``). :func:`compute_statistics`
recomputes them for an existing mask file, so a mask from any tool can be measured the same way.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spineseg.errors import GeometryError
from spineseg.io import Volume, physical_bounds, read_image, resample_to
from spineseg.io.read import DEFAULT_MAX_VOXELS


@dataclass(frozen=True)
class BoundingBox:
    """Inclusive voxel index range ``(x, y, z)`` and the LPS millimetre box of those voxel
    centres (axis-aligned; for an oblique grid the box around its corners)."""

    voxel_min: tuple[int, int, int]
    voxel_max: tuple[int, int, int]
    lps_min_mm: tuple[float, float, float]
    lps_max_mm: tuple[float, float, float]


@dataclass(frozen=True)
class MaskStatistics:
    voxel_count: int
    volume_ml: float
    #: ``None`` when no CT was given or the mask is empty.
    intensity_mean_hu: float | None = None
    intensity_median_hu: float | None = None
    #: ``None`` for an empty mask.
    bounding_box: BoundingBox | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _bounding_box(mask: Volume) -> BoundingBox | None:
    nz = np.asarray(mask.array) > 0
    if not nz.any():
        return None
    lo, hi = [], []
    for axis in (2, 1, 0):  # numpy (z, y, x) -> report x, y, z
        hit = np.flatnonzero(nz.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]))
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))), float)
    points = (np.asarray(mask.origin)
              + (corners * np.asarray(mask.spacing)) @ mask.direction_matrix.T)
    return BoundingBox(tuple(lo), tuple(hi),  # type: ignore[arg-type]
                       tuple(round(float(v), 3) for v in points.min(axis=0)),  # type: ignore[arg-type]
                       tuple(round(float(v), 3) for v in points.max(axis=0)))  # type: ignore[arg-type]


def measure(mask: Volume, ct: Volume | None = None) -> MaskStatistics:
    """Statistics of ``mask`` (any non-zero voxel counts), with intensities from ``ct`` when given.

    ``ct`` must share the mask's grid (:func:`align_mask` puts a mask there); raises
    :class:`GeometryError` otherwise.
    """
    inside = np.asarray(mask.array) > 0
    count = int(inside.sum())
    volume_ml = round(count * float(np.prod(mask.spacing)) / 1000.0, 3)
    mean = median = None
    if ct is not None:
        if not ct.same_grid(mask):
            raise GeometryError("the mask and the CT do not share a voxel grid")
        if count:
            values = np.asarray(ct.array)[inside].astype(np.float64)
            mean, median = round(float(values.mean()), 2), round(float(np.median(values)), 2)
    return MaskStatistics(count, volume_ml, mean, median, _bounding_box(mask))


def align_mask(mask: Volume, ct: Volume) -> tuple[Volume, list[str]]:
    """``mask`` on ``ct``'s grid: as it is when the grids agree, else resampled through physical
    space (nearest neighbour, so labels stay labels). Refuses masks that do not overlap the CT."""
    if mask.same_grid(ct):
        return mask, []
    lo_m, hi_m = physical_bounds(mask)
    lo_c, hi_c = physical_bounds(ct)
    if np.any(hi_m < lo_c) or np.any(hi_c < lo_m):
        raise GeometryError(f"{mask.meta.get('source', 'mask')}: the mask does not overlap the CT "
                            f"{ct.meta.get('source', '')} in physical space")
    inside_before = int((np.asarray(mask.array) > 0).sum())
    aligned = resample_to(mask, ct, interpolation="nearest")
    note = (f"the mask's grid differs from the CT's; resampled onto the CT grid through physical "
            f"space (nearest neighbour, {inside_before} mask voxels before)")
    return aligned, [note]


def compute_statistics(ct: str | os.PathLike[str], mask: str | os.PathLike[str], *,
                       series_uid: str | None = None,
                       max_voxels: int = DEFAULT_MAX_VOXELS) -> dict[str, Any]:
    """Statistics and mask-quality flags of an existing ``mask`` over ``ct`` (files or a DICOM
    folder for the CT): what ``stats.json`` holds for a segmented case, recomputed.

    Raises :class:`~spineseg.errors.InputError` (or :class:`GeometryError`) for unreadable or
    non-overlapping inputs.
    """
    from spineseg.report.flags import mask_flags

    ct_vol = read_image(ct, series_uid=series_uid, max_voxels=max_voxels)
    mask_vol = read_image(mask, max_voxels=max_voxels)
    aligned, notes = align_mask(mask_vol, ct_vol)
    stats = measure(aligned, ct_vol)
    stats.notes.extend(notes)
    return {"ct": str(Path(ct)), "mask": str(Path(mask)), "statistics": stats.to_dict(),
            "flags": [f.to_dict() for f in mask_flags(aligned, stats.volume_ml)]}
