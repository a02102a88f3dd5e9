"""tools/column_profile.py: bands run from the cranial end of the reference, and a model that
misses the first centimetres of a crop shows it at the ends only."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import column_profile  # a tool script, importable once tools/ is on the path


def test_a_missed_cranial_end_shows_in_band_zero_only():
    ref = np.zeros((40, 8, 8), dtype=bool)
    ref[5:25, 2:6, 2:6] = True  # z 5..24: 20 slices, two per band; z grows superior
    pred = ref.copy()
    pred[23:25] = False  # the two most superior slices missed
    pred[0:3, 2:6, 2:6] = True  # bone outside the reference's extent belongs to no band
    pred[5, 0, 0:4] = True  # 4 false positives in the caudal band (z 5-6)
    out = column_profile.band_rates(pred, ref)
    bands = out["bands"]
    assert bands[0] == {"sensitivity": 0.0, "precision": None}
    assert bands[9] == {"sensitivity": 1.0, "precision": round(32 / 36, 4)}
    assert all(b == {"sensitivity": 1.0, "precision": 1.0} for b in bands[1:9])
    assert out["ends"] == {"sensitivity": 0.5, "precision": round(32 / 36, 4)}
    assert out["middle"] == {"sensitivity": 1.0, "precision": 1.0}
    # 288 of 320 reference voxels found; 288 + 48 + 4 predicted.
    assert out["dice"] == round(2 * 288 / (340 + 320), 4)
    assert out["dice_without_end_false_positives"] == round(2 * 288 / (336 + 320), 4)
