"""A one-glance quality check: three CT planes with the mask outlined, and the mesh rendered."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import trimesh
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from spineseg.io.atomic import atomic_path
from spineseg.io.volume import Volume

_WINDOW = (-400.0, 1200.0)  # bone-and-soft-tissue window: spine, discs and muscle all visible


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    if mask.any():
        zz, yy, xx = np.nonzero(mask)
        return int(np.median(zz)), int(np.median(yy)), int(np.median(xx))
    return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]


def _plane(ax: plt.Axes, img: np.ndarray, msk: np.ndarray, aspect: float, title: str) -> None:
    ax.imshow(img, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], aspect=aspect,
              interpolation="nearest")
    # contour needs a 2x2 grid at least: a single-slice scan's depth planes are one row high
    if min(msk.shape) >= 2 and msk.any() and msk.min() != msk.max():
        ax.contour(msk.astype(float), levels=[0.5], colors="#ff4040", linewidths=0.8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _render_mesh(ax: plt.Axes, mesh: trimesh.Trimesh, max_faces: int = 15000) -> None:
    m = mesh
    if len(m.faces) > max_faces:
        m = m.simplify_quadric_decimation(face_count=max_faces)
    light = np.array([0.3, -0.8, 0.5])  # from anterior-left-above in LPS
    shade = np.clip(m.face_normals @ (light / np.linalg.norm(light)), 0.0, 1.0) * 0.75 + 0.25
    colours = np.stack([shade * 0.93, shade * 0.86, shade * 0.72, np.ones_like(shade)], axis=1)
    v = m.vertices
    ax.add_collection3d(Poly3DCollection(v[m.faces], facecolors=colours, linewidths=0))
    lo, hi = v.min(0), v.max(0)
    half = (hi - lo).max() / 2
    mid = (hi + lo) / 2
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.view_init(elev=10, azim=-60)
    ax.set_axis_off()
    ax.set_title("3D model", fontsize=9)


def save_preview(ct: Volume, mask: Volume, mesh: trimesh.Trimesh | None,
                 path: str | os.PathLike[str], *, overwrite: bool = False,
                 title: str = "") -> Path:
    """Write a PNG of axial/coronal/sagittal planes through the mask centre plus the mesh.

    ``ct`` and ``mask`` must be on the same canonical (LPS) grid so that array axes are
    (inferior→superior, anterior→posterior, right→left) and the views come out radiological.
    A single-slice scan has no coronal or sagittal view worth showing: only its axial plane
    (and the mesh, if any) are drawn.
    """
    hu, msk = np.asarray(ct.array), np.asarray(mask.array) > 0
    cz, cy, cx = _centre(msk)
    sx, sy, sz = ct.spacing
    depth = hu.shape[0] > 1
    n = 1 + 2 * depth + (mesh is not None)
    fig = plt.figure(figsize=(3.2 * n, 3.6), dpi=110)
    _plane(fig.add_subplot(1, n, 1), hu[cz], msk[cz], sy / sx, f"axial z={cz}")
    if depth:
        _plane(fig.add_subplot(1, n, 2), hu[::-1, cy, :], msk[::-1, cy, :], sz / sx,
               f"coronal y={cy}")
        _plane(fig.add_subplot(1, n, 3), hu[::-1, :, cx], msk[::-1, :, cx], sz / sy,
               f"sagittal x={cx}")
    if mesh is not None:
        _render_mesh(fig.add_subplot(1, n, n, projection="3d"), mesh)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    target = Path(path)
    try:
        with atomic_path(target, overwrite) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return target
