"""Padding slices to the size every registered network accepts.

The networks refuse sides not divisible by ``2**depth`` rather than padding silently; callers
(inference, evaluation) pad explicitly with this one helper and crop the output back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, divisor: int,
                    value: float) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (..., H, W) on all sides to multiples of ``divisor``; return the (top, left) offset.

    Padding is split evenly between the two sides so the anatomy stays centred; ``value`` is
    normally the normalised intensity of air.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
    return x, (ph // 2, pw // 2)
