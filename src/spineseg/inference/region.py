"""Coarse-to-fine inference: find the column on a few slices, then segment only around it.

On an axial body CT the column fills a few percent of the slice; the rest is organs, table and
air, and running the 1 mm network over all of it is where the time goes. A coarse pass runs the
same network on one slice every :attr:`RegionConfig.step_mm` (always including the first and the
last slice), at the model's own in-plane spacing: a coarser grid would show the network anatomy
at a scale it was never trained on, and an HU rule finds every bone (ribs, pelvis), not the
column. The boxes of what it finds give each slice a region:

* a finding smaller than a whole vertebra (:attr:`RegionConfig.column_mm`) is widened to one
  around its centre: on a noisy scan the coarse pass may see only a spinous process or only a
  body, and the rest of that vertebra lies up to ~100 mm away;
* a slice takes the union of the column boxes on the nearest sampled slices with a finding above
  and below it (held beyond the first and last finding), so the region follows a lateral
  (scoliotic) curve between samples and covers the first and last slices;
* grown by :attr:`RegionConfig.margin_mm` on every side and clipped to the slice, and an edge
  that ends up within :attr:`RegionConfig.snap_mm` of the slice's edge goes to it: a thin strip
  saves little, while cutting the anatomy there shows the network an edge it never saw in
  training. On a spine-protocol field of view (about 120 mm or less) the region is the whole
  slice;
* a coarse pass that finds nothing leaves whole slices.

Everything found on a sampled slice counts, false positives included: they can only enlarge the
region, never lose column. The fine pass runs the network inside each slice's region only; its
probabilities outside are 0, and post-processing and meshing then work on the block holding the
region (see :func:`spineseg.inference.pipeline.segment`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from spineseg.errors import InputError


@dataclass(frozen=True)
class RegionConfig:
    """How the column is located and how much room is left around it (millimetres)."""

    enabled: bool = True
    #: One coarse slice per this many mm: vertebra plus disc is 20–35 mm below the neck, so
    #: every vertebra of the thoracolumbar spine is sampled at least once.
    step_mm: float = 15.0
    #: Room around the column boxes found: covers what the coarse pass missed on a slice (a
    #: transverse process, a spinous process) and the column's drift between two samples.
    margin_mm: float = 60.0
    #: Findings smaller than this on a coarse slice are noise, not column.
    min_area_mm2: float = 20.0
    #: (anterior-posterior, left-right) size of a whole vertebra with its processes: a smaller
    #: finding is widened to it around its centre.
    column_mm: tuple[float, float] = (110.0, 80.0)
    #: Region edges this close to the slice's edge are moved onto it.
    snap_mm: float = 30.0

    def __post_init__(self) -> None:
        if not (self.step_mm > 0 and np.isfinite(self.step_mm)):
            raise InputError(f"region step_mm must be > 0, got {self.step_mm!r}")
        for name, value in (("margin_mm", self.margin_mm), ("min_area_mm2", self.min_area_mm2),
                            ("snap_mm", self.snap_mm), ("column_mm", min(self.column_mm))):
            if not (value >= 0 and np.isfinite(value)):
                raise InputError(f"region {name} must be >= 0, got {value!r}")


@dataclass(frozen=True)
class ColumnRegion:
    """Per-slice in-plane boxes ``(y0, y1, x0, x1)`` (end exclusive) where the network runs.

    ``boxes`` is ``None`` for whole slices (region off, or the coarse pass found nothing).
    """

    shape: tuple[int, int, int]
    boxes: np.ndarray | None
    sampled: np.ndarray
    found: np.ndarray

    def block(self) -> tuple[slice, slice]:
        """The in-plane box holding every slice's region: what post-processing works on."""
        if self.boxes is None:
            return slice(0, self.shape[1]), slice(0, self.shape[2])
        b = self.boxes
        return (slice(int(b[:, 0].min()), int(b[:, 1].max())),
                slice(int(b[:, 2].min()), int(b[:, 3].max())))

    def summary(self) -> dict[str, Any]:
        """For the run's stats: how many slices were sampled and found, and the pixels kept."""
        z, h, w = self.shape
        if self.boxes is None:
            fraction = 1.0
        else:
            area = (self.boxes[:, 1] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 2])
            fraction = float(area.sum()) / float(z * h * w)
        ys, xs = self.block()
        return {"coarse_slices": int(self.sampled.size), "column_found_on": int(self.found.size),
                "whole_slices": self.boxes is None, "pixel_fraction": round(fraction, 4),
                "block_yx": [ys.start, ys.stop, xs.start, xs.stop]}


def whole_slices(shape: tuple[int, int, int]) -> ColumnRegion:
    """The region that is every slice in full (the pipeline without a coarse pass)."""
    empty = np.zeros(0, dtype=np.int64)
    return ColumnRegion(shape, None, empty, empty)


def sample_slices(depth: int, spacing_z: float, step_mm: float) -> np.ndarray:
    """Slice indices the coarse pass runs on: evenly spread, at most ``step_mm`` apart, first and
    last included."""
    if depth <= 1:
        return np.zeros(min(depth, 1), dtype=np.int64)
    extent = (depth - 1) * max(float(spacing_z), 1e-6)
    n = int(np.ceil(extent / step_mm)) + 1
    return np.unique(np.rint(np.linspace(0, depth - 1, min(n, depth))).astype(np.int64))


def coarse_boxes(shape: tuple[int, int, int], sampled: np.ndarray) -> np.ndarray:
    """Boxes for the coarse pass: the whole slice on ``sampled`` slices, empty elsewhere."""
    boxes = np.zeros((shape[0], 4), dtype=np.int64)
    boxes[sampled] = (0, shape[1], 0, shape[2])
    return boxes


def finding_box(prob: np.ndarray, threshold: float, min_area_px: float,
                ) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` around everything at or above ``threshold`` on one slice, specks
    smaller than ``min_area_px`` left out; ``None`` where nothing is found."""
    fg = np.asarray(prob) >= threshold
    if not fg.any():
        return None
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = (sizes >= max(min_area_px, 1))[labels]
    ys, xs = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if ys.size == 0:
        return None
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def widen_boxes(boxes: np.ndarray, size_yx: tuple[float, float], shape_yx: tuple[int, int],
                ) -> np.ndarray:
    """Boxes ``(y0, y1, x0, x1)`` widened about their centres to at least ``size_yx`` voxels."""
    out = np.asarray(boxes, dtype=np.int64).copy()
    for axis, (size, n) in enumerate(zip(size_yx, shape_yx, strict=True)):
        lo, hi = out[:, 2 * axis], out[:, 2 * axis + 1]
        half = np.maximum((hi - lo) / 2.0, size / 2.0)
        centre = (lo + hi) / 2.0
        out[:, 2 * axis] = np.maximum(np.floor(centre - half), 0)
        out[:, 2 * axis + 1] = np.minimum(np.ceil(centre + half), n)
    return out


def region_boxes(found_z: np.ndarray, found_boxes: np.ndarray, shape: tuple[int, int, int],
                 margin_yx: tuple[int, int], snap_yx: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Per-slice boxes from the findings on sampled slices (see the module docstring).

    Each slice takes the union of the boxes of the nearest finding at or above and at or below it
    (the nearest one only, beyond the ends), grown by ``margin_yx`` voxels and clipped; edges
    within ``snap_yx`` voxels of the slice's edge are moved onto it.
    """
    depth, h, w = shape
    z = np.arange(depth)
    last = found_z.size - 1
    below = np.clip(np.searchsorted(found_z, z, side="right") - 1, 0, last)
    above = np.clip(np.searchsorted(found_z, z, side="left"), 0, last)
    lo, hi = found_boxes[below], found_boxes[above]
    my, mx = margin_yx
    sy, sx = snap_yx
    y0 = np.minimum(lo[:, 0], hi[:, 0]) - my
    y1 = np.maximum(lo[:, 1], hi[:, 1]) + my
    x0 = np.minimum(lo[:, 2], hi[:, 2]) - mx
    x1 = np.maximum(lo[:, 3], hi[:, 3]) + mx
    return np.stack([np.where(y0 <= sy, 0, y0), np.where(y1 >= h - sy, h, y1),
                     np.where(x0 <= sx, 0, x0), np.where(x1 >= w - sx, w, x1)], axis=1)


def column_region(coarse: np.ndarray, sampled: np.ndarray, shape: tuple[int, int, int],
                  threshold: float, spacing_xy: tuple[float, float],
                  config: RegionConfig | None = None) -> ColumnRegion:
    """The region from the coarse probabilities ``coarse`` (one slice per entry of ``sampled``).

    ``spacing_xy`` is the grid's in-plane spacing (mm), which turns the margin and the speck size
    into voxels.
    """
    cfg = config or RegionConfig()
    sx, sy = (float(s) for s in spacing_xy)
    min_px = cfg.min_area_mm2 / (sx * sy)
    found_z, found = [], []
    for k, z in enumerate(np.asarray(sampled, dtype=np.int64)):
        box = finding_box(coarse[k], threshold, min_px)
        if box is not None:
            found_z.append(int(z))
            found.append(box)
    found_idx = np.asarray(found_z, dtype=np.int64)
    if not found:
        return ColumnRegion(shape, None, np.asarray(sampled, dtype=np.int64), found_idx)
    margin = (int(np.ceil(cfg.margin_mm / sy)), int(np.ceil(cfg.margin_mm / sx)))
    snap = (int(np.ceil(cfg.snap_mm / sy)), int(np.ceil(cfg.snap_mm / sx)))
    column = widen_boxes(np.asarray(found, dtype=np.int64),
                         (cfg.column_mm[0] / sy, cfg.column_mm[1] / sx), shape[1:])
    boxes = region_boxes(found_idx, column, shape, margin, snap)
    return ColumnRegion(shape, boxes, np.asarray(sampled, dtype=np.int64), found_idx)
