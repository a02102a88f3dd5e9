"""Make docs/images/phantom.png: phantoms next to a real CT in the same views.

Usage: ``python tools/phantom_figure.py [--seeds 3 7] [--real ../shared/data/ts_abdomen_3mm]
[-o docs/images/phantom.png]``. Each row shows axial, sagittal and coronal slices through the
column (physical aspect ratio, window -300..1200 HU) with the vertebra truth outlined in red.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from spineseg.data.phantom import PhantomConfig, generate_phantom
from spineseg.io import Volume, read_image, reorient

REPO = Path(__file__).resolve().parents[1]
WINDOW = (-300, 1200)


def _views(ct: Volume, mask: Volume) -> list[tuple[np.ndarray, np.ndarray, list[float], str]]:
    ct, mask = reorient(ct, "LPS"), reorient(mask, "LPS")
    a, m = ct.array.astype(np.float32), mask.array > 0
    sx, sy, sz = ct.spacing
    nz, ny, nx = a.shape
    zz, yy, xx = np.nonzero(m)
    # Axial slice through the middle of the visible column; sagittal/coronal through its centre.
    k = int(np.median(zz))
    j = int(np.median(yy[zz == k])) if (zz == k).any() else ny // 2
    i = int(np.median(xx))
    return [
        (a[k], m[k], [0, nx * sx, ny * sy, 0], "axial"),
        (a[:, :, i][::-1], m[:, :, i][::-1], [0, ny * sy, 0, nz * sz], "sagittal"),
        (a[:, j, :][::-1], m[:, j, :][::-1], [0, nx * sx, 0, nz * sz], "coronal"),
    ]


def _row(axes: np.ndarray, ct: Volume, mask: Volume, title: str) -> None:
    for ax, (img, msk, extent, name) in zip(axes, _views(ct, mask), strict=True):
        ax.imshow(img, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], extent=extent,
                  interpolation="bilinear")
        if msk.any():
            h, w = msk.shape
            xs = np.linspace(extent[0], extent[1], w)
            ys = np.linspace(extent[3], extent[2], h)  # imshow: row 0 at the top
            ax.contour(xs, ys, msk.astype(float), levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(f"{title} — {name}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--real", type=Path,
                        default=REPO.parent / "shared" / "data" / "ts_abdomen_3mm")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "docs" / "images" / "phantom.png")
    args = parser.parse_args()
    rows = len(args.seeds) + 1
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3.6 * rows), squeeze=False)
    cfg = PhantomConfig(shape=(256, 256, 120))
    for r, seed in enumerate(args.seeds):
        ph = generate_phantom(seed, cfg)
        p = ph.params
        title = (f"phantom {seed}: {p['levels'][0]}–{p['levels'][-1]}, noise {p['noise_sd']:.0f} "
                 f"HU {p['kernel']}, trab {p['trabecular_hu']:.0f} HU, "
                 f"{p['spacing_mm'][0]:.2f}/{p['spacing_mm'][2]:.1f} mm")
        _row(axes[r], ph.ct, ph.mask, title)
    real_ct = read_image(args.real / "ct.nii.gz")
    real_mask = read_image(args.real / "spine.nii.gz")
    _row(axes[-1], real_ct, real_mask, f"real: {args.real.name}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
