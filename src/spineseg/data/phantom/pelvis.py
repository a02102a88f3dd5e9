"""The pelvis of a phantom: sacrum, iliac wings, hip joints — bone that is *not* spine.

Spine/hip-bone confusion is the seed paper's open failure, so these bones must look like the
vertebrae do in CT (bright cortical outline around textured trabecular marrow) while staying out
of the truth. Shapes are analytic (ellipse sections along the sacral axis, circular-arc plates
for the ilia) and rasterised only inside their bounding boxes, which keeps them cheap.

Geometry (LPS mm, after standard pelvic anatomy): the S1 body is about as large as L5's and
meets it across a wedge-shaped L5/S1 disc; the sacrum runs down and back (sacral kyphosis) with
wide alae at S1-S2 that articulate with the ilia (sacroiliac joints); the iliac wings flare
anterolaterally from there to the anterior superior iliac spine, thick (10-15 mm) at the joint
and the crest, thinner (5-7 mm) in the iliac fossa, and thicken again into the acetabulum that
holds the femoral head about 110 mm below the crest.
"""

from __future__ import annotations

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

CORTEX_MM = 1.8  # cortical shell of the pelvic bones (thinner than 1 mm voxels would show)


def _texture(rng: np.random.Generator, n: int, marrow: float) -> np.ndarray:
    """Trabecular texture of the same strength as the vertebrae's (see render_vertebra)."""
    return marrow + rng.normal(0.0, 0.25 * marrow + 10.0, n).astype(np.float32)


def _paint(hu: np.ndarray, box: tuple[slice, ...] | slice, outer: np.ndarray, inner: np.ndarray,
           cort: float, marrow: float, rng: np.random.Generator) -> None:
    """Cortex on ``outer`` then textured marrow on ``inner`` (both boolean, shaped like the box)."""
    reg = hu[box]
    reg[outer] = cort
    core = inner & outer
    reg[core] = _texture(rng, int(core.sum()), marrow)


def _ellipse(lat: np.ndarray, ap: np.ndarray, a: np.ndarray, b: np.ndarray, shrink: float,
             power: float = 2.0) -> np.ndarray:
    a = np.maximum(a - shrink, 0.5)
    b = np.maximum(b - shrink, 0.5)
    return np.abs(lat / a) ** power + (ap / b) ** 2 < 1.0


def _sacrum(grid: Grid, hu: np.ndarray, mask: np.ndarray, column: Column, cort: float,
            marrow: float, disc_hu: float, rng: np.random.Generator) -> dict[str, float]:
    """Sacrum S1-S5 (+ coccyx tip) below a wedge L5/S1 disc; returns landmarks for the ilia."""
    l5 = column.by_name()["L5"]
    l5z, post = l5.frame[:, 2], l5.frame[:, 1]
    gap = rng.uniform(8.0, 12.0) * l5.height / 27.0
    l5_bottom = l5.center - l5z * l5.height / 2
    top = l5_bottom - l5z * gap
    fill_cylinder(grid, hu, (l5_bottom + top) / 2, l5.frame, 0.47 * l5.width, 0.47 * l5.depth,
                  gap / 2 + 2.0, disc_hu)
    # Sacral axis: L5's axis tilted further back (lumbosacral angle), bowing posteriorly.
    tilt = np.deg2rad(rng.uniform(12, 24))
    axis = -l5z * np.cos(tilt) + post * np.sin(tilt)
    ey = post * np.cos(tilt) + l5z * np.sin(tilt)  # posterior in the sacrum's own section
    ex = np.cross(ey, axis)
    ex = ex if ex[0] > 0 else -ex
    length = rng.uniform(100, 120)
    bow = rng.uniform(8, 16)
    half_w = 0.5 * l5.width * rng.uniform(0.95, 1.05)
    half_d = 0.5 * l5.depth * rng.uniform(0.9, 1.0)
    ala = rng.uniform(48, 58)  # half span of the alae (to the sacroiliac joints)
    ext = np.array([ala + 5, 60, 60])
    ends = np.stack([top, top + axis * length + ey * 30])
    box = grid.box(ends.min(0) - ext, ends.max(0) + ext)
    if box is not None:
        x, y, z = grid.coords(box)
        d = (x - top[0], y - top[1], z - top[2])
        along = d[0] * axis[0] + d[1] * axis[1] + d[2] * axis[2]
        u = np.clip(along / length, 0.0, 1.0)
        lat = d[0] * ex[0] + d[1] * ex[1] + d[2] * ex[2]
        ap = d[0] * ey[0] + d[1] * ey[1] + d[2] * ey[2] - bow * np.sin(np.pi * u)
        inside = (along >= 0) & (along <= length)
        bw = half_w * (1 - 0.6 * u)
        bd = half_d * (1 - 0.55 * u)
        aw = bw + (ala - bw) * np.clip(1 - (u / 0.6) ** 2, 0, 1)
        ad = 15.0 * (1 - 0.5 * u)
        ap_post = ap - (bd + 7.0)  # centre of the canal and dorsal wall
        shapes = ((lat, ap, bw, bd, 2.0), (lat, ap - 5.0, aw, ad, 4.0),
                  (lat, ap_post, 19.0 * (1 - 0.5 * u), 10.0 * (1 - 0.4 * u), 2.0),
                  (lat, ap_post - 9.0, np.full_like(u, 4.0), np.full_like(u, 7.0), 2.0))
        outer = np.zeros(np.broadcast_shapes(u.shape, lat.shape), bool)
        inner = outer.copy()
        for la, a_p, sa, sb, pw in shapes:
            outer |= _ellipse(la, a_p, sa, sb, 0.0, pw)
            inner |= _ellipse(la, a_p, sa, sb, CORTEX_MM, pw)
        outer &= inside
        canal = inside & ((lat / (10.0 * (1 - 0.5 * u))) ** 2 + (ap_post / (5.5 * (1 - 0.4 * u)))
                          ** 2 < 1) & (u < 0.85)
        # Four pairs of sacral foramina: nerve-root tunnels through the bone (soft tissue).
        foram = np.zeros_like(outer)
        for k in range(4):
            uk = 0.16 + 0.18 * k
            rk = 5.0 * (1 - 0.35 * uk)
            lk = half_w * (1 - 0.6 * uk) + 5.0
            foram |= ((np.abs(lat) - lk) ** 2 + (along - uk * length) ** 2 < rk * rk)
        cut = canal | foram
        _paint(hu, box, outer & ~cut, inner, cort, marrow, rng)
        reg = hu[box]
        reg[outer & canal] = 10.0
        reg[outer & foram & ~canal] = 25.0
        mask[box] |= outer & ~cut
    # Coccyx: a short curved tail anterior-inferior of S5.
    s5 = top + axis * length + ey * bow * 0.2
    tail = resample_polyline(np.stack([s5, s5 + axis * 15 - ey * 8, s5 + axis * 28 - ey * 20]),
                             1.5)
    idx = splat_ellipsoids(grid, tail, np.array([6.0, 6.0, 6.0]))
    hu.flat[idx] = cort * 0.8
    mask.flat[idx] = True
    return {"top_z": float(top[2]), "ala": float(ala), "x": float(top[0]),
            "y": float(top[1] + 0.5 * half_d)}


def _ilia(grid: Grid, hu: np.ndarray, mask: np.ndarray, sac: dict[str, float], crest: float,
          height: float, cort: float, marrow: float, rng: np.random.Generator) -> None:
    """Iliac wings: per slice a circular-arc plate from the SI joint to the anterior spine.

    Each slice's plate is the arc through a posterior point (just lateral to the sacral ala) and
    an anterior point, bulging posterolaterally (the iliac fossa faces anteromedially). Both
    ends move with height: below the sacroiliac joint the greater sciatic notch opens and the
    ilium narrows and thickens towards the acetabulum.
    """
    zsel = np.nonzero((grid.z <= crest + 2) & (grid.z >= crest - height))[0]
    if not zsel.size:
        return
    zs = slice(int(zsel[0]), int(zsel[-1]) + 1)
    zz = grid.z[zs][:, None, None]
    h = np.clip((crest - zz) / height, 0.0, 1.0)  # 0 at the crest, 1 at the acetabulum roof
    reach = rng.uniform(65, 85)  # lateral flare of the anterior superior iliac spine
    front = rng.uniform(45, 65)
    bulge = rng.uniform(0.12, 0.2)
    back = rng.uniform(28, 40)
    for side in (1, -1):
        # Only the in-plane box that can hold this wing is evaluated (speed).
        lat_lo, lat_hi = 0.9 * sac["ala"] - 15, sac["ala"] + reach + 25
        xs = sorted((sac["x"] + side * lat_lo, sac["x"] + side * lat_hi))
        box = grid.box(np.array([xs[0], sac["y"] - front - 30, grid.z[0]]),
                       np.array([xs[1], sac["y"] + back + 25, grid.z[-1]]))
        if box is None:
            continue
        box = (zs, box[1], box[2])
        x = grid.x[box[2]][None, None, :]
        y = grid.y[box[1]][None, :, None]
        px = 0.95 * sac["ala"] + 14 * h
        py = sac["y"] + back - 50 * h
        qx = sac["ala"] + 4 + reach * (1 - 0.55 * h)
        qy = sac["y"] - front * (1 - 0.55 * h)
        mx, my = (px + qx) / 2, (py + qy) / 2
        cx_, cy_ = qx - px, qy - py
        chord = np.hypot(cx_, cy_)
        radius = chord * (0.5 / np.sin(2 * np.arctan(2 * bulge)) + 0.05)
        sag = radius - np.sqrt(np.maximum(radius**2 - (chord / 2) ** 2, 0))
        # Unit normal of the chord pointing anteromedially (to the arc centre).
        nx, ny = cy_ / chord, -cx_ / chord
        flip = nx > 0  # the centre must lie medial (smaller lateral offset)
        nx, ny = np.where(flip, -nx, nx), np.where(flip, -ny, ny)
        dist = radius - sag
        ccx, ccy = mx + nx * dist, my + ny * dist
        lx = side * (x - sac["x"])  # lateral offset, positive outwards on this side
        dx, dy = lx - ccx, y - ccy
        r = np.sqrt(dx * dx + dy * dy)
        ang = np.arctan2(dy, dx)
        a_p = np.arctan2(py - ccy, px - ccx)
        a_q = np.arctan2(qy - ccy, qx - ccx)
        t = np.clip((ang - a_q) / (a_p - a_q), -1, 2)  # 0 anterior end, 1 posterior end
        crest_z = crest - 14 * (2 * t - 1) ** 2
        thick = (6.5 + 9.0 * t**3 + 4.0 * (1 - t) ** 6 + 14.0 * h**2
                 + 6.0 * np.exp(-np.maximum(crest_z - zz, 0) / 6.0))
        on = (t >= 0) & (t <= 1) & (zz <= crest_z)
        dr = np.abs(r - radius)
        outer = on & (dr < thick / 2)
        inner = on & (dr < thick / 2 - CORTEX_MM) & (zz <= crest_z - CORTEX_MM)
        _paint(hu, box, outer, inner, cort, marrow, rng)
        mask[box] |= outer


def _hips(grid: Grid, hu: np.ndarray, mask: np.ndarray, sac: dict[str, float], roof: float,
          cort: float, marrow: float, rng: np.random.Generator) -> float:
    """Acetabula, femoral heads, necks and shafts, pubic and ischial rami; returns head z."""
    rr = rng.uniform(21, 25)
    hz = roof - rr * 0.6
    spread = rng.uniform(80, 95)
    hy = sac["y"] - rng.uniform(30, 45)
    for side in (1, -1):
        hc = np.array([sac["x"] + side * spread, hy, hz])
        # Acetabular cup: a thick bony shell above and medial to the head, whose lower lateral
        # part sticks out of it; a 2 mm joint space (cartilage) separates the two.
        cup = hc + np.array([-side * 5.0, 0.0, 7.0])
        fill_ellipsoid(grid, hu, cup, np.full(3, rr + 8.0), cort, out_mask=mask)
        fill_ellipsoid(grid, hu, cup, np.full(3, rr + 6.0), marrow)
        joint = np.zeros(grid.shape, bool)
        fill_ellipsoid(grid, hu, hc, np.full(3, rr + 2.0), 40.0, out_mask=joint)
        mask &= ~joint
        fill_ellipsoid(grid, hu, hc, np.full(3, rr), cort, out_mask=mask)
        fill_ellipsoid(grid, hu, hc, np.full(3, rr - CORTEX_MM), marrow)
        troch = hc + np.array([side * 45.0, 8.0, -35.0])
        neck = troch - hc
        nlen = float(np.linalg.norm(neck))
        fr = frame_from_axis(neck)
        fill_cylinder(grid, hu, hc + neck / 2, fr, 15.0, 15.0, nlen / 2, cort, out_mask=mask)
        fill_cylinder(grid, hu, hc + neck / 2, fr, 13.0, 13.0, nlen / 2, marrow)
        fill_ellipsoid(grid, hu, troch, np.array([20.0, 20.0, 22.0]), cort, out_mask=mask)
        fill_ellipsoid(grid, hu, troch, np.array([18.0, 18.0, 20.0]), marrow)
        shaft = troch + np.array([-side * 10.0, 0.0, -120.0])
        fr = frame_from_axis(shaft - troch)
        fill_cylinder(grid, hu, (troch + shaft) / 2, fr, 15.0, 15.0, 60.0, cort, out_mask=mask)
        fill_cylinder(grid, hu, (troch + shaft) / 2, fr, 10.0, 10.0, 60.0, marrow)
        # Pubic ramus to the symphysis, ischial ramus down and back to the tuberosity.
        sym = np.array([sac["x"] + side * 4.0, hy - rng.uniform(45, 60), hz - 20.0])
        isch = hc + np.array([-side * 30.0, 35.0, -45.0])
        for end, rad in ((sym, 8.0), (isch, 10.0)):
            path = resample_polyline(np.stack([hc + (end - hc) * 0.3, end]), 1.5)
            idx = splat_ellipsoids(grid, path, np.full(3, rad))
            core = splat_ellipsoids(grid, path, np.full(3, rad - CORTEX_MM))
            hu.flat[idx] = cort
            hu.flat[core] = marrow
            mask.flat[idx] = True
    return hz


def render_pelvis(grid: Grid, hu: np.ndarray, column: Column, trabecular: float, cortical: float,
                  disc_hu: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Sacrum (with the L5/S1 disc), iliac wings and hip joints; returns (bone mask, landmarks).

    Pelvic marrow follows the vertebral trabecular density but stays at least ~110 HU: even in
    osteoporotic patients the pelvis looks bone-like, and a bright pelvis beside a faint spine is
    exactly the case a segmenter must not call spine.
    """
    mask = np.zeros(grid.shape, dtype=bool)
    by_name = column.by_name()
    cort = cortical * rng.uniform(0.8, 1.0)
    marrow = float(np.clip(trabecular + rng.uniform(40, 110), 110, 320))
    sac = _sacrum(grid, hu, mask, column, cort, marrow, disc_hu, rng)
    l4, l5 = by_name["L4"], by_name["L5"]
    crest = 0.5 * (l4.center[2] + l5.center[2]) + rng.uniform(-12, 8)
    height = rng.uniform(95, 115)
    _ilia(grid, hu, mask, sac, crest, height, cort, marrow, rng)
    head_z = _hips(grid, hu, mask, sac, crest - height, cort, marrow, rng)
    return mask, {"iliac_crest_z": float(crest), "femoral_head_z": float(head_z),
                  "sacrum_top_z": sac["top_z"]}
