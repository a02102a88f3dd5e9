"""Augmentations for how a scan was acquired: field of view, slice direction, contrast phase.

MONAI has no transform for any of the three, and each is a way real spine CT differs from the
whole-body slices most training data shows:

- **Field of view.** A spine-protocol scan is reconstructed on a small field of view around the
  column (80–250 mm): an axial slice holds the vertebra, the paraspinal muscles and nothing else,
  with the scanner's fill (below -1000 HU, i.e. the window's floor) outside. A network that only
  saw bodies leans on the body outline and under-segments such slices.
- **Slice direction.** A scan acquired as sagittal slices 2–4 mm apart becomes, once reoriented to
  axial, a slice whose left-right axis is coarse (partial-volume averaged over the slice
  thickness). :class:`monai.transforms.RandSimulateLowResolution` degrades both axes alike.
- **Contrast.** In arterial or portal phase the aorta and vena cava reach 150–400 HU right in
  front of the vertebral bodies: bright round "bone" a network must learn to leave out.

All three act on channel-first 2-D samples ``(C, H, W)`` normalised by
:class:`~spineseg.data.preprocess.Preprocessing` (rows anterior→posterior, columns patient
right→left, as in the canonical LPS grid) and on every channel alike, so the through-plane
context of a 2.5-D sample stays consistent.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, convert_to_numpy

from spineseg.data.preprocess import Preprocessing


def _centroid(label: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(label > 0.5)
    if not len(ys):
        return None
    return float(ys.mean()), float(xs.mean())


class RandFieldOfViewd(RandomizableTransform, MapTransform):
    """Cut the slice to a column-centred field of view (rectangle or reconstruction circle)
    80–250 mm across, filling the outside with the window's floor and clearing the label there.

    The window is centred on the spine in the sample (or the patch centre without spine) with a
    random shift, as a technologist centres a spine scan on the vertebral body.
    """

    def __init__(self, keys: KeysCollection, label_key: str, prob: float,
                 size_mm: tuple[float, float], preprocessing: Preprocessing,
                 circle_prob: float = 0.4, shift_mm: float = 20.0,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.size_mm = size_mm
        self.circle_prob = circle_prob
        self.shift_mm = shift_mm
        self.mm = float(preprocessing.spacing_xy[0])
        self.fill = float(preprocessing.normalize(np.array([preprocessing.hu_min]))[0])
        self._params: tuple[float, float, float, float, bool] = (0.0, 0.0, 1.0, 1.0, False)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        half_h, half_w = (float(self.R.uniform(*self.size_mm)) / (2 * self.mm) for _ in range(2))
        dy, dx = (float(self.R.uniform(-self.shift_mm, self.shift_mm)) / self.mm
                  for _ in range(2))
        self._params = (dy, dx, half_h, half_w, bool(self.R.random() < self.circle_prob))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        label = convert_to_numpy(d[self.label_key])
        h, w = label.shape[-2:]
        centre = _centroid(label[0]) or ((h - 1) / 2.0, (w - 1) / 2.0)
        dy, dx, half_h, half_w, circle = self._params
        yy = (np.arange(h)[:, None] - centre[0] - dy)
        xx = (np.arange(w)[None, :] - centre[1] - dx)
        if circle:
            radius = max(half_h, half_w)
            inside = yy ** 2 + xx ** 2 <= radius ** 2
        else:
            inside = (np.abs(yy) <= half_h) & (np.abs(xx) <= half_w)
        for key in self.key_iterator(d):
            arr = convert_to_numpy(d[key], dtype=np.float32)
            value = 0.0 if key == self.label_key else self.fill
            out = np.where(inside[None], arr, np.float32(value))
            d[key] = convert_to_dst_type(out, d[key], dtype=np.float32)[0]
        return d


class RandSliceThicknessd(RandomizableTransform, MapTransform):
    """Average one in-plane axis over a 2–4 mm slab and interpolate back (a sagittal or coronal
    acquisition seen in the axial plane). Image keys only: the label keeps its fine grid.
    """

    def __init__(self, keys: KeysCollection, prob: float, thickness_mm: tuple[float, float],
                 preprocessing: Preprocessing, left_right_prob: float = 0.75,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.thickness_mm = thickness_mm
        self.left_right_prob = left_right_prob
        self.mm = float(preprocessing.spacing_xy[0])
        self.factor = 1.0
        self.axis = -1

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.factor = max(1.0, float(self.R.uniform(*self.thickness_mm)) / self.mm)
        # Sagittal slices (coarse left-right, the columns) are the common spine protocol.
        self.axis = -1 if self.R.random() < self.left_right_prob else -2

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform or self.factor <= 1.0:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(convert_to_numpy(d[key], dtype=np.float32))[None]
            size = list(img.shape[-2:])
            coarse = list(size)
            coarse[self.axis] = max(1, round(size[self.axis] / self.factor))
            low = F.interpolate(img, size=coarse, mode="area")
            back = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
            d[key] = convert_to_dst_type(back[0].numpy(), d[key], dtype=np.float32)[0]
        return d


class RandContrastVesselsd(RandomizableTransform, MapTransform):
    """Paint a contrast-filled aorta (anterior-left) and vena cava (anterior-right) in front of
    the vertebral body, on soft tissue only, with the label untouched (vessels are background).
    """

    def __init__(self, keys: KeysCollection, label_key: str, prob: float,
                 aorta_hu: tuple[float, float], preprocessing: Preprocessing,
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.aorta_hu = aorta_hu
        self.pp = preprocessing
        self.mm = float(preprocessing.spacing_xy[0])
        self._draw: dict[str, float] = {}

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        aorta = float(self.R.uniform(*self.aorta_hu))
        self._draw = {
            "aorta_hu": aorta, "ivc_hu": float(self.R.uniform(0.4, 0.8)) * aorta,
            "r": float(self.R.uniform(8.0, 14.0)), "gap": float(self.R.uniform(1.0, 6.0)),
            "left": float(self.R.uniform(5.0, 25.0)), "right": float(self.R.uniform(15.0, 30.0)),
            "ivc": float(self.R.random() < 0.7),
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        label = convert_to_numpy(d[self.label_key])[0] > 0.5
        centre = _centroid(label)
        if centre is None:
            return d
        ys, xs = np.nonzero(label)
        near = np.abs(xs - centre[1]) * self.mm < 15.0  # the body, not a transverse process
        front = float(ys[near].min()) if near.any() else float(ys.min())
        p = {k: v / self.mm for k, v in self._draw.items() if k in ("r", "gap", "left", "right")}
        h, w = label.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy = front - p["r"] - p["gap"]
        vessels = [((yy - cy) ** 2 + (xx - centre[1] - p["left"]) ** 2 <= p["r"] ** 2,
                    self._draw["aorta_hu"])]
        if self._draw["ivc"]:
            ivc = ((yy - cy - 0.2 * p["r"]) / (0.8 * p["r"])) ** 2 + \
                  ((xx - centre[1] + p["right"]) / (1.2 * p["r"])) ** 2 <= 1.0
            vessels.append((ivc, self._draw["ivc_hu"]))
        lo, hi = (float(v) for v in self.pp.normalize(np.array([-200.0, 250.0])))
        for key in self.key_iterator(d):
            arr = convert_to_numpy(d[key], dtype=np.float32).copy()
            for region, hu in vessels:
                value = np.float32(self.pp.normalize(np.array([hu]))[0])
                soft = (arr >= lo) & (arr <= hi) & region[None] & ~label[None]
                arr[soft] = value
            d[key] = convert_to_dst_type(arr, d[key], dtype=np.float32)[0]
        return d
