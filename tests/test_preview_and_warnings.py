"""The preview's planes are readable at any slice count."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import trimesh

from spineseg.inference.preview import save_preview
from spineseg.io import Volume
from synthetic_ct import ct_volume

# --------------------------------------------------------------------------- preview


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch):
    """The figures save_preview draws, kept open (it closes them after saving)."""
    kept: list[plt.Figure] = []
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    monkeypatch.undo()
    for fig in kept:
        plt.close(fig)


def _panels(fig: plt.Figure) -> dict[str, tuple[float, float, str]]:
    """Drawn (width, height) in pixels of each image panel, by plane, with its title."""
    fig.canvas.draw()
    out = {}
    for ax in fig.axes:
        if ax.images:
            box = ax.get_window_extent()
            title = ax.get_title()
            out[title.split()[0]] = (box.width, box.height, title)
    return out


def _physical_height_share(shape_zyx, spacing_xyz) -> dict[str, float]:
    (z, y, x), (sx, sy, sz) = shape_zyx, spacing_xyz
    return {"axial": y * sy / (x * sx), "coronal": z * sz / (x * sx),
            "sagittal": z * sz / (y * sy)}


def _mask(vol: Volume) -> Volume:
    return vol.with_array((np.asarray(vol.array) > 400).astype(np.uint8))


def test_planes_of_a_thick_scan_keep_their_physical_aspect(tmp_path, figures) -> None:
    shape, spacing = (40, 80, 96), (1.0, 1.5, 3.0)  # anisotropic pixels in every plane
    vol = ct_volume(shape, spacing=spacing)
    save_preview(vol, _mask(vol), trimesh.creation.box((20, 20, 20)), tmp_path / "p.png")
    panels = _panels(figures[-1])
    assert set(panels) == {"axial", "coronal", "sagittal"} and len(figures[-1].axes) == 4
    for plane, share in _physical_height_share(shape, spacing).items():
        w, h, title = panels[plane]
        assert h / w == pytest.approx(share, rel=0.03), plane
        assert "stretched" not in title


def test_planes_of_a_20_slice_scan_are_not_slivers(tmp_path, figures) -> None:
    shape, spacing = (20, 128, 128), (0.8, 0.8, 1.0)  # 20 mm deep, 102 mm wide
    vol = ct_volume(shape, spacing=spacing)
    save_preview(vol, _mask(vol), None, tmp_path / "p.png")
    panels = _panels(figures[-1])
    axial_h = panels["axial"][1]
    physical = _physical_height_share(shape, spacing)
    for plane in ("coronal", "sagittal"):
        w, h, title = panels[plane]
        assert h >= 0.35 * w and h >= 0.9 * axial_h, (plane, w, h)
        # still physical, but for a vertical stretch that the title states
        stretch = float(re.search(r"z stretched ×([\d.]+)", title).group(1))
        assert h / w == pytest.approx(physical[plane] * stretch, rel=0.05), title
    assert panels["axial"][1] / panels["axial"][0] == pytest.approx(physical["axial"], rel=0.03)


def test_single_slice_preview_draws_the_axial_plane_only(tmp_path, figures) -> None:
    vol = ct_volume((1, 40, 40))
    path = save_preview(vol, _mask(vol), trimesh.creation.box((5, 5, 5)), tmp_path / "one.png")
    assert path.is_file()
    assert set(_panels(figures[-1])) == {"axial"} and len(figures[-1].axes) == 2
