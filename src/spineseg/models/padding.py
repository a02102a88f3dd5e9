"""Padding slices to the size every registered network accepts.

The networks refuse sides not divisible by ``2**depth`` rather than padding silently; callers
(inference, evaluation) pad explicitly with this one helper and crop the output back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_padding(size: int, divisor: int) -> tuple[int, int]:
    """``(before, after)`` padding that takes ``size`` to a multiple of ``divisor``, split evenly
    (the odd pixel after) so the anatomy stays centred."""
    pad = -size % divisor
    return pad // 2, pad - pad // 2


def pad_to_multiple(x: torch.Tensor, divisor: int,
                    value: float) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (..., H, W) on all sides to multiples of ``divisor`` (:func:`split_padding`); return
    the (top, left) offset. ``value`` is normally the normalised intensity of air."""
    (top, bottom), (left, right) = (split_padding(n, divisor) for n in x.shape[-2:])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x, (top, left)
