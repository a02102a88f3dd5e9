"""The paper's Figures 6 and 7 from our runs.

- Figure 6: test CT slices, ground truth and each network's prediction side by side (the paper's
  columns: CT, ground truth, SegNet, U-Net, proposed), from the Table 1 Dice-loss runs' best
  checkpoints (seed 0), with the per-slice Dice in each title.
- Figure 7: a 3D reconstruction (marching cubes, :func:`spineseg.reconstruction.mask_to_mesh`)
  of the proposed network's prediction for a whole test patient next to the reference.

- Training curves: validation DSC per epoch of every seed of every run, with the window the
  plateau criterion judges shaded, so a reader sees how far each cell is from flat.

Predictions are the raw network output thresholded at 0.5, the same masks the tables score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import trimesh
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from spineseg.data.manifest import case_dir, read_manifest
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import DataError, GeometryError
from spineseg.evaluation.evaluate import predict_volume
from spineseg.evaluation.metrics import paper_dsc
from spineseg.experiments.runner import SeedResult
from spineseg.io import Volume, atomic_path
from spineseg.models import SegmentationNet, build_model
from spineseg.reconstruction import MeshConfig, mask_to_mesh
from spineseg.training.checkpoint import load_checkpoint

__all__ = ["FIG6_NETWORKS", "FigureModel", "figure6", "figure7", "figure_curves",
           "load_figure_model"]

# Paper's Figure 6 columns after CT and ground truth.
FIG6_NETWORKS: tuple[str, ...] = ("segnet", "unet", "msrunet")
_WINDOW = (-400.0, 1200.0)  # bone and soft tissue both visible
_MARGIN_MM = 40.0  # context around the spine in Figure 6 crops


@dataclass(frozen=True)
class FigureModel:
    """A trained network ready to predict, with what it needs to be fed correctly."""

    label: str
    model: SegmentationNet
    preprocessing: Preprocessing
    divisor: int


def load_figure_model(checkpoint: Path, label: str, device: str = "cpu") -> FigureModel:
    """Rebuild a trained network from a training checkpoint, on ``device``, in eval mode."""
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    model = build_model(str(ckpt["model_name"]), **dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    return FigureModel(label, model, Preprocessing.from_dict(ckpt["preprocessing"]),
                       2 ** int(ckpt["model_config"]["depth"]))


def _test_cases(data: Path, kinds: tuple[str, ...] | None) -> list[str]:
    cases = read_manifest(data).case_ids("test", kinds)
    if not cases:
        raise DataError(f"{data}: no test cases to draw")
    return cases


def _pick_slices(data: Path, cases: list[str], n: int) -> list[tuple[str, int]]:
    """``n`` spine-bearing test slices spread evenly (by quantile) over all test cases."""
    candidates = []
    for cid in cases:
        ref = np.load(case_dir(data, cid) / "mask.npy", mmap_mode="r")
        candidates += [(cid, int(z)) for z in np.flatnonzero(ref.reshape(ref.shape[0], -1)
                                                             .any(axis=1))]
    if not candidates:
        raise DataError(f"{data}: the test cases contain no spine to show")
    picks = np.linspace(0.2, 0.8, n) if n > 1 else np.array([0.5])
    idx = sorted({round(float(q) * (len(candidates) - 1)) for q in picks})
    return [candidates[i] for i in idx]


def _crop_box(ref: np.ndarray, spacing_xy: tuple[float, float]) -> tuple[slice, slice]:
    ys, xs = np.nonzero(ref)
    my, mx = int(_MARGIN_MM / spacing_xy[1]), int(_MARGIN_MM / spacing_xy[0])
    return (slice(max(int(ys.min()) - my, 0), int(ys.max()) + my + 1),
            slice(max(int(xs.min()) - mx, 0), int(xs.max()) + mx + 1))


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        with atomic_path(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def figure6(data: Path, models: list[FigureModel], out: Path, *,
            kinds: tuple[str, ...] | None = None, n_slices: int = 3,
            device: str = "cpu") -> Path:
    """CT | ground truth | one column per model, for ``n_slices`` test slices."""
    data = Path(data)
    picks = _pick_slices(data, _test_cases(data, kinds), n_slices)
    cols = 2 + len(models)
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.4 * cols, 2.5 * len(picks)), dpi=120,
                             squeeze=False)
    manifest = read_manifest(data)
    for row, (cid, z) in enumerate(picks):
        d = case_dir(data, cid)
        volume = np.load(d / "image.npy", mmap_mode="r")
        ref = np.asarray(np.load(d / "mask.npy", mmap_mode="r")[z]) > 0
        sx, sy, sz = manifest.cases[cid].spacing
        box = _crop_box(ref, (sx, sy))
        panels = [(np.asarray(volume[z])[box], f"CT {cid} z={z}", True),
                  (ref[box], "ground truth", False)]
        for m in models:
            # A slab wide enough for a 2.5-D model's context (just slice z for a 2-D one): its
            # interpolated planes never reach beyond ceil(offset) slices.
            r = math.ceil(m.preprocessing.context_slices * m.preprocessing.context_mm / sz)
            z0, z1 = max(z - r, 0), min(z + r + 1, volume.shape[0])
            pred = predict_volume(m.model, np.asarray(volume[z0:z1]), m.preprocessing,
                                  divisor=m.divisor, device=device, spacing_z=sz)[z - z0] > 0
            inter = int((pred & ref).sum())
            dsc = paper_dsc(inter, int(ref.sum()), int(pred.sum()))
            panels.append((pred[box], f"{m.label} (DSC {100 * dsc:.1f})", False))
        for col, (img, title, is_ct) in enumerate(panels):
            ax = axes[row][col]
            if is_ct:
                ax.imshow(img, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1],
                          aspect=sy / sx, interpolation="nearest")
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, aspect=sy / sx,
                          interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("Test slices: CT, ground truth and predictions (Dice loss, best checkpoint, "
                 "seed 0; crops around the spine)", fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out))


def _case_volume(data: Path, cid: str, array: np.ndarray) -> Volume:
    meta = json.loads((case_dir(data, cid) / "meta.json").read_text(encoding="utf-8"))
    return Volume(array, tuple(meta["spacing"]), tuple(meta.get("origin", (0.0, 0.0, 0.0))),
                  tuple(meta.get("direction", (1, 0, 0, 0, 1, 0, 0, 0, 1))))


def _draw_mesh(ax: plt.Axes, mesh: trimesh.Trimesh | None, bounds: np.ndarray,
               title: str) -> None:
    # A few lines of Lambert shading on Poly3DCollection: matplotlib has no lit mesh artist.
    if mesh is not None:
        light = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
        shade = np.clip(mesh.face_normals @ light, 0.0, 1.0) * 0.75 + 0.25
        colours = np.stack([shade * 0.93, shade * 0.86, shade * 0.72, np.ones_like(shade)], 1)
        ax.add_collection3d(Poly3DCollection(mesh.vertices[mesh.faces], facecolors=colours,
                                             linewidths=0))
    else:
        ax.text2D(0.5, 0.5, "empty prediction", transform=ax.transAxes, ha="center")
    lo, hi = bounds
    half, mid = (hi - lo).max() / 2, (hi + lo) / 2
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.view_init(elev=10, azim=-60)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def figure7(data: Path, model: FigureModel, out: Path, *,
            kinds: tuple[str, ...] | None = None, device: str = "cpu",
            max_faces: int = 20000) -> Path:
    """Reference and predicted spine surfaces of the test patient with the most spine."""
    data = Path(data)
    cases = _test_cases(data, kinds)
    sizes = {c: int(np.count_nonzero(np.load(case_dir(data, c) / "mask.npy", mmap_mode="r")))
             for c in cases}
    cid = max(cases, key=lambda c: sizes[c])
    d = case_dir(data, cid)
    hu = np.load(d / "image.npy", mmap_mode="r")
    ref = np.asarray(np.load(d / "mask.npy", mmap_mode="r")) > 0
    pred = predict_volume(model.model, hu, model.preprocessing, divisor=model.divisor,
                          device=device, spacing_z=read_manifest(data).cases[cid].spacing[2]) > 0
    dsc = paper_dsc(int((pred & ref).sum()), int(ref.sum()), int(pred.sum()))
    cfg = MeshConfig(max_faces=max_faces)
    ref_mesh = mask_to_mesh(_case_volume(data, cid, ref.astype(np.uint8)), cfg)
    try:
        pred_mesh: trimesh.Trimesh | None = mask_to_mesh(
            _case_volume(data, cid, pred.astype(np.uint8)), cfg)
    except GeometryError:  # an empty prediction has no surface; show that honestly
        pred_mesh = None
    bounds = np.stack([ref_mesh.vertices.min(0), ref_mesh.vertices.max(0)])
    fig = plt.figure(figsize=(8, 4.6), dpi=120)
    _draw_mesh(fig.add_subplot(1, 2, 1, projection="3d"), ref_mesh, bounds,
               f"reference ({cid})")
    _draw_mesh(fig.add_subplot(1, 2, 2, projection="3d"), pred_mesh, bounds,
               f"{model.label} prediction (volume DSC {100 * dsc:.1f})")
    fig.suptitle("3D reconstruction of a test patient's spine (marching cubes, same view "
                 "and scale)", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(out))


def figure_curves(results: Mapping[str, Sequence[SeedResult]], out: Path, *,
                  keys: Sequence[str] | None = None, columns: int = 6) -> Path:
    """Validation DSC (%) per epoch, one panel per run (``keys`` order), one line per seed.

    The last epochs that the plateau criterion compares against the rest are shaded; a run
    without a recorded curve (an old result) gets an empty panel saying so.
    """
    keys = list(keys) if keys is not None else sorted(results)
    if not keys:
        raise DataError("no runs to draw training curves for")
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, min(columns, len(keys)), figsize=(2.6 * min(columns, len(keys)),
                             2.1 * rows), dpi=110, squeeze=False, sharey=True)
    for ax, key in zip(axes.flat, keys, strict=False):
        seeds = results.get(key, ())
        met = 0
        for r in seeds:
            if not r.curve:
                continue
            epochs = [row["epoch"] for row in r.curve]
            ax.plot(epochs, [100 * row["val_dice"] for row in r.curve], lw=1,
                    label=f"seed {r.seed}")
            verdict = r.plateau_verdict
            if verdict is not None:
                met += int(verdict.met)
                ax.axvspan(epochs[-verdict.window_epochs] - 0.5, epochs[-1] + 0.5, color="0.9",
                           zorder=0)
        drawn = sum(1 for r in seeds if r.curve)
        status = (f"plateau {met}/{drawn}" if drawn else
                  ("no curve recorded" if seeds else "not run yet"))
        ax.set_title(f"{key.split('/', 1)[1]} ({key.split('/')[0]})\n{status}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_ylim(0, 100)
        if drawn:
            ax.legend(fontsize=5, loc="lower right")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("val DSC (%)", fontsize=7)
    for ax in axes[-1, :]:
        ax.set_xlabel("epoch", fontsize=7)
    fig.suptitle("Validation DSC per epoch (shaded: the window the plateau criterion judges)",
                 fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out))
