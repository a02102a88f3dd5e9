"""Per-vertebra measurements: volume, centroid, trabecular bone density, body heights.

Heights follow the semi-quantitative idea of Genant et al. (J Bone Miner Res 1993): anterior,
middle and posterior height of the body on its mid-sagittal plane, and a vertebra whose height
ratio falls below 0.8 (a 20 % reduction) is flagged. The plane follows the column: the height
axis is the line through the neighbouring bodies' centres, so a tilted lumbar body is measured
across its endplates, not along the scanner's z axis. The flag is for research and screening
only: it is not a fracture diagnosis.

Bone density is the mean and median HU of the trabecular core of the body, eroded
``cortex_mm`` away from its surface so that the cortical shell (700–1500 HU) does not inflate
it; that is the region opportunistic-screening studies place their ROI in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spineseg.vertebrae.instances import Instances

FLAG_RATIO = 0.8


@dataclass(frozen=True)
class MeasureConfig:
    cortex_mm: float = 4.0
    #: Half-width of the mid-sagittal slab and of each height band (mm); at least most of a
    #: voxel, so a 3 mm left–right grid still has a plane to measure on.
    slab_mm: float = 4.0
    band_mm: float = 2.0
    #: Where along the body's depth (anterior 0 → posterior 1) the three heights are taken.
    positions: tuple[float, float, float] = (0.15, 0.5, 0.85)


@dataclass
class VertebraMeasures:
    instance: int
    volume_ml: float
    centroid_voxel_zyx: tuple[float, float, float]
    partial: bool  # cut by the field of view: volume and heights are not the whole vertebra
    hu_mean: float | None
    hu_median: float | None
    trabecular_ml: float
    height_anterior_mm: float | None
    height_middle_mm: float | None
    height_posterior_mm: float | None
    ratio_anterior_posterior: float | None = None
    ratio_middle_posterior: float | None = None
    ratio_posterior_neighbours: float | None = None
    height_flag: bool = False


def _unit(v: np.ndarray) -> np.ndarray | None:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-6 else None


def _axes(inst: Instances, k: int, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(height axis, posterior axis) in (z, y, x) mm for instance ``k`` (1-based)."""
    c = inst.body_centroids * spacing
    lo, hi = max(0, k - 2), min(inst.count - 1, k)
    t = _unit(c[hi] - c[lo]) if hi > lo else None
    if t is None:
        t = np.array([1.0, 0.0, 0.0])
    if t[0] < 0:
        t = -t
    back = inst.centroids[k - 1] * spacing - c[k - 1]  # the arch pulls the centroid backwards
    a = _unit(back - (back @ t) * t)
    if a is None or a[1] < 0.3:
        a = _unit(np.array([0.0, 1.0, 0.0]) - t[1] * t)
    return t, a  # type: ignore[return-value]


def _heights(body: np.ndarray, whole: np.ndarray, origin: np.ndarray, spacing: np.ndarray,
             t: np.ndarray, a: np.ndarray, cfg: MeasureConfig
             ) -> tuple[float, float, float] | None:
    """Anterior, middle, posterior height (mm) on the mid-sagittal slab of the body.

    The body (``body``, opened, so its corners are rounded) gives the centre and the depth;
    the heights are read on the whole vertebra (``whole``, same box), whose endplate corners are
    intact: on the mid-sagittal plane only the body lies within the body's depth.
    """
    pts = (np.argwhere(body) + origin) * spacing
    if len(pts) < 10:
        return None
    centre = pts.mean(axis=0)
    lateral = np.cross(t, a)
    half = max(cfg.slab_mm, 0.6 * float(np.abs(lateral) @ spacing))
    rel = pts - centre
    u = (rel @ a)[np.abs(rel @ lateral) <= half]
    if u.size < 10:
        return None
    u0, u1 = np.percentile(u, [1, 99])
    rel = (np.argwhere(whole) + origin) * spacing - centre
    keep = np.abs(rel @ lateral) <= half
    s, u = (rel @ t)[keep], (rel @ a)[keep]
    band = max(cfg.band_mm, 0.6 * float(np.abs(a) @ spacing))
    voxel_t = float(np.abs(t) @ spacing)  # a voxel's length along the height axis
    out = []
    for f in cfg.positions:
        sel = np.abs(u - (u0 + f * (u1 - u0))) <= band
        if sel.sum() < 2:
            return None
        out.append(_run_through_centre(s[sel], voxel_t))
    return out[0], out[1], out[2]


def _run_through_centre(s: np.ndarray, step: float) -> float:
    """Length of the unbroken stretch of occupied ``step``-bins through s = 0 (the body centre).

    Not max - min: a piece of the same vertebra beyond a gap (an articular process reaching into
    the band on a tilted plane) would be counted as body height.
    """
    bins = np.floor(s / step).astype(int)
    occupied = np.zeros(bins.max() - bins.min() + 1, dtype=bool)
    occupied[bins - bins.min()] = True
    centre = int(np.clip(-bins.min(), 0, occupied.size - 1))
    if not occupied[centre]:
        centre = int(np.flatnonzero(occupied)[np.argmin(np.abs(np.flatnonzero(occupied) - centre))])
    lo = centre
    while lo > 0 and occupied[lo - 1]:
        lo -= 1
    hi = centre
    while hi < occupied.size - 1 and occupied[hi + 1]:
        hi += 1
    inside = s[(bins - bins.min() >= lo) & (bins - bins.min() <= hi)]
    return float(inside.max() - inside.min()) + step  # centres' spread plus one voxel


def measure_vertebrae(ct: np.ndarray, inst: Instances, spacing_xyz: tuple[float, float, float],
                      config: MeasureConfig | None = None) -> list[VertebraMeasures]:
    """Measure every instance on a canonical grid shared by ``ct`` and the instances."""
    cfg = config or MeasureConfig()
    spacing = np.asarray(spacing_xyz, dtype=float)[::-1]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    shape = np.asarray(inst.labels.shape)
    out: list[VertebraMeasures] = []
    objs = ndimage.find_objects(inst.labels)
    body_objs = ndimage.find_objects(inst.bodies)
    for k in range(1, inst.count + 1):
        o, bo = objs[k - 1], body_objs[k - 1] if k <= len(body_objs) else None
        part = inst.labels[o] == k
        partial = any(s.start == 0 or s.stop == n for s, n in zip(o, shape, strict=True))
        mean = median = None
        core_ml = 0.0
        heights = None
        if bo is not None:
            body = inst.bodies[bo] == k
            inside = ndimage.distance_transform_edt(np.pad(body, 1), sampling=spacing)[
                1:-1, 1:-1, 1:-1]
            core = inside >= cfg.cortex_mm
            if core.any():
                values = np.asarray(ct[bo], dtype=np.float64)[core]
                mean, median = float(values.mean()), float(np.median(values))
                core_ml = float(core.sum()) * voxel_ml
            # The opened body stops short of a cut face by up to its rounding: allow 3 mm.
            gap = np.maximum(1, np.ceil(3.0 / spacing)).astype(int)
            body_partial = any(s.start < g or s.stop > n - g
                               for s, n, g in zip(bo, shape, gap, strict=True))
            if not body_partial:
                t, a = _axes(inst, k, spacing)
                heights = _heights(inst.bodies[o] == k, part, np.array([s.start for s in o]),
                                   spacing, t, a, cfg)
        m = VertebraMeasures(
            instance=k, volume_ml=float(part.sum()) * voxel_ml,
            centroid_voxel_zyx=tuple(float(v) for v in inst.centroids[k - 1]),  # type: ignore[arg-type]
            partial=partial, hu_mean=mean, hu_median=median, trabecular_ml=core_ml,
            height_anterior_mm=heights[0] if heights else None,
            height_middle_mm=heights[1] if heights else None,
            height_posterior_mm=heights[2] if heights else None)
        if heights and heights[2] > 0:
            m.ratio_anterior_posterior = heights[0] / heights[2]
            m.ratio_middle_posterior = heights[1] / heights[2]
        out.append(m)
    for i, m in enumerate(out):  # posterior height against the neighbours' (a crush deformity)
        near = [out[j].height_posterior_mm for j in (i - 1, i + 1)
                if 0 <= j < len(out) and out[j].height_posterior_mm]
        if m.height_posterior_mm and near:
            m.ratio_posterior_neighbours = m.height_posterior_mm / float(np.mean(near))
        ratios = [r for r in (m.ratio_anterior_posterior, m.ratio_middle_posterior,
                              m.ratio_posterior_neighbours) if r is not None]
        m.height_flag = bool(ratios) and min(ratios) < FLAG_RATIO
    return out
