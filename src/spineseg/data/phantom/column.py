"""The vertebral column of a phantom: a random curve, real vertebrae placed on it, discs, canal.

World coordinates are LPS millimetres with the L5/S1 disc near the origin. Vertebrae are the
packaged real templates (:mod:`spineseg.data.shapes`), scaled, slightly sheared and rotated to
the curve tangent, and sampled onto the output grid with one ``affine_transform`` per vertebra
restricted to its bounding box.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spineseg.data.phantom.grid import Grid, fill_cylinder, frame_from_axis, rotation
from spineseg.data.shapes import LEVEL_NAMES, VertebraTemplate, load_templates
from spineseg.errors import InputError

# Body height (SI) and disc height below, mm, by level (docs/anatomy.md, after Panjabi et al.).
_BODY_H = {"C": (13.0, 15.0), "T1": (16.0, 19.0), "T5": (18.0, 21.0), "T10": (21.0, 24.0),
           "L": (25.0, 28.0)}
_DISC_H = {"C": (4.0, 6.0), "T1": (4.0, 5.0), "T5": (4.0, 6.0), "T10": (5.0, 7.0),
           "L": (9.0, 12.0)}


def _group(name: str) -> str:
    if name[0] in "CL":
        return name[0]
    n = int(name[1:])
    return "T1" if n <= 4 else "T5" if n <= 9 else "T10"


@dataclass
class PlacedVertebra:
    """A template placed in the world: ``world = center + linear @ (u - body_center)`` (xyz mm)."""

    name: str
    template: VertebraTemplate
    center: np.ndarray  # world xyz of the body centre
    frame: np.ndarray  # columns: local left, posterior, superior (world xyz)
    linear: np.ndarray  # 3x3 world-from-template (xyz), includes scale and shear
    height: float  # scaled body height (mm)
    depth: float
    width: float

    def to_world(self, u_zyx: np.ndarray) -> np.ndarray:
        u = np.asarray(u_zyx, float)[..., ::-1] - self.template.body_center[::-1]
        return self.center + u @ self.linear.T

    def world_box(self) -> tuple[np.ndarray, np.ndarray]:
        ext = np.array(self.template.mask.shape) * self.template.spacing_mm
        corners = np.array([[z, y, x] for z in (0, ext[0]) for y in (0, ext[1])
                            for x in (0, ext[2])], float)
        w = self.to_world(corners)
        return w.min(0), w.max(0)


@dataclass
class Column:
    vertebrae: list[PlacedVertebra]  # superior to inferior (C1 … L5)
    line: np.ndarray  # (N, 3) centreline samples (xyz), inferior to superior
    params: dict[str, float]

    def by_name(self) -> dict[str, PlacedVertebra]:
        return {v.name: v for v in self.vertebrae}

    def center_at_z(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column centre (x, y) at world heights ``z`` (clamped beyond the ends)."""
        order = np.argsort(self.line[:, 2])
        lz = self.line[order, 2]
        return np.interp(z, lz, self.line[order, 0]), np.interp(z, lz, self.line[order, 1])

    def height_of(self, name: str) -> float:
        return float(self.by_name()[name].center[2])


def _bump(s: np.ndarray, start: float, end: float) -> np.ndarray:
    """Half-sine bump over [start, end], zero outside (one smooth curve of the column)."""
    u = np.clip((s - start) / max(end - start, 1e-6), 0.0, 1.0)
    return np.sin(np.pi * u)


def build_column(rng: np.random.Generator, scale: float, scoliosis_prob: float,
                 exclude_sources: tuple[str, ...] = ()) -> Column:
    """Place all 24 vertebrae C1-L5 along a random curve (only visible ones get rendered).

    ``exclude_sources``: template subjects not to use (a patient held out of a cross-validation
    fold whose vertebra shapes are among the templates). A level left without any template is an
    error rather than a silent fallback.
    """
    templates = {n: tuple(t for t in ts if t.source not in exclude_sources)
                 for n, ts in load_templates().items()}
    empty = [n for n in LEVEL_NAMES if not templates[n]]
    if empty:
        raise InputError(f"excluding template subject(s) {', '.join(exclude_sources)} leaves no "
                         f"shape for {', '.join(empty)}")
    chosen = {n: templates[n][rng.integers(len(templates[n]))] for n in LEVEL_NAMES}
    disc_factor = rng.uniform(0.6, 1.1)  # degeneration narrows the discs
    heights, discs = {}, {}
    for n in LEVEL_NAMES:
        lo, hi = _BODY_H[_group(n)]
        measured = float(chosen[n].body_size[0]) if n not in ("C1", "C2") else 0.5 * (lo + hi)
        heights[n] = float(np.clip(measured, 0.9 * lo, 1.15 * hi)) * scale * rng.uniform(0.97, 1.03)
        dlo, dhi = _DISC_H[_group(n)]
        discs[n] = rng.uniform(dlo, dhi) * scale * disc_factor
    # Arc length (mm, from the L5/S1 disc upwards) of each body centre.
    names_up = LEVEL_NAMES[::-1]  # L5 … C1
    s_pos = {}
    s = discs["L5"] * 0.0 + heights["L5"] / 2
    for i, n in enumerate(names_up):
        if i > 0:
            prev = names_up[i - 1]
            s += heights[prev] / 2 + discs[n] + heights[n] / 2
        s_pos[n] = s
    s_pos["C1"] = s_pos["C2"] + 14.0 * scale  # the atlas ring sits around the dens
    s_l = s_pos["L1"] + heights["L1"] / 2
    s_t = s_pos["T1"] + heights["T1"] / 2
    s_top = s_pos["C1"] + 20
    lordosis = rng.uniform(5, 25)
    kyphosis = rng.uniform(8, 40)
    cervical = rng.uniform(0, 15)
    s_grid = np.arange(-30.0, s_top + 30, 2.0)
    y = (-lordosis * _bump(s_grid, -10, s_l) + kyphosis * _bump(s_grid, s_l - 20, s_t + 10)
         - cervical * _bump(s_grid, s_t - 10, s_top))
    scol = 0.0
    x = rng.normal(0, 1.5) * np.sin(s_grid / 300)
    if rng.random() < scoliosis_prob:
        scol = rng.uniform(8, 35) * rng.choice([-1, 1])
        a = rng.uniform(-20, s_l * 0.5)
        b = rng.uniform(s_t - 120, s_t)
        x = x + scol * _bump(s_grid, a, b)
        if rng.random() < 0.4:  # compensatory second curve above
            x = x - 0.6 * scol * _bump(s_grid, b - 20, min(b + 200, s_top))
    line = np.stack([x, y, s_grid], axis=1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    arc += s_grid[0]
    tangent = np.gradient(line, axis=0)
    placed = []
    for n in LEVEL_NAMES:
        tpl = chosen[n]
        p = np.array([np.interp(s_pos[n], arc, line[:, i]) for i in range(3)])
        t = np.array([np.interp(s_pos[n], arc, tangent[:, i]) for i in range(3)])
        axial = np.deg2rad(np.clip(0.5 * p[0], -20, 20) + rng.normal(0, 2.5))
        frame = frame_from_axis(t) @ rotation(*np.deg2rad(rng.normal(0, 2.0, 2)), axial)
        jitter = scale * rng.uniform(0.97, 1.03, 3)
        shear = np.eye(3) + rng.normal(0, 0.03, (3, 3)) * (1 - np.eye(3))
        linear = frame @ np.diag(jitter) @ shear
        bs = tpl.body_size * scale
        placed.append(PlacedVertebra(n, tpl, p, frame, linear, heights[n],
                                     float(max(bs[1], 12 * scale)),
                                     float(max(bs[2], 15 * scale))))
    params = {"lordosis_mm": round(float(lordosis), 1), "kyphosis_mm": round(float(kyphosis), 1),
              "cervical_lordosis_mm": round(float(cervical), 1),
              "scoliosis_mm": round(float(scol), 1), "disc_factor": round(float(disc_factor), 3)}
    return Column(placed, line, params)


@functools.lru_cache(maxsize=64)
def _fields(name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(occupancy, trabecular fraction) of a template, float32 on its own grid; cached.

    The trabecular fraction is 0 in the outer ~0.5 mm (cortical shell, endplates: 0.3–1 mm in
    real vertebrae) and low in thin structures (laminae, processes: local half-thickness < ~2 mm)
    and rises to 1 in the cancellous core. Measured on real CT, most spine voxels are cancellous
    (ts_abdomen: 84% below 300 HU, median 164 HU); a thicker shell made the phantom spine mostly
    bright and taught networks "bright rim = spine", leaving vertebral bodies hollow.
    """
    tpl = next(t for t in load_templates()[name] if t.source == source)
    mask = tpl.mask
    sp = tpl.spacing_mm
    edt = ndimage.distance_transform_edt(mask) * sp
    thick = ndimage.maximum_filter(edt, size=7)
    tau = np.clip(edt - 0.5, 0.0, 1.0) * np.clip((thick - 1.5) / 2.5, 0.0, 1.0)
    return mask.astype(np.float32), tau.astype(np.float32)


def render_vertebra(grid: Grid, hu: np.ndarray, truth: np.ndarray, v: PlacedVertebra,
                    cortical_hu: float, trabecular_hu: float, rng: np.random.Generator) -> int:
    """Composite one vertebra onto ``hu`` (partial-volume mix) and rasterise it into ``truth``.

    Returns the number of truth voxels it contributed.
    """
    lo, hi = v.world_box()
    box = grid.box(lo, hi)
    if box is None:
        return 0
    occ, tau = _fields(v.name, v.template.source)
    sp = np.asarray(grid.spacing)
    start = np.array([box[2].start, box[1].start, box[0].start], float)  # xyz index
    flip = np.eye(3)[::-1]
    linv = np.linalg.inv(v.linear)
    tsp = v.template.spacing_mm
    c = v.template.body_center[::-1]
    matrix = flip @ linv @ np.diag(sp) @ flip / tsp
    offset = flip @ (c + linv @ (np.asarray(grid.origin) + sp * start - v.center)) / tsp
    out_shape = tuple(s.stop - s.start for s in box)
    frac = ndimage.affine_transform(occ, matrix, offset, out_shape, order=1, cval=0.0)
    sel = frac > 0.02
    if not sel.any():
        return 0
    t = ndimage.affine_transform(tau, matrix, offset, out_shape, order=1, cval=0.0)[sel]
    f = frac[sel]
    texture = rng.normal(0.0, 0.25 * trabecular_hu + 10.0, f.shape).astype(np.float32)
    bone = cortical_hu * (1 - t) + (trabecular_hu + texture) * t
    region = hu[box]
    region[sel] = region[sel] * (1 - f) + bone * f
    inside = frac >= 0.5
    truth[box] |= inside
    return int(inside.sum())


def render_discs_and_canal(grid: Grid, hu: np.ndarray, column: Column,
                           disc_hu: float, csf_hu: float, cord_hu: float) -> None:
    """Intervertebral discs between adjacent bodies and the spinal canal (CSF, cord above L2)."""
    vs = column.vertebrae
    for upper, lower in itertools.pairwise(vs[1:]):  # skip C1 (no disc between C1 and C2)
        top = lower.center + lower.frame[:, 2] * lower.height / 2
        bottom = upper.center - upper.frame[:, 2] * upper.height / 2
        axis = bottom - top
        gap = float(np.linalg.norm(axis))
        if gap < 1e-3:
            continue
        frame = frame_from_axis(axis)
        rx = 0.47 * (upper.width + lower.width) / 2
        ry = 0.47 * (upper.depth + lower.depth) / 2
        fill_cylinder(grid, hu, (top + bottom) / 2, frame, rx, ry, gap / 2 + 2.0, disc_hu)
    for upper, lower in itertools.pairwise(vs):
        p0 = lower.center + lower.frame[:, 1] * (lower.depth / 2 + 9.0)
        p1 = upper.center + upper.frame[:, 1] * (upper.depth / 2 + 9.0)
        axis = p1 - p0
        frame = frame_from_axis(axis)
        half = float(np.linalg.norm(axis)) / 2 + 1.0
        mid = (p0 + p1) / 2
        fill_cylinder(grid, hu, mid, frame, 10.0, 8.0, half, csf_hu)
        if LEVEL_NAMES.index(lower.name) <= LEVEL_NAMES.index("L1"):
            fill_cylinder(grid, hu, mid, frame, 5.0, 4.0, half, cord_hu)
