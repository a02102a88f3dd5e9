"""A box-shaped vertebral column of exactly known geometry, for the vertebrae tests.

Bodies are boxes with a 2 mm cortical shell around a trabecular core of known HU, separated by
discs (80 HU); each has pedicles, a lamina, a spinous process and articular processes that touch
the neighbours' (the joint contact the instance split must cut). Optional ribs (bars leaving
laterally) and a pelvis (sacrum below, iliac blocks flanking the lowest vertebra) are bone
outside the mask, as in a real CT. Arrays are canonical (z, y, x), LPS, +y posterior.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spineseg.io import Volume


@dataclass
class Column:
    ct: Volume
    mask: Volume
    truth: np.ndarray  # 1..n from the lowest up
    heights: list[tuple[float, float]]  # (anterior, posterior) body height, mm, lowest first
    trabecular_hu: float
    centres_z: list[float] = field(default_factory=list)


def make_column(heights: list[tuple[float, float]], spacing=(1.5, 1.5, 1.5), disc_mm=8.0,
                rib_levels: tuple[int, ...] = (), pelvis: bool = False,
                trabecular_hu: float = 180.0, tilt_deg: float = 0.0, margin_mm: float = 30.0,
                half_width_mm: float = 100.0) -> Column:
    """``heights`` lowest first; ``rib_levels`` are 0-based indices of rib-bearing vertebrae;
    ``tilt_deg`` tilts the whole column forward about the x axis (a curve the planes follow)."""
    sx, sy, sz = spacing
    below = 70.0 if pelvis else margin_mm
    total = sum(max(h) for h in heights) + disc_mm * (len(heights) - 1)
    z_extent = below + total + margin_mm
    nx, ny, nz = int(2 * half_width_mm / sx), int(110 / sy), int(z_extent / sz)
    z, y, x = np.meshgrid(np.arange(nz) * sz - below, np.arange(ny) * sy - 40.0,
                          np.arange(nx) * sx - half_width_mm, indexing="ij")
    if tilt_deg:
        a = np.deg2rad(tilt_deg)
        z, y = np.cos(a) * z + np.sin(a) * y, -np.sin(a) * z + np.cos(a) * y
    hu = np.full(z.shape, 40.0, dtype=np.float32)
    truth = np.zeros(z.shape, dtype=np.uint8)
    bottom, centres = 0.0, []
    for k, (h_ant, h_post) in enumerate(heights):
        # Height varies linearly from the anterior (y = -15) to the posterior (y = 15) wall.
        top = bottom + h_ant + (h_post - h_ant) * (y + 15.0) / 30.0
        body = (np.abs(x) <= 20) & (np.abs(y) <= 15) & (z >= bottom) & (z <= top)
        inner = (np.abs(x) <= 18) & (np.abs(y) <= 13) & (z >= bottom + 2) & (z <= top - 2)
        mid = bottom + max(h_ant, h_post) / 2
        ped = (np.abs(x) >= 8) & (np.abs(x) <= 14) & (y > 15) & (y <= 25) & (np.abs(z - mid) <= 5)
        lamina = (np.abs(x) <= 14) & (y > 25) & (y <= 30) & (np.abs(z - mid) <= 5)
        spinous = (np.abs(x) <= 3) & (y > 30) & (y <= 50) & (z >= mid - 9) & (z <= mid + 3)
        reach = max(h_ant, h_post) / 2 + disc_mm / 2
        facet = ((np.abs(x) >= 14) & (np.abs(x) <= 18) & (y >= 22) & (y <= 30)
                 & (np.abs(z - mid) <= reach))
        bone = body | ped | lamina | spinous | facet
        truth[bone & (truth == 0)] = k + 1
        hu[bone] = 700.0
        hu[inner] = trabecular_hu
        if k in rib_levels:
            rib = ((np.abs(x) >= 21) & (np.abs(x) <= 95) & (y >= 3) & (y <= 13)
                   & (np.abs(z - mid) <= 4))
            hu[rib & (truth == 0)] = 600.0
        if k + 1 < len(heights):
            disc = ((np.abs(x) <= 20) & (np.abs(y) <= 15) & (z > top) & (z < top + disc_mm)
                    & (truth == 0))
            hu[disc] = 80.0
        centres.append(mid)
        bottom += max(h_ant, h_post) + disc_mm
    if pelvis:
        h0 = max(heights[0])
        sacrum = (np.abs(x) <= 22) & (y >= -12) & (y <= 35) & (z <= -disc_mm) & (z >= -65)
        ilium = ((np.abs(x) >= 26) & (np.abs(x) <= 95) & (y >= 0) & (y <= 40)
                 & (z >= -60) & (z <= h0 * 0.7))
        hu[(sacrum | ilium) & (truth == 0)] = 450.0
    geometry = {"spacing": tuple(float(s) for s in spacing),
                "origin": (-half_width_mm, -40.0, -below)}
    ct = Volume(np.rint(hu).astype(np.int16), **geometry)
    return Column(ct, Volume((truth > 0).astype(np.uint8), **geometry), truth,
                  list(heights), trabecular_hu, centres)
