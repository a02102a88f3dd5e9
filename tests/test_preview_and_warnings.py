"""The preview's planes are readable at any slice count; stderr carries only spineseg's lines."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import trimesh

from spineseg.cli.main import main
from spineseg.inference.preview import save_preview
from spineseg.io import Volume, write_image
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


# --------------------------------------------------------------------------- warnings


def _noisy(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    """Wrap ``module.name`` so that it emits the kinds of noise dependencies emit."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        np.log(np.zeros(1))  # numpy: RuntimeWarning, divide by zero
        warnings.warn("a note from a dependency", UserWarning, stacklevel=1)
        logging.getLogger("somelib").warning("chatter from another library")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.fixture
def cli_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``main``'s logging reach stderr as in a real run (pytest's capture owns the root)."""
    monkeypatch.setattr(logging.root, "handlers", [])
    basic = logging.basicConfig
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: basic(**kw, force=True))


@pytest.mark.parametrize("debug", [False, True])
def test_dependency_noise_is_dropped_and_debug_shows_it(tmp_path, capfd, monkeypatch,
                                                        cli_logging, debug) -> None:
    import spineseg.cli.info as info

    src = write_image(ct_volume((4, 16, 16)), tmp_path / "ct.nii.gz")
    _noisy(monkeypatch, info, "describe")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # what a fresh interpreter would do with these
        assert main([*(["--debug"] if debug else []), "info", str(src)]) == 0
    err = capfd.readouterr().err
    if debug:  # routed through logging, in its format
        assert "WARNING: " in err and "UserWarning: a note from a dependency" in err
        assert "RuntimeWarning" in err and "chatter from another library" in err
    else:
        assert err == ""


DRIVER = textwrap.dedent('''
    import logging, sys, warnings
    import numpy as np
    import spineseg.inference.outputs as outputs

    real = outputs.save_preview

    def noisy(*args, **kwargs):
        np.log(np.zeros(1))
        warnings.warn("a note from a dependency", UserWarning)
        logging.getLogger("somelib").warning("chatter from another library")
        return real(*args, **kwargs)

    outputs.save_preview = noisy
    from spineseg.cli.main import entry

    entry()
''')


def test_segment_of_a_non_latin_file_prints_only_spineseg_lines(tmp_path, tiny_model_file):
    """A fresh interpreter, as a user runs it: the preview's title (the file name) has glyphs
    the font lacks, and the command meets numpy, warnings.warn and foreign log noise."""
    src = write_image(ct_volume((8, 32, 32)), tmp_path / "脊椎.nii.gz")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(driver), "segment", str(src), "-o", str(out), "--model",
         str(tiny_model_file), "--quiet", "--device", "cpu"],
        capture_output=True, text=True, encoding="utf-8", env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert (out / "preview.png").is_file()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("WARNING: ") and "脊椎" in ln for ln in lines), lines
    assert not re.search(r"Glyph|Warning:|chatter|dependency", proc.stderr), proc.stderr
