"""A tiny CT-like volume for tests that exercise files, errors and geometry, not anatomy."""

from __future__ import annotations

import numpy as np

from spineseg.io import Volume


def ct_volume(shape: tuple[int, int, int] = (8, 32, 32), spacing=(2.0, 2.0, 3.0),
              origin=(0.0, 0.0, 0.0), seed: int = 0) -> Volume:
    """Air, a soft-tissue ellipse and a bright 'vertebral body' disk, with a little noise."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (h * 0.42)) ** 2 + ((xx - w / 2) / (w * 0.42)) ** 2 < 1
    disk = (yy - h * 0.62) ** 2 + (xx - w / 2) ** 2 < (h * 0.12) ** 2
    hu = np.where(body, 40.0, -1000.0) + np.where(disk, 650.0, 0.0)
    arr = np.repeat(hu[None], z, axis=0) + rng.normal(0, 15, shape)
    return Volume(arr.astype(np.int16), spacing, origin)
