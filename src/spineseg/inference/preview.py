"""A one-glance quality check: three CT planes with the mask outlined, and the mesh rendered.

Every plane is drawn at its physical aspect (pixel spacing taken into account), all at one
height, each as wide as its aspect needs. A plane less tall than :data:`MIN_HEIGHT_SHARE` of its
width — the coronal and sagittal planes of a 20-slice scan — would be an unreadable sliver, so it
is stretched vertically to that share and its title says by how much.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
MIN_HEIGHT_SHARE = 0.4  # no plane is drawn flatter than this height : width
_ROW_IN = 3.2  # height of the row of planes, inches (less where the row would be too wide)
_MAX_WIDTH_IN, _MIN_WIDTH_IN = 18.0, 4.5
_MARGIN_IN, _GAP_IN, _TITLE_IN = 0.15, 0.2, 0.35


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    if mask.any():
        zz, yy, xx = np.nonzero(mask)
        return int(np.median(zz)), int(np.median(yy)), int(np.median(xx))
    return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Plane:
    """One 2-D view: its image and mask, pixel height/width in mm, and the vertical stretch that
    keeps it at least :data:`MIN_HEIGHT_SHARE` tall."""

    img: np.ndarray
    msk: np.ndarray
    pixel_h_mm: float
    pixel_w_mm: float
    title: str
    vertical: str  # the array axis that runs down the image, named in the stretch note

    @property
    def stretch(self) -> float:
        rows, cols = self.img.shape
        share = rows * self.pixel_h_mm / (cols * self.pixel_w_mm)
        return max(1.0, MIN_HEIGHT_SHARE / share)

    @property
    def width_per_height(self) -> float:
        rows, cols = self.img.shape
        return cols * self.pixel_w_mm / (rows * self.pixel_h_mm * self.stretch)


def _draw_plane(ax: plt.Axes, plane: _Plane) -> None:
    aspect = plane.pixel_h_mm / plane.pixel_w_mm * plane.stretch
    ax.imshow(plane.img, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], aspect=aspect,
              interpolation="nearest")
    msk = plane.msk
    # contour needs a 2x2 grid at least: a single-slice scan's depth planes are one row high
    if min(msk.shape) >= 2 and msk.any() and msk.min() != msk.max():
        ax.contour(msk.astype(float), levels=[0.5], colors="#ff4040", linewidths=0.8)
    title = plane.title
    if plane.stretch > 1.0:
        title += f" ({plane.vertical} stretched ×{plane.stretch:.1f})"
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
    sx, sy, sz = (float(v) for v in ct.spacing)
    planes = [_Plane(hu[cz], msk[cz], sy, sx, f"axial z={cz}", "y")]
    if hu.shape[0] > 1:
        planes += [_Plane(hu[::-1, cy, :], msk[::-1, cy, :], sz, sx, f"coronal y={cy}", "z"),
                   _Plane(hu[::-1, :, cx], msk[::-1, :, cx], sz, sy, f"sagittal x={cx}", "z")]
    # A tall narrow plane keeps its aspect inside a wider panel, so that titles do not collide.
    widths = [max(p.width_per_height, MIN_HEIGHT_SHARE) for p in planes]
    widths += [1.0] * (mesh is not None)
    gaps = 2 * _MARGIN_IN + _GAP_IN * (len(widths) - 1)
    row = min(_ROW_IN, (_MAX_WIDTH_IN - gaps) / sum(widths))
    top = _TITLE_IN + (0.3 if title else 0.0)
    content_w = row * sum(widths) + gaps
    fig_w, fig_h = max(content_w, _MIN_WIDTH_IN), row + top + _MARGIN_IN
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    left = _MARGIN_IN + (fig_w - content_w) / 2  # centred where the title needs the width
    for i, w in enumerate(widths):
        rect = (left / fig_w, _MARGIN_IN / fig_h, row * w / fig_w, row / fig_h)
        if i < len(planes):
            _draw_plane(fig.add_axes(rect), planes[i])
        else:
            _render_mesh(fig.add_axes(rect, projection="3d"), mesh)
        left += row * w + _GAP_IN
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.08 / fig_h, va="top")
    target = Path(path)
    try:
        with atomic_path(target, overwrite) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return target
