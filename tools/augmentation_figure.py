"""Render docs/images/augmentation.png: one real slice across the noise and bone-density range.

Uses the training transforms themselves (RandCorrelatedNoised, RandOsteoporosisd with fixed
parameters), so the figure shows what the model is trained on. Each panel is labelled with what
was measured on it: soft-tissue noise (median 5×5 local SD, the measure of docs/anatomy.md — it
reads ~80 % of the added field's SD, because a 5×5 window cannot see the low-frequency part of
correlated noise) and the vertebral-body interior median HU.

    .venv/bin/python tools/augmentation_figure.py [--data ../shared/data] [-o docs/images/...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy import ndimage

from spineseg.data.augment import RandCorrelatedNoised, RandOsteoporosisd
from spineseg.data.prepare import canonical_case
from spineseg.data.preprocess import Preprocessing
from spineseg.data.simulate import CORTICAL_HU, soft_tissue_noise_sd
from spineseg.io import atomic_path
from spineseg.io.geometry import resample_to
from spineseg.io.read import read_image

REPO = Path(__file__).resolve().parents[1]
PP = Preprocessing()
HALF = (PP.hu_max - PP.hu_min) / 2.0
CENTRE = (PP.hu_max + PP.hu_min) / 2.0
WINDOW = (-250.0, 750.0)  # wide enough to see trabecular bone and noise together


def to_hu(x: torch.Tensor) -> np.ndarray:
    return torch.as_tensor(x).numpy()[0] * HALF + CENTRE


def interior_median(hu: np.ndarray, mask: np.ndarray) -> float:
    """Median HU of the trabecular interior (eroded spine, below cortical density)."""
    inner = ndimage.binary_erosion(mask, iterations=2)
    trab = inner & (ndimage.gaussian_filter(hu, 1.0) < CORTICAL_HU)
    return float(np.median(hu[trab]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("-o", "--output", type=Path, default=REPO / "docs/images/augmentation.png")
    args = ap.parse_args()
    ct = read_image(args.data / "ts_abdomen_3mm/ct.nii.gz")
    vert = resample_to(read_image(args.data / "ts_abdomen_3mm/vertebrae.nii.gz"), ct)
    spine = ((vert.array >= 27) & (vert.array <= 50)).astype(np.uint8)
    img, msk = canonical_case(ct, spine, PP)
    _, lab = canonical_case(ct, vert.array, PP)
    l2 = np.flatnonzero((lab.array == 30).any(axis=(1, 2)))
    z = int(l2[len(l2) // 2])
    hu, mask = img.array[z].astype(np.float32), msk.array[z].astype(np.float32)
    sample = {"image": torch.from_numpy(PP.normalize(hu)[None]),
              "label": torch.from_numpy(mask[None])}
    ys, xs = np.nonzero(mask)
    cy, cx, r = int(ys.mean()), int(xs.mean()), 75
    view = (slice(max(0, cy - r), cy + r), slice(max(0, cx - r), cx + r))

    panels: list[list[tuple[np.ndarray, str]]] = [[], []]
    for sd in (0.0, 50.0, 100.0, 150.0):
        out = sample
        if sd:
            t = RandCorrelatedNoised("image", 1.0, (sd, sd), (1.0, 1.0), PP)
            t.set_random_state(seed=0)
            out = t(dict(sample))
        a = to_hu(out["image"])
        panels[0].append((a, f"correlated noise SD {sd:.0f} HU\n"
                          f"soft-tissue local SD {soft_tissue_noise_sd(a):.0f} HU"))
    for target in (None, 110.0, 60.0):
        out = sample
        if target is not None:
            t = RandOsteoporosisd("image", "label", 1.0, (target, target), PP)
            t.set_random_state(seed=0)
            out = t(dict(sample))
        a = to_hu(out["image"])
        name = "native density" if target is None else f"osteoporotic, target {target:.0f} HU"
        panels[1].append((a, f"{name}\nbody interior median {interior_median(a, mask > 0):.0f} HU"))
    panels[1].append((hu, "reference mask (L2)"))

    fig, axes = plt.subplots(2, 4, figsize=(13, 7.8))
    for row, items in zip(axes, panels, strict=True):
        for ax, (a, title) in zip(row, items, strict=True):
            ax.imshow(a[view], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    axes[1, 3].contour(mask[view], levels=[0.5], colors="tab:orange", linewidths=1.0)
    fig.suptitle("Augmentation on a real slice (TotalSegmentator test case, L2, 1 mm in-plane; "
                 f"window {WINDOW[0]:.0f}..{WINDOW[1]:.0f} HU)", fontsize=11)
    fig.tight_layout(h_pad=2.0)
    with atomic_path(args.output, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110)
    print(args.output)


if __name__ == "__main__":
    main()
