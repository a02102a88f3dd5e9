"""The output grid of a phantom and small vectorised rasterisers shared by its parts.

Everything is rendered directly on the (possibly anisotropic) output grid and only inside the
bounding box of each structure, which is what keeps a 256×256×100 case at about a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def frame_from_axis(axis: np.ndarray) -> np.ndarray:
    """Columns ``x, y, z`` (xyz) of an LPS-like frame with z along ``axis``, y posterior-ish."""
    z = np.asarray(axis, float) / np.linalg.norm(axis)
    y = np.array([0.0, 1.0, 0.0]) - z[1] * z
    n = np.linalg.norm(y)
    y = np.array([0.0, 0.0, -1.0]) if n < 1e-6 else y / n
    return np.stack([np.cross(y, z), y, z], axis=1)


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


@dataclass(frozen=True)
class Grid:
    """Axis-aligned LPS grid: voxel ``(k, j, i)`` sits at ``origin + (i, j, k) * spacing``."""

    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm
    origin: tuple[float, float, float]  # (x, y, z) mm

    @property
    def z(self) -> np.ndarray:
        return self.origin[2] + np.arange(self.shape[0]) * self.spacing[2]

    @property
    def y(self) -> np.ndarray:
        return self.origin[1] + np.arange(self.shape[1]) * self.spacing[1]

    @property
    def x(self) -> np.ndarray:
        return self.origin[0] + np.arange(self.shape[2]) * self.spacing[0]

    def box(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index box (z, y, x slices) covering the world box, clipped; None if outside."""
        o = np.asarray(self.origin)
        sp = np.asarray(self.spacing)
        lo = np.floor((np.asarray(lo_xyz) - o) / sp).astype(int)
        hi = np.ceil((np.asarray(hi_xyz) - o) / sp).astype(int) + 1
        n = np.array(self.shape[::-1])
        lo = np.clip(lo, 0, n)
        hi = np.clip(hi, 0, n)
        if (hi <= lo).any():
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates ``(x, y, z)`` of a box, shapes (1,1,X), (1,Y,1), (Z,1,1)."""
        return (self.x[box[2]][None, None, :], self.y[box[1]][None, :, None],
                self.z[box[0]][:, None, None])


def local_coords(grid: Grid, box: tuple[slice, slice, slice], center: np.ndarray,
                 frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates of the box voxels in a frame (columns = axes) centred at ``center``."""
    x, y, z = grid.coords(box)
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    return tuple(dx * frame[0, i] + dy * frame[1, i] + dz * frame[2, i] for i in range(3))


def ellipsoid_box(center: np.ndarray, frame: np.ndarray, half: np.ndarray) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """World bounding box of a box/ellipsoid with semi-axes ``half`` along the frame axes."""
    ext = np.abs(frame) @ np.asarray(half, float)
    return center - ext, center + ext


def fill_cylinder(grid: Grid, hu: np.ndarray, center: np.ndarray, frame: np.ndarray,
                  rx: float, ry: float, half_len: float, value: float,
                  out_mask: np.ndarray | None = None) -> None:
    """Paint an elliptic cylinder (axis = frame z) with ``value``; optionally mark ``out_mask``."""
    lo, hi = ellipsoid_box(center, frame, np.array([rx, ry, half_len]))
    box = grid.box(lo, hi)
    if box is None:
        return
    u, v, w = local_coords(grid, box, center, frame)
    inside = ((u / rx) ** 2 + (v / ry) ** 2 <= 1.0) & (np.abs(w) <= half_len)
    hu[box][inside] = value
    if out_mask is not None:
        out_mask[box] |= inside


def fill_ellipsoid(grid: Grid, hu: np.ndarray, center: np.ndarray, radii: np.ndarray,
                   value: float, frame: np.ndarray | None = None,
                   out_mask: np.ndarray | None = None) -> None:
    """Paint an ellipsoid with semi-axes ``radii`` (along the frame axes, default world axes)."""
    frame = np.eye(3) if frame is None else frame
    lo, hi = ellipsoid_box(center, frame, radii)
    box = grid.box(lo, hi)
    if box is None:
        return
    u, v, w = local_coords(grid, box, center, frame)
    inside = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2 <= 1.0
    hu[box][inside] = value
    if out_mask is not None:
        out_mask[box] |= inside


def splat_ellipsoids(grid: Grid, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Flat indices of all voxels within axis-aligned ellipsoids centred at ``points`` (N, xyz).

    Hand-written because tubes along curved paths (ribs) are a union of many small ellipsoids;
    stamping a precomputed offset stencil is far cheaper than a distance field over the chest.
    """
    sp = np.asarray(grid.spacing)
    r = np.ceil(np.asarray(radii) / sp).astype(int)
    ox, oy, oz = np.meshgrid(*(np.arange(-k, k + 1) for k in r), indexing="ij")
    keep = ((ox * sp[0] / radii[0]) ** 2 + (oy * sp[1] / radii[1]) ** 2
            + (oz * sp[2] / radii[2]) ** 2) <= 1.0
    offs = np.stack([ox[keep], oy[keep], oz[keep]], axis=1)
    centre = np.rint((np.asarray(points) - np.asarray(grid.origin)) / sp).astype(np.int64)
    n = np.array(grid.shape[::-1])
    near = ((centre >= -r) & (centre < n + r)).all(axis=1)
    idx = (centre[near, None, :] + offs[None, :, :]).reshape(-1, 3)
    ok = ((idx >= 0) & (idx < n)).all(axis=1)
    idx = idx[ok]
    return (idx[:, 2] * grid.shape[1] + idx[:, 1]) * grid.shape[2] + idx[:, 0]


def resample_polyline(points: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` mm along a polyline (N, 3)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1)
