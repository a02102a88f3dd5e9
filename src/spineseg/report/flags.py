"""Automatic flags: results a reader should look at before trusting them.

Each flag is cheap, computed from the mask (and, for confidence, from a histogram of the
network's probabilities), and says in its message what was measured, so the reader knows what to
look for in the preview. Thresholds are deliberately loose: a flag asks for a look, it is not a
verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from spineseg.io import Volume
from spineseg.io.geometry import nearest_axes

#: Below this volume (mL) a mask is "tiny": less than one thoracic vertebra (≈15–25 mL), so at
#: most a fragment of the column, or bone the network mistook for it.
TINY_ML = 10.0
#: A run of slices without mask between masked ones, longer than this (mm) along the column, is a
#: "gap": taller than an intervertebral disc (lumbar discs ≈ 8–12 mm, and the posterior arches
#: usually bridge them), so a vertebra or most of one is missing.
GAP_MM = 15.0
#: The mask touching a side of the scan is flagged from this share of its voxels on the border:
#: a field of view that cuts the column puts whole cross-sections there (hundreds of voxels a
#: slice), while the tip of a transverse process grazing the edge of a tight crop puts a few
#: (2 of 73 000 on verse012), which is no reason to look.
BORDER_MIN_SHARE = 0.001
#: Probabilities between these two count as "uncertain" (the network neither sure of spine nor
#: of background).
UNCERTAIN_RANGE = (0.3, 0.7)
#: More than this share of the column's voxels (p >= 0.3 within the mask's bounding box) being
#: uncertain is "low confidence". Where the shipped model segments well it is 5 % (ts_abdomen_3mm)
#: and 12 % (ts_chest_dicom): mostly the mask's one-voxel rim. Twice the chest's share means
#: blurred, doubtful boundaries or a column the network only half sees.
LOW_CONFIDENCE_SHARE = 0.25
#: Bins of :func:`probability_histogram` (0, 0.1, …, 1.0).
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class Flag:
    """One reason to look: a short code (``empty``, ``tiny``, ``gap``, ``border``,
    ``low_confidence``, ``failed``) and what was measured."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def column_axis(mask: Volume) -> int:
    """The numpy axis of ``mask.array`` (0 = z, 1 = y, 2 = x) closest to the patient's
    superior-inferior axis: the one the column runs along."""
    return 2 - nearest_axes(mask)[2]


def column_gap_mm(mask: Volume) -> tuple[float, int, int]:
    """The longest run of mask-free slices between masked ones along the column, in mm, and the
    first and last slice index of that run (``(0.0, -1, -1)`` when there is none)."""
    axis = column_axis(mask)
    inside = np.asarray(mask.array) > 0
    present = inside.any(axis=tuple(a for a in range(3) if a != axis))
    hit = np.flatnonzero(present)
    if hit.size < 2:
        return 0.0, -1, -1
    steps = np.diff(hit)
    i = int(np.argmax(steps))
    if steps[i] <= 1:
        return 0.0, -1, -1
    spacing = float(mask.spacing[2 - axis])
    return float((steps[i] - 1) * spacing), int(hit[i] + 1), int(hit[i + 1] - 1)


def border_voxels(mask: Volume) -> int:
    """Mask voxels on the scan's in-plane border (the faces across the column). The column
    touching the top or bottom of the scan is normal (scans cover part of it); touching a side
    means the field of view may cut it."""
    inside = np.asarray(mask.array) > 0
    axis = column_axis(mask)
    total = 0
    for a in range(3):
        if a == axis or inside.shape[a] < 2:
            continue
        first = np.take(inside, 0, axis=a)
        last = np.take(inside, inside.shape[a] - 1, axis=a)
        total += int(first.sum()) + int(last.sum())
    return total


def mask_flags(mask: Volume, volume_ml: float) -> list[Flag]:
    """The flags the mask alone tells: empty, tiny, a gap in the column, touching the border."""
    inside = np.asarray(mask.array) > 0
    if not inside.any():
        return [Flag("empty", "no spine found: the mask is empty")]
    flags = []
    if volume_ml < TINY_ML:
        flags.append(Flag("tiny", f"the mask is only {volume_ml:.1f} mL (less than "
                                  f"{TINY_ML:g} mL, one vertebra)"))
    gap, first, last = column_gap_mm(mask)
    if gap > GAP_MM:
        flags.append(Flag("gap", f"a gap of {gap:.0f} mm in the column (slices {first}–{last} "
                                 f"along the column have no mask; more than {GAP_MM:g} mm)"))
    border = border_voxels(mask)
    if border > BORDER_MIN_SHARE * int(inside.sum()):
        flags.append(Flag("border", f"the mask touches the side of the scan ({border} voxels on "
                                    "its in-plane border): the field of view may cut the "
                                    "column"))
    return flags


def probability_histogram(prob: np.ndarray, mask: np.ndarray, slab: int = 32) -> list[int]:
    """Voxel counts of ``prob`` in :data:`HISTOGRAM_BINS` equal bins over [0, 1], within the
    bounding box of ``mask`` (same shape): a few numbers that keep what the confidence flag needs
    once the probability map itself is freed. Worked through in slabs, so no float copy of a
    whole scan is made."""
    counts = np.zeros(HISTOGRAM_BINS, np.int64)
    if not mask.any():
        return counts.tolist()
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    region = prob[tuple(box)]
    for z0 in range(0, region.shape[0], slab):
        part = np.asarray(region[z0:z0 + slab], dtype=np.float32)
        index = np.clip((part * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        counts += np.bincount(index.ravel(), minlength=HISTOGRAM_BINS)
    return counts.tolist()


def uncertain_share(histogram: list[int]) -> float | None:
    """Share of the column's voxels (p >= 0.3) whose probability lies in :data:`UNCERTAIN_RANGE`;
    ``None`` without any."""
    h = np.asarray(histogram, dtype=np.int64)
    lo, hi = (round(v * HISTOGRAM_BINS) for v in UNCERTAIN_RANGE)
    column = int(h[lo:].sum())
    return None if column == 0 else float(h[lo:hi].sum()) / column


def confidence_flags(histogram: list[int] | None) -> list[Flag]:
    share = uncertain_share(histogram) if histogram is not None else None
    if share is None or share <= LOW_CONFIDENCE_SHARE:
        return []
    return [Flag("low_confidence",
                 f"{share:.0%} of the column's voxels have a probability between "
                 f"{UNCERTAIN_RANGE[0]:g} and {UNCERTAIN_RANGE[1]:g} (more than "
                 f"{LOW_CONFIDENCE_SHARE:.0%}): the network is unsure of this result")]
