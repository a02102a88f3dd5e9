"""Body heights of reference vertebrae measured by hand-style counting, to check the automatic ones.

    python tools/hand_measure_heights.py ../shared/data verse005:L3 verse008:L2

Independent of :mod:`spineseg.vertebrae.measures` (which measures on planes that follow the
column): here the reference label of one vertebra is cut on the scanner's mid-sagittal plane, the
body is the anterior run of label pixels in each row (the canal separates it from the arch), and
each height is the length of the label's vertical run through the body at 15 %, 50 % and 85 % of
its depth, as one would count pixels on a sagittal image. The automatic heights of the same
vertebra (from the reference spine mask) are printed beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from real_cases import CASES

from spineseg.io import CANONICAL, read_image, reorient, resample_to
from spineseg.vertebrae.analysis import label_vertebrae
from spineseg.vertebrae.levels import VERSE_IDS


def _runs(line: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the runs of True in a 1-D array."""
    edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def hand_heights(label: np.ndarray, spacing_zyx: np.ndarray) -> tuple[list[float], dict]:
    """(anterior, middle, posterior height in mm, details) of one vertebra's (z, y, x) mask."""
    x = int(np.median(np.nonzero(label)[2]))
    plane = label[:, :, x]  # (z, y): y runs anterior -> posterior
    rows = np.flatnonzero(plane.any(axis=1))
    body_rows = {z: _runs(plane[z])[0] for z in rows}  # the first run from the front is the body
    depth = {z: b - a for z, (a, b) in body_rows.items()}
    mid = max(depth, key=depth.get)  # the row through the body's full depth
    y_a, y_p = body_rows[mid][0], body_rows[mid][1] - 1
    out = []
    for f in (0.15, 0.5, 0.85):
        y = round(y_a + f * (y_p - y_a))
        run = next(r for r in _runs(plane[:, y]) if r[0] <= mid < r[1])
        out.append(float((run[1] - run[0]) * spacing_zyx[0]))
    return out, {"sagittal_x": x, "depth_mm": float((y_p - y_a + 1) * spacing_zyx[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("vertebrae", nargs="+", help="CASE:LEVEL, e.g. verse005:L3")
    args = ap.parse_args()
    for item in args.vertebrae:
        case, level = item.split(":")
        entry = CASES[case]
        ct = reorient(read_image(args.shared_data / entry.image), CANONICAL)
        ref = resample_to(read_image(args.shared_data / entry.vertebrae), ct,
                          interpolation="nearest").array
        spacing = np.asarray(ct.spacing, dtype=float)[::-1]
        hand, info = hand_heights(ref == VERSE_IDS[level], spacing)
        auto = label_vertebrae(ct, read_image(args.shared_data / entry.spine)).by_name()[level]
        m = auto.measures
        heights = (m.height_anterior_mm, m.height_middle_mm, m.height_posterior_mm)
        automatic = ("not measured (the body is cut by the field of view)"
                     if heights[0] is None else " / ".join(f"{h:.1f}" for h in heights) + " mm")
        print(f"{case} {level}: hand A/M/P {hand[0]:.1f} / {hand[1]:.1f} / {hand[2]:.1f} mm "
              f"(sagittal plane x={info['sagittal_x']}, body depth {info['depth_mm']:.0f} mm); "
              f"automatic {automatic}")


if __name__ == "__main__":
    main()
