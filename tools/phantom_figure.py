"""Make docs/images/phantom.png: phantoms next to a real CT in the same views.

Usage: ``python tools/phantom_figure.py [--real ../shared/data/ts_abdomen_3mm]
[-o docs/images/phantom.png]``. One row per case (a lumbosacral phantom with the pelvis, a
thoracic one with lungs, ribs and scapulae, a noisy osteoporotic crop, then the real case):
axial, sagittal and coronal slices through the column in physical aspect (window -300..1200 HU),
vertebra truth outlined in red. Every panel has the same size, so the cases compare at a glance.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from spineseg.data.phantom import PhantomConfig, generate_phantom
from spineseg.io import Volume, read_image, reorient

REPO = Path(__file__).resolve().parents[1]
WINDOW = (-300, 1200)
SHAPE = (256, 256, 120)


@dataclass(frozen=True)
class Row:
    seed: int
    config: PhantomConfig
    axial_at: str  # "truth": middle of the visible column; "sacrum": 25 mm below the S1 plate


ROWS = (
    Row(2, PhantomConfig(shape=SHAPE, center_level="S1", crop_prob=0.0, noise_sd=(20, 30),
                         slice_thickness_mm=(2.5, 3.0), trabecular_hu=(70, 90)), "sacrum"),
    Row(5, PhantomConfig(shape=SHAPE, center_level="T7", crop_prob=0.0, noise_sd=(15, 25),
                         slice_thickness_mm=(2.5, 3.0)), "truth"),
    Row(8, PhantomConfig(shape=SHAPE, center_level="L3", crop_prob=1.0, noise_sd=(100, 140),
                         slice_thickness_mm=(0.8, 1.2), trabecular_hu=(50, 80)), "truth"),
)


def _views(ct: Volume, mask: Volume, axial_z: float | None
           ) -> list[tuple[np.ndarray, np.ndarray, list[float], str]]:
    ct, mask = reorient(ct, "LPS"), reorient(mask, "LPS")
    a, m = ct.array.astype(np.float32), mask.array > 0
    sx, sy, sz = ct.spacing
    nz, ny, nx = a.shape
    zz, yy, xx = np.nonzero(m)
    k = int(np.median(zz))
    if axial_z is not None:
        k = int(np.clip(round((axial_z - ct.origin[2]) / sz), 0, nz - 1))
    kb = int(np.median(zz))
    j = int(np.median(yy[zz == kb]))
    i = int(np.median(xx))
    return [
        (a[k], m[k], [0, nx * sx, ny * sy, 0], "axial"),
        (a[:, :, i][::-1], m[:, :, i][::-1], [0, ny * sy, 0, nz * sz], "sagittal"),
        (a[:, j, :][::-1], m[:, j, :][::-1], [0, nx * sx, 0, nz * sz], "coronal"),
    ]


def _row(axes: np.ndarray, ct: Volume, mask: Volume, label: str, axial_z: float | None,
         first: bool) -> None:
    for ax, (img, msk, extent, name) in zip(axes, _views(ct, mask, axial_z), strict=True):
        ax.set_facecolor("black")
        ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], extent=extent,
                  interpolation="bilinear")
        if msk.any():
            h, w = msk.shape
            xs = np.linspace(extent[0], extent[1], w)
            ys = np.linspace(extent[3], extent[2], h)  # imshow: row 0 at the top
            ax.contour(xs, ys, msk.astype(float), levels=[0.5], colors="red", linewidths=0.5)
        ax.set_anchor("C")
        ax.set_xticks([])
        ax.set_yticks([])
        if first:
            ax.set_title(name, fontsize=10)
    axes[0].set_ylabel(label, fontsize=8.5)


def _label(p: dict) -> str:
    sp = p["spacing_mm"]
    return (f"phantom {p['seed']}: {p['levels'][0]}–{p['levels'][-1]}\n"
            f"noise {p['noise_sd']:.0f} HU, body {p['trabecular_hu']:.0f} HU\n"
            f"{sp[0]:.2f}×{sp[2]:.1f} mm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path,
                        default=REPO.parent / "shared" / "data" / "ts_abdomen_3mm")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "docs" / "images" / "phantom.png")
    args = parser.parse_args()
    n = len(ROWS) + 1
    fig, axes = plt.subplots(n, 3, figsize=(10, 3.3 * n), squeeze=False,
                             gridspec_kw={"wspace": 0.03, "hspace": 0.06})
    for r, row in enumerate(ROWS):
        ph = generate_phantom(row.seed, row.config)
        z = ph.params["sacrum_top_z"] - 25.0 if row.axial_at == "sacrum" else None
        _row(axes[r], ph.ct, ph.mask, _label(ph.params), z, r == 0)
    real_ct = read_image(args.real / "ct.nii.gz")
    real_mask = read_image(args.real / "spine.nii.gz")
    _row(axes[-1], real_ct, real_mask,
         f"real: {args.real.name}\n{real_ct.spacing[0]:.1f}×{real_ct.spacing[2]:.1f} mm", None,
         False)
    fig.subplots_adjust(left=0.06, right=0.995, top=0.975, bottom=0.005)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, facecolor="white")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
