"""tools/evaluate_vertebrae.py: the split bound separates what splitting loses from what the
binary mask itself gets wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import evaluate_vertebrae  # a tool script, importable once tools/ is on the path


def _two_vertebrae() -> np.ndarray:
    ref = np.zeros((40, 10, 10), dtype=np.int32)
    ref[2:18, 2:8, 2:8] = 20
    ref[22:38, 2:8, 2:8] = 21
    return ref


def test_split_bound_is_perfect_for_the_reference_mask_and_ignores_a_bad_split():
    ref = _two_vertebrae()
    binary = ref > 0
    assert evaluate_vertebrae.split_bound(ref, binary) == {20: 1.0, 21: 1.0}
    # Instances cut in the wrong place lose Dice; the bound, which only sees the mask, does not.
    bad = np.where(binary, np.where(np.arange(40)[:, None, None] < 26, 20, 21), 0)
    scored = evaluate_vertebrae.score(ref, bad, np.ones(3), True, {}, binary)
    dice = {v["name"]: v["dice"] for v in scored["vertebrae"]}
    bound = {v["name"]: v["dice_split_bound"] for v in scored["vertebrae"]}
    assert dice["L1"] < 0.9 and dice["L2"] < 0.9
    assert bound == {"L1": 1.0, "L2": 1.0}


def test_split_bound_counts_what_the_mask_misses_and_adds():
    ref = _two_vertebrae()
    binary = ref > 0
    binary[10:18] = False           # half of L1 missed
    binary[38:40, 2:8, 2:8] = True  # bone beyond L2, nearest to it
    bound = evaluate_vertebrae.split_bound(ref, binary)
    assert abs(bound[20] - 2 * 288 / (576 + 288)) < 1e-9
    assert abs(bound[21] - 2 * 576 / (576 + 648)) < 1e-9
