"""How coarse is a reference mask, and what Dice can a fine-grained segmentation reach against it?

    python tools/reference_resolution.py ../shared/data/ts_chest_dicom_ref/spine.nii.gz \
        --ct ../shared/data/ts_chest_dicom --pred out/spine.nii.gz

A mask that was computed on a coarse grid and resampled nearest-neighbour onto a finer one has
its edges on the coarse lattice: along each axis the physical positions of its 0/1 transitions
cluster at one phase modulo the coarse spacing T. The tool prints, per axis and for candidate T,
the phase coherence |mean(exp(2 pi i p / T))| of those positions (1 = every edge on one lattice,
~0 = no lattice; a fine segmentation scores near 0 for any T above its own spacing).

Along an axis where the reference's grid is finer than the coarse one by less than 2x (3 mm onto
2 mm slices) the edges cannot show the lattice, but repetition does: a coarse plane resampled
nearest-neighbour fills one or two fine planes, so runs of identical adjacent planes are the
coarse cells (7 of the chest reference's 19 adjacent slice pairs are identical: ~3.2 mm).

With ``--pred`` (a fine segmentation of the same scan), it estimates the ceiling such a
reference puts on Dice: the prediction is block-averaged onto the detected cells (lattice T and
phase in-plane, runs of identical planes through-plane), thresholded at 0.5 and brought back:
the mask a perfect coarse segmenter that agreed with ``pred`` on every voxel's anatomy would
have produced. Its Dice against ``pred`` is what lattice quantisation alone costs, before any
disagreement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from spineseg.evaluation.metrics import paper_dsc
from spineseg.io import Volume, read_image, reorient, resample_to

PERIODS_MM = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def _axis_positions(vol: Volume) -> list[np.ndarray]:
    """Physical coordinate (mm) of every voxel centre along x, y, z of an LPS-ordered volume."""
    return [vol.origin[a] + vol.spacing[a] * np.arange(vol.array.shape[2 - a]) for a in range(3)]


def edge_positions(vol: Volume) -> list[np.ndarray]:
    """Physical positions (mm) of the mask's 0/1 transitions along x, y and z."""
    mask = vol.array > 0
    out = []
    for a, pos in enumerate(_axis_positions(vol)):
        axis = 2 - a  # numpy axis of physical axis a
        idx = np.nonzero(np.diff(mask.astype(np.int8), axis=axis))[axis]
        out.append(pos[idx] + 0.5 * vol.spacing[a])
    return out


def lattice(edges: np.ndarray, period: float) -> tuple[float, float]:
    """(coherence, phase in mm) of edge positions modulo ``period``."""
    z = np.exp(2j * np.pi * edges / period).mean() if len(edges) else 0j
    return float(abs(z)), float(np.angle(z) / (2 * np.pi) * period) % period


def plane_runs(vol: Volume, a: int) -> np.ndarray:
    """Cell index of every plane along physical axis ``a``: runs of identical non-empty planes
    share one (empty planes outside the mask are identical without saying anything)."""
    mask = np.moveaxis(vol.array > 0, 2 - a, 0)
    same = np.array([mask[i].any() and (mask[i] == mask[i + 1]).all()
                     for i in range(len(mask) - 1)], dtype=bool)
    return np.concatenate([[0], np.cumsum(~same)])


def axis_cells(ref: Volume) -> list[np.ndarray]:
    """Per physical axis, the reference's coarse cell of each plane (printing how it was found)."""
    out = []
    for a, (pos, edges) in enumerate(zip(_axis_positions(ref), edge_positions(ref), strict=True)):
        runs = plane_runs(ref, a)
        filled = np.moveaxis(ref.array > 0, 2 - a, 0).reshape(len(runs), -1).any(1)
        distinct = len(np.unique(runs[filled]))
        repeated = 1 - distinct / max(1, filled.sum())  # share of non-empty planes repeated
        row = {t: lattice(edges, t) for t in PERIODS_MM if t > ref.spacing[a] * 1.01}
        listed = ", ".join(f"{k:g} mm {c:.2f}" for k, (c, _) in row.items())
        t = max(row, key=lambda k: row[k][0]) if row else 0.0
        if row and row[t][0] > 0.5:
            print(f"axis {'xyz'[a]}: edges on a {t:g} mm lattice (coherence {row[t][0]:.2f}; "
                  f"{listed})")
            out.append(np.floor((pos - row[t][1]) / t).astype(np.int64))
        elif repeated > 0.2:
            print(f"axis {'xyz'[a]}: {distinct} distinct of {filled.sum()} non-empty planes "
                  f"(source spacing ~{ref.spacing[a] / (1 - repeated):.1f} mm)")
            out.append(runs)
        else:
            print(f"axis {'xyz'[a]}: no coarser lattice ({listed})")
            out.append(np.arange(len(pos)))
    return out


def quantise(vol: Volume, cells: list[np.ndarray]) -> np.ndarray:
    """Block-majority of a fine mask over the given cells (cell index per plane, per axis)."""
    mask = (vol.array > 0).astype(np.float32)
    # One label per (z, y, x) cell: the block mean is the mean over voxels sharing a label.
    iz, iy, ix = (np.unique(c, return_inverse=True)[1] for c in (cells[2], cells[1], cells[0]))
    labels = ((iz[:, None, None] * (iy.max() + 1) + iy[None, :, None]) * (ix.max() + 1)
              + ix[None, None, :])
    means = ndimage.mean(mask, labels + 1, index=np.arange(1, labels.max() + 2))
    return (means[labels] >= 0.5).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return paper_dsc(int((a & b).sum()), int(a.sum()), int(b.sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref", type=Path, help="reference mask")
    ap.add_argument("--ct", type=Path, help="the CT whose grid the reference is read in")
    ap.add_argument("--pred", type=Path, help="a fine segmentation of the same scan")
    args = ap.parse_args()
    ref = read_image(args.ref)
    grid = reorient(read_image(args.ct) if args.ct else ref, "LPS")
    ref = resample_to(ref, grid, interpolation="nearest")
    print(f"grid spacing (x, y, z) mm: {tuple(round(s, 3) for s in grid.spacing)}")
    found = axis_cells(ref)
    if args.pred:
        pred = resample_to(read_image(args.pred), grid, interpolation="nearest")
        print(f"Dice(pred, ref) = {dice(pred.array, ref.array):.3f}")
        for name, axes in (("in-plane only", (0, 1)), ("through-plane only", (2,)),
                           ("all axes", (0, 1, 2))):
            cells = [found[a] if a in axes else np.arange(len(found[a])) for a in range(3)]
            print(f"Dice(pred, pred on the reference's cells, {name}) = "
                  f"{dice(pred.array, quantise(pred, cells)):.3f}")


if __name__ == "__main__":
    main()
