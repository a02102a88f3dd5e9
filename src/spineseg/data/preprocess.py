"""Intensity and grid preprocessing shared by training and inference.

One dataclass, stored in every dataset manifest and checkpoint, so a model is always fed exactly
what it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    """In-plane spacing (mm) slices are resampled to, and the HU window mapped to [-1, 1].

    Why 1.0 mm: it keeps the ~1 mm cortical shell and pedicles visible, matches the paper's
    512×512 slices (0.7–1.0 mm) and costs far less on CPU than the 0.6 mm some scanners use.
    Why a wide window (-1000..2000): noise and osteoporosis push spine voxels far below the usual
    bone window; clipping at 200 HU or so would erase exactly the evidence the model needs.
    """

    spacing_xy: tuple[float, float] = (1.0, 1.0)
    hu_min: float = -1000.0
    hu_max: float = 2000.0

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """Map HU to float32 in [-1, 1] (works on numpy arrays; torch tensors via ``normalize_``)."""
        centre = (self.hu_max + self.hu_min) / 2.0
        half = (self.hu_max - self.hu_min) / 2.0
        out = np.clip(np.asarray(hu, dtype=np.float32), self.hu_min, self.hu_max)
        out -= centre
        out /= half
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing_xy"] = list(self.spacing_xy)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            spacing_xy=tuple(float(s) for s in d["spacing_xy"]),  # type: ignore[arg-type]
            hu_min=float(d["hu_min"]),
            hu_max=float(d["hu_max"]),
        )
