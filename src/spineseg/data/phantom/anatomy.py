"""Everything around the column: body outline, fat/muscle, organs, lungs, ribs, pelvis, table.

All structures are placed relative to the column (landmark heights such as the diaphragm or the
iliac crest are tied to vertebral levels), so a crop at any height shows the right neighbours:
ribs at thoracic levels, kidneys at T12-L3, iliac wings and sacrum around L5. The confounders a
spine segmenter must learn to reject are bone that is not spine (ribs touching the vertebrae,
sacrum, iliac wings, sternum, femoral heads) and bright non-bone (contrast aorta, table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spineseg.data.phantom.column import Column
from spineseg.data.phantom.grid import (
    Grid,
    fill_cylinder,
    fill_ellipsoid,
    frame_from_axis,
    resample_polyline,
    splat_ellipsoids,
)


@dataclass
class Tissues:
    """Per-case HU values (sampled once per phantom)."""

    fat: float
    muscle: float
    viscera: float
    liver: float
    kidney: float
    blood: float  # aorta lumen: non-contrast to arterial phase
    venous: float
    lung: float
    cortical: float
    trabecular: float

    @classmethod
    def sample(cls, rng: np.random.Generator, trabecular: float, cortical: float) -> Tissues:
        contrast = rng.uniform(0, 1)
        return cls(
            fat=rng.uniform(-120, -80), muscle=rng.uniform(35, 60), viscera=rng.uniform(20, 45),
            liver=rng.uniform(50, 70) + 60 * contrast, kidney=rng.uniform(25, 35) + 150 * contrast,
            blood=40 + 360 * contrast ** 1.5, venous=40 + 140 * contrast, lung=rng.uniform(-900, -800),
            cortical=cortical, trabecular=trabecular,
        )


@dataclass
class Body:
    """Body cross-section per slice (arrays over the grid's z)."""

    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray  # left-right semi-axis
    b: np.ndarray  # anterior-posterior semi-axis
    fat: np.ndarray  # subcutaneous fat thickness
    wall: np.ndarray  # muscle wall thickness
    exponent: float


def body_profile(rng: np.random.Generator, column: Column, z: np.ndarray) -> Body:
    """Elliptical (super-elliptical) body outline that follows the anatomy along z."""
    zc = {n: column.height_of(n) for n in ("C4", "C7", "T1", "T4", "T10", "L3", "L5")}
    knots = [zc["L5"] - 150, zc["L5"] - 20, zc["L3"], zc["T10"], zc["T4"], zc["T1"] + 10,
             zc["C7"] + 25, zc["C4"]]
    width = rng.uniform(0.85, 1.2)
    depth = rng.uniform(0.85, 1.25)
    a = np.array([175, 170, 155, 160, 165, 150, 65, 60]) * width
    b = np.array([115, 115, 118, 112, 105, 95, 65, 60]) * depth
    post = np.array([80, 80, 75, 78, 75, 70, 55, 50]) * rng.uniform(0.85, 1.2)
    _, cy_col = column.center_at_z(z)
    av = np.interp(z, knots, a)
    bv = np.interp(z, knots, b)
    cy = cy_col + np.interp(z, knots, post) - bv
    cx = np.full_like(z, float(np.median(column.line[:, 0])) + rng.normal(0, 3))
    fat = np.interp(z, knots, np.array([30, 28, 25, 18, 12, 12, 8, 8]) * rng.uniform(0.25, 1.6))
    wall = np.interp(z, knots, [14, 12, 10, 12, 14, 16, 8, 8])
    return Body(cx, cy, av, bv, fat, wall, float(rng.uniform(2.0, 2.8)))


def _rho(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, a: np.ndarray,
         b: np.ndarray, p: float) -> np.ndarray:
    """Super-ellipse level ``|dx/a|^p + |dy/b|^p`` (< 1 inside; no root taken, for speed)."""
    if p == 2.0:
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    return np.abs((x - cx) / a) ** p + np.abs((y - cy) / b) ** p


def _body_at(body: Body, z: np.ndarray, zq: float) -> tuple[tuple[float, float], ...]:
    """((centre x, semi-axis a), (centre y, semi-axis b)) of the body outline at height ``zq``."""
    return ((float(np.interp(zq, z, body.cx)), float(np.interp(zq, z, body.a))),
            (float(np.interp(zq, z, body.cy)), float(np.interp(zq, z, body.b))))


def _zslice(z: np.ndarray, lo: float, hi: float) -> slice:
    """Index range of slices with ``lo < z < hi`` (possibly empty)."""
    idx = np.nonzero((z > lo) & (z < hi))[0]
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


def _near_column(grid: Grid, col_x: np.ndarray, col_y: np.ndarray, zs: slice, half_x: float,
                 y_lo: float, y_hi: float) -> tuple[tuple[slice, slice, slice], np.ndarray,
                                                    np.ndarray]:
    """Box around the column over slices ``zs``; returns (box, dx, dy) relative to the column."""
    n = max(zs.stop - zs.start, 0)
    cx, cy = col_x[zs], col_y[zs]
    box = None
    if n:
        box = grid.box(np.array([cx.min() - half_x, cy.min() + y_lo, grid.z[0]]),
                       np.array([cx.max() + half_x, cy.max() + y_hi, grid.z[-1]]))
    if box is None:  # empty box: arrays that broadcast to (n, 0, 0)
        return (zs, slice(0, 0), slice(0, 0)), np.zeros((n, 1, 0)), np.zeros((n, 0, 1))
    box = (zs, box[1], box[2])
    dx = grid.x[box[2]][None, None, :] - cx[:, None, None]
    dy = grid.y[box[1]][None, :, None] - cy[:, None, None]
    return box, dx, dy


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cell: tuple[float, ...]
                  ) -> np.ndarray:
    """Smooth random field: coarse normal noise, linearly interpolated to ``shape``.

    Hand-written as three small interpolation-matrix products (tensordot): ~20x faster than
    ``ndimage.zoom`` for this coarse-to-fine upsampling, which dominated the phantom's run time.
    """
    coarse_shape = [max(int(np.ceil(n / c)) + 2, 2) for n, c in zip(shape, cell, strict=True)]
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, (n, m) in enumerate(zip(shape, coarse_shape, strict=True)):
        pos = np.linspace(0.5, m - 1.5, n)
        w = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(m)[None, :])).astype(np.float32)
        field = np.moveaxis(np.tensordot(w, field, axes=([1], [axis])), 0, axis)
    return field


def render_soft_tissue(grid: Grid, rng: np.random.Generator, column: Column, body: Body,
                       tis: Tissues, zl: dict[str, float]) -> np.ndarray:
    """Air, fat, muscle wall, viscera, organs, lungs, heart. Returns the HU volume (float32)."""
    nz, ny, nx = grid.shape
    x = grid.x[None, None, :]
    y = grid.y[None, :, None]
    z = grid.z
    col_x, col_y = column.center_at_z(z)
    s3 = (nz, 1, 1)
    cx, cy, a, b = (v.reshape(s3) for v in (body.cx, body.cy, body.a, body.b))
    fat, wall = body.fat.reshape(s3), body.wall.reshape(s3)
    p = body.exponent
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[_rho(x, y, cx, cy, a, b, p) < 1.0] = tis.fat
    hu[_rho(x, y, cx, cy, a - fat, b - fat, p) < 1.0] = tis.muscle
    cavity = _rho(x, y, cx, cy, a - fat - wall, b - fat - wall, p) < 1.0
    hu[cavity] = tis.fat
    zdia = zl["diaphragm"]
    # Abdomen: visceral fat with bowel loops and gas pockets (smooth random fields).
    zs = _zslice(z, zl["floor"], zdia)
    if zs.stop > zs.start:
        shape = (zs.stop - zs.start, ny, nx)
        cells = (12 / grid.spacing[2], 14 / grid.spacing[1], 14 / grid.spacing[0])
        loops = _smooth_field(rng, shape, cells)
        gas = _smooth_field(rng, shape, cells)
        cav = cavity[zs]
        reg = hu[zs]
        reg[cav & (loops > -0.2)] = tis.viscera
        reg[cav] += 12.0 * gas[cav]  # gentle heterogeneity of bowel content and mesentery
        low = (z[zs] < zdia - 40)[:, None, None]
        reg[cav & low & (gas > 0.9) & (loops > 0.3)] = -1000.0
    # Paraspinal muscles (whole length) and psoas (T12 down into the pelvis).
    box, dx, dy = _near_column(grid, col_x, col_y, _zslice(z, zl["floor"], np.inf), 75, -40, 100)
    # Erector spinae + multifidus: rounded blocks filling the grooves beside the spinous
    # processes from the laminae back to the fascia, split by a thin midline fat plane.
    for side in (-1, 1):
        ps = (np.abs((dx - side * 27) / 24) ** 3 + np.abs((dy - 52) / 24) ** 3 < 1) & (
            side * dx > 2.5)
        hu[box][ps & (hu[box] > -500)] = tis.muscle
    zs = _zslice(z, zl["L5"] - 60, zl["T12"])
    box, dx, dy = _near_column(grid, col_x, col_y, zs, 75, -40, 40)
    grow = np.clip((zl["T12"] - z[zs]) / max(zl["T12"] - zl["L5"], 1.0), 0, 1)[:, None, None]
    r = 6 + 16 * grow
    for side in (-1, 1):
        psoas = ((dx - side * (28 + 0.9 * r)) / r) ** 2 + ((dy + 2) / (0.8 * r)) ** 2 < 1
        hu[box][psoas] = tis.muscle
    # Liver (patient right = -x), spleen (left), kidneys, bladder.
    liver_top = zdia + 10
    zs = _zslice(z, liver_top - 170, liver_top)
    if zs.stop > zs.start:
        f = (1 - ((liver_top - z[zs]) / 170) ** 1.5)[:, None, None]
        zsl = body.a[zs][:, None, None], body.b[zs][:, None, None]
        rl, rp = 0.5 * zsl[0] * f + 10, 0.55 * zsl[1] * (0.4 + 0.6 * f)
        lcx = (body.cx[zs][:, None, None] - 0.42 * zsl[0])
        lcy = body.cy[zs][:, None, None] - 0.05 * zsl[1]
        liver = (((x - lcx) / rl) ** 2 + ((y - lcy) / rp) ** 2 < 1) & cavity[zs]
        hu[zs][liver] = tis.liver
    bx, by = _body_at(body, z, zdia - 50)
    fill_ellipsoid(grid, hu, np.array([bx[0] + 0.55 * bx[1], by[0] + 0.25 * by[1], zdia - 50]),
                   np.array([28.0, 45.0, 55.0]), tis.viscera + 10)
    for side, dz in ((1, 0.0), (-1, -15.0)):
        kx, ky = column.center_at_z(np.array([zl["L1"] + dz]))
        kc = np.array([kx[0] + side * 62, ky[0] + 8, zl["L1"] + dz])
        fill_ellipsoid(grid, hu, kc, np.array([26.0, 24.0, 55.0]), tis.kidney,
                       frame=frame_from_axis(np.array([-0.25 * side, 0.15, 1.0])))
        fill_ellipsoid(grid, hu, kc + np.array([-side * 10, -3, 0]),
                       np.array([9.0, 8.0, 25.0]), 10.0)
    bx, by = _body_at(body, z, zl["L5"] - 110)
    fill_ellipsoid(grid, hu, np.array([bx[0], by[0] - 0.35 * by[1], zl["L5"] - 110]),
                   np.array([45.0, 35.0, 35.0]), rng.uniform(5, 15))
    # Lungs above the diaphragm (domes higher centrally, deep posterior recesses).
    zs = _zslice(z, zdia - 45, zl["T1"] + 40)
    if zs.stop > zs.start:
        zz = z[zs][:, None, None]
        ccx, ccy, aa, bb = cx[zs], cy[zs], a[zs] - fat[zs] - wall[zs] - 8, b[zs] - fat[zs] - wall[zs] - 8
        rin = _rho(x, y, ccx, ccy, aa, bb, 2.0)
        dome = zdia + 35 * (1 - np.minimum(rin, 1)) - 45 * (y - ccy > 0.3 * bb)
        kx, ky = col_x[zs][:, None, None], col_y[zs][:, None, None]
        # Mediastinum: an ellipse from the sternum back to the vertebral bodies, widening
        # towards the heart; the lungs wrap around it and around the spine into the posterior
        # recesses, whose medial edge follows the paraspinal muscles.
        low = np.clip((zdia + 90 - zz) / 90, 0, 1)
        mcx = kx + 18 * low
        mhw = 22 + 0.25 * aa + 30 * low
        medi = ((x - mcx) / mhw) ** 2 + ((y - (ky - 0.5 * (ky - ccy + bb))) /
                                         (0.5 * (ky - ccy + bb) + 5)) ** 2 < 1
        para = ((x - kx) / 38) ** 2 + ((y - ky - 20) / 48) ** 2 < 1
        lung = (rin < 1) & (zz > dome) & ~medi & ~para
        hu[zs][lung] = tis.lung + rng.normal(0, 15, int(lung.sum())).astype(np.float32)
        bx, by = _body_at(body, z, zdia + 45)
        hc = np.array([bx[0] + 25, by[0] - 0.3 * by[1], zdia + 45])
        fill_ellipsoid(grid, hu, hc, np.array([60.0, 45.0, 55.0]), 0.5 * (tis.blood + 40),
                       frame=frame_from_axis(np.array([0.4, -0.3, 1.0])))
    return hu


def render_vessels(grid: Grid, hu: np.ndarray, column: Column, tis: Tissues,
                   zl: dict[str, float], rng: np.random.Generator) -> None:
    """Aorta anterior-left of the column (bifurcating at L4 into the iliacs) and the IVC."""
    z = grid.z
    col_x, col_y = column.center_at_z(z)
    r = rng.uniform(9, 13)
    off_x = rng.uniform(12, 25)
    off_y = -15 - r - rng.uniform(1, 5)
    bif = zl["L4"]
    zs = _zslice(z, bif - 140, zl["T4"])
    box, dx, dy = _near_column(grid, col_x, col_y, zs, 110, -90, 0)
    zz = z[zs][:, None, None]
    aorta = ((dx - off_x) ** 2 + (dy - off_y) ** 2 < r * r) & (zz > bif)
    spread = np.clip(bif - zz, 0, 150) * 0.45
    for side in (-1, 1):
        aorta |= ((dx - off_x + 12 - side * spread) ** 2 + (dy - off_y) ** 2 < (0.7 * r) ** 2) & (
            zz <= bif)
    hu[box][aorta] = tis.blood
    zs = _zslice(z, zl["L5"], zl["diaphragm"] + 20)
    box, dx, dy = _near_column(grid, col_x, col_y, zs, 60, -60, 0)
    ivc = (dx + 22) ** 2 / 12**2 + (dy - off_y - 2) ** 2 / 9**2 < 1
    hu[box][ivc] = tis.venous


def render_ribs(grid: Grid, hu: np.ndarray, column: Column, body: Body, tis: Tissues,
                rng: np.random.Generator) -> np.ndarray:
    """Twelve rib pairs from the body/disc (head) past the transverse process (tubercle) around
    the chest wall, descending anteriorly; plus the sternum. Returns the bone mask painted."""
    mask = np.zeros(grid.shape, dtype=bool)
    marrow = np.zeros(grid.shape, dtype=bool)
    cart = np.zeros(grid.shape, dtype=bool)
    z = grid.z
    zmin, zmax = z[0] - 80, z[-1] + 120
    by_name = column.by_name()
    step = 0.6 * min(4.0, max(grid.spacing[2], 1.0))
    # Near the spine a rib is about 10 x 15 mm (anatomy.md): wider than tall in an axial cut.
    radii = np.array([5.0, 5.0, 7.5]) * rng.uniform(0.9, 1.1)
    for k in range(1, 13):
        v = by_name[f"T{k}"]
        if not zmin < v.center[2] < zmax:
            continue
        ex, ey, ez = v.frame[:, 0], v.frame[:, 1], v.frame[:, 2]
        zi = int(np.clip(np.searchsorted(z, v.center[2]), 0, len(z) - 1))
        shrink = {1: 0.5, 2: 0.68, 3: 0.8, 4: 0.9}.get(k, 1.0)
        a_in = (np.interp(v.center[2], z, body.a) - np.interp(v.center[2], z, body.fat) - 12)
        b_in = (np.interp(v.center[2], z, body.b) - np.interp(v.center[2], z, body.fat) - 12)
        a_in, b_in = max(a_in * shrink, 40.0), max(b_in * (0.6 + 0.4 * shrink), 35.0)
        bcx, bcy = body.cx[zi], body.cy[zi] + (1 - shrink) * 30
        drop = rng.uniform(25, 45) * (0.6 if k == 1 else 1.0)
        end = np.deg2rad(165 if k <= 7 else 150 - 15 * (k - 7) if k <= 10 else 95)
        for side in (1, -1):
            head = v.center + side * (v.width / 2 + 1.5) * ex + 0.2 * v.depth * ey + (
                v.height / 2 - 2) * ez
            tip = v.to_world(v.template.tp_left if side == 1 else v.template.tp_right)
            tub = tip - 4.0 * ey + side * 2.0 * ex
            ang = tub + side * 30.0 * ex + 8.0 * ey
            th0 = np.arctan2(side * (ang[0] - bcx) / a_in, (ang[1] - bcy) / b_in)
            th = np.linspace(min(max(abs(th0), 0.15), end - 0.3), end, 40)
            frac = (th - th[0]) / (th[-1] - th[0])
            wall = np.stack([bcx + side * a_in * np.sin(th), bcy + b_in * np.cos(th),
                             ang[2] - drop * frac ** 1.3], axis=1)
            path = resample_polyline(np.vstack([head, tub, ang, wall]), step)
            mask.flat[splat_ellipsoids(grid, path, radii)] = True
            marrow.flat[splat_ellipsoids(grid, path, radii - 1.6)] = True
            if k <= 7:  # costal cartilage to the sternum
                stern = np.array([bcx + side * 12, bcy - b_in + 4, wall[-1, 2] - 5])
                cpath = resample_polyline(np.vstack([wall[-1], stern]), step)
                cart.flat[splat_ellipsoids(grid, cpath, radii * 0.8)] = True
    hu[cart] = rng.uniform(90, 200)
    hu[mask] = max(720.0, tis.cortical * rng.uniform(0.75, 0.95))
    hu[marrow] = float(np.clip(tis.trabecular + rng.uniform(30, 100), 110, 320))
    # Sternum: a flat bone in front, from T2 to T9 level.
    t2, t9 = by_name["T2"].center[2], by_name["T9"].center[2]
    zc = 0.5 * (t2 + t9) - 30
    zi = int(np.clip(np.searchsorted(z, zc), 0, len(z) - 1))
    sc = np.array([body.cx[zi], body.cy[zi] - body.b[zi] + body.fat[zi] + 10, zc])
    frame = frame_from_axis(np.array([0.0, -0.35, 1.0]))
    fill_cylinder(grid, hu, sc, frame, 16.0, 6.0, 0.5 * (t2 - t9) + 10, tis.cortical * 0.8,
                  out_mask=mask)
    fill_cylinder(grid, hu, sc, frame, 14.0, 4.0, 0.5 * (t2 - t9) + 8, tis.trabecular + 40)
    return mask


def render_scapulae(grid: Grid, hu: np.ndarray, column: Column, body: Body, tis: Tissues,
                    rng: np.random.Generator) -> np.ndarray:
    """Shoulder blades: thin triangular plates on the posterolateral chest wall, T1-T8.

    Each slice's scapula is an arc of a shrunken body outline (just inside the subcutaneous
    fat), spanning the elliptic angle between its medial and lateral borders; the triangle
    narrows to the inferior angle near T7-T8. The lateral border is thickest. Returns the mask.
    """
    mask = np.zeros(grid.shape, dtype=bool)
    top = column.height_of("T1") + rng.uniform(5, 20)
    bottom = column.height_of("T7") - rng.uniform(0, 25)
    zs = _zslice(grid.z, bottom, top)
    if zs.stop <= zs.start:
        return mask
    zz = grid.z[zs][:, None, None]
    h = np.clip((top - zz) / (top - bottom), 0, 1)  # 0 at the spine of the scapula, 1 inferior
    x = grid.x[None, None, :]
    y = grid.y[None, :, None]
    s3 = (zs.stop - zs.start, 1, 1)
    cx, cy = body.cx[zs].reshape(s3), body.cy[zs].reshape(s3)
    inset = body.fat[zs].reshape(s3) + rng.uniform(2.5, 4.5)  # outside the ribs, in muscle
    a_in, b_in = body.a[zs].reshape(s3) - inset, body.b[zs].reshape(s3) - inset
    med = np.deg2rad(rng.uniform(18, 26)) + np.deg2rad(14) * h
    lat = np.deg2rad(rng.uniform(62, 72)) - np.deg2rad(34) * h
    cort = max(700.0, tis.cortical * rng.uniform(0.7, 0.9))
    marrow = float(np.clip(tis.trabecular + rng.uniform(30, 100), 110, 320))
    for side in (1, -1):
        u, v = side * (x - cx) / a_in, (y - cy) / b_in
        theta = np.arctan2(u, v)  # 0 at the posterior midline, increasing laterally
        radial = (np.sqrt(u * u + v * v) - 1) * b_in  # ~ mm outward from the plate's surface
        w = np.clip((theta - med) / np.maximum(lat - med, 1e-3), 0, 1)
        thick = 3.5 + 7.0 * w**4 + 4.0 * np.exp(-(top - zz) / 8)
        on = (theta >= med) & (theta <= lat) & (v > 0)
        plate = on & (np.abs(radial) < thick / 2)
        core = on & (np.abs(radial) < thick / 2 - 1.5)
        reg = hu[zs]
        reg[plate] = cort
        reg[core] = marrow
        mask[zs] |= plate
    return mask


def render_table(grid: Grid, hu: np.ndarray, body: Body, rng: np.random.Generator) -> None:
    """The CT table: a curved carbon-fibre band (dense skins, foam core) under the body."""
    x = grid.x[None, :]
    y = grid.y[:, None]
    cx = float(np.median(body.cx))
    back = float(np.max(body.cy + body.b)) + rng.uniform(1, 8)
    curv = rng.uniform(0.0005, 0.002)
    thick = rng.uniform(20, 45)
    top = back - curv * (x - cx) ** 2  # the surface rises (anteriorly) towards the edges
    half = rng.uniform(200, 260)
    within = np.abs(x - cx) < half
    skin = within & (((y >= top) & (y < top + 2.5)) | ((y >= top + thick - 2.5) & (y < top + thick)))
    foam = within & (y >= top + 2.5) & (y < top + thick - 2.5)
    sl = hu.reshape(grid.shape)
    sl[:, foam] = rng.uniform(-950, -850)
    sl[:, skin] = rng.uniform(150, 500)


def streaks(grid: Grid, hu: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]],
            amplitude: float, width: float) -> None:
    """Beam-hardening: dark bands along the line joining two dense bones, in each slice.

    ``pairs`` hold per-slice endpoints (nz, 2) in xy mm (NaN where absent). A Gaussian profile
    across the line, fading beyond the segment ends, is subtracted.
    """
    x = grid.x[None, :]
    y = grid.y[:, None]
    for p0, p1 in pairs:
        for k in np.nonzero(np.isfinite(p0[:, 0]) & np.isfinite(p1[:, 0]))[0]:
            a, b = p0[k], p1[k]
            d = b - a
            n2 = float(d @ d)
            if n2 < 1:
                continue
            t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / n2, -0.15, 1.15)
            dist2 = (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2
            hu[k] -= amplitude * np.exp(-dist2 / (2 * width**2)).astype(np.float32)
