"""Padding slices to the size every registered network accepts.

The networks refuse sides not divisible by ``2**depth`` rather than padding silently; callers
(inference, evaluation) pad explicitly with this one helper and crop the output back.

A side is also padded up to ``min_size``, the patch side the network was trained on. A trained
network has only seen its anatomy inside at least that much context (a small field of view is
padded with air to the patch in training); fed a smaller input, the convolutions' zero padding
and the channel attention's global pooling reach the anatomy and the network under-segments a
narrow spine crop it segments well inside a patch. nnU-Net's predictor pads to the patch size
for the same reason.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def split_padding(size: int, divisor: int, min_size: int = 0) -> tuple[int, int]:
    """``(before, after)`` padding that takes ``size`` to at least ``min_size`` and then to a
    multiple of ``divisor``, split evenly (the odd pixel after) so the anatomy stays centred."""
    target = max(size, min_size)
    pad = target - size + (-target % divisor)
    return pad // 2, pad - pad // 2


def pad_to_multiple(x: torch.Tensor, divisor: int, value: float,
                    min_size: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (..., H, W) on all sides to at least ``min_size`` and to multiples of ``divisor``
    (:func:`split_padding`); return the (top, left) offset. ``value`` is normally the
    normalised intensity of air."""
    (top, bottom), (left, right) = (split_padding(n, divisor, min_size) for n in x.shape[-2:])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x, (top, left)


def training_patch_size(train_config: Any) -> int:
    """The in-plane patch side recorded in a training config (0 where there is none): the
    least side a network is run on."""
    size = train_config.get("patch_size") if isinstance(train_config, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0
