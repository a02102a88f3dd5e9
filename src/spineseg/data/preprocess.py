"""Intensity, grid and slice-context preprocessing shared by training and inference.

One dataclass, stored in every dataset manifest and checkpoint, so a model is always fed exactly
what it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from spineseg.errors import InputError


def check_context(context_slices: int, context_mm: float) -> None:
    """Raise :class:`InputError` on a slice context no model could use (shared by every config
    that carries one, so the rule and its message live here)."""
    if context_slices < 0 or not context_mm > 0:
        raise InputError("need context_slices >= 0 and context_mm > 0, got "
                         f"{context_slices} and {context_mm}")


@dataclass(frozen=True)
class Preprocessing:
    """In-plane spacing (mm) slices are resampled to, the HU window mapped to [-1, 1], and the
    through-plane context fed beside each slice.

    Why 1.0 mm: it keeps the ~1 mm cortical shell and pedicles visible, matches the paper's
    512×512 slices (0.7–1.0 mm) and costs far less on CPU than the 0.6 mm some scanners use.
    Why a wide window (-1000..2000): noise and osteoporosis push spine voxels far below the usual
    bone window; clipping at 200 HU or so would erase exactly the evidence the model needs.

    ``context_slices`` (per side) > 0 makes the network 2.5-D: channel ``k`` is the volume
    resampled at ``(k - context_slices) * context_mm`` from the slice, channel ``context_slices``
    the slice itself. Why: one axial slice cannot tell an end-plate rim around a disc from the
    cortical shell of an osteoporotic body; the slices above and below can. The offsets are in
    millimetres, not slice indices, so a 1 mm and a 3 mm scan give the network the same anatomy.
    """

    spacing_xy: tuple[float, float] = (1.0, 1.0)
    hu_min: float = -1000.0
    hu_max: float = 2000.0
    context_slices: int = 0
    context_mm: float = 3.0

    def __post_init__(self) -> None:
        check_context(self.context_slices, self.context_mm)

    @property
    def channels(self) -> int:
        """Input channels the network needs: the slice plus its context on both sides."""
        return 2 * self.context_slices + 1

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """Map HU to float32 in [-1, 1] (works on numpy arrays; torch tensors via ``normalize_``)."""
        centre = (self.hu_max + self.hu_min) / 2.0
        half = (self.hu_max - self.hu_min) / 2.0
        out = np.clip(np.asarray(hu, dtype=np.float32), self.hu_min, self.hu_max)
        out -= centre
        out /= half
        return out

    def network_input(self, hu: np.ndarray, zs: np.ndarray | slice, spacing_z: float,
                      ys: slice = slice(None), xs: slice = slice(None)) -> np.ndarray:
        """Normalised ``(B, channels, H, W)`` float32 input for slices ``zs`` of ``hu`` (Z, Y, X).

        ``hu`` may be a memory map: only the slices needed are read. Context positions outside
        the volume are clamped to its first/last slice (edge padding, like a scan that simply
        continues), and positions between slices are linearly interpolated. Raises
        :class:`InputError` when a 2.5-D model is given no slice spacing.
        """
        if self.context_slices == 0:
            return self.normalize(hu[zs if isinstance(zs, slice) else np.asarray(zs, np.int64),
                                     ys, xs])[:, None]
        if not spacing_z > 0:
            raise InputError(f"the model reads {self.context_mm:g} mm of context on each side of "
                             f"a slice and needs the slice spacing, got {spacing_z}")
        z = np.arange(hu.shape[0])[zs] if isinstance(zs, slice) else np.asarray(zs, np.int64)
        last = hu.shape[0] - 1
        channels = []
        for k in range(-self.context_slices, self.context_slices + 1):
            pos = np.clip(z + k * self.context_mm / spacing_z, 0, last)
            lo = np.floor(pos).astype(np.int64)
            hi = np.minimum(lo + 1, last)
            w = (pos - lo).astype(np.float32)[:, None, None]
            plane = np.asarray(hu[lo, ys, xs], dtype=np.float32)
            if np.any(w > 1e-6):
                plane = plane * (1 - w) + np.asarray(hu[hi, ys, xs], dtype=np.float32) * w
            channels.append(self.normalize(plane))
        return np.stack(channels, axis=1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing_xy"] = list(self.spacing_xy)
        if self.context_slices == 0:  # 2-D files stay as they were before context existed
            del d["context_slices"], d["context_mm"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            spacing_xy=tuple(float(s) for s in d["spacing_xy"]),  # type: ignore[arg-type]
            hu_min=float(d["hu_min"]),
            hu_max=float(d["hu_max"]),
            context_slices=int(d.get("context_slices", 0)),
            context_mm=float(d.get("context_mm", 3.0)),
        )
