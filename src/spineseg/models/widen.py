"""Widen a 2-D network's weights to more input channels (2-D → 2.5-D fine-tuning).

Why: a 2.5-D model (the slice plus neighbouring planes as channels) can start from a trained 2-D
model instead of from scratch. Every convolution that reads the input gets the old kernel on the
slice's own channel and zeros on the new ones, so the widened network computes exactly what the
2-D one did until training teaches it to use the context — the way I3D inflates 2-D filters.
"""

from __future__ import annotations

import torch


def widen_input_channels(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                         centre: int) -> dict[str, torch.Tensor]:
    """``state`` with each 1-input-channel kernel that ``target`` has wider put at ``centre``.

    Only 4-D convolution weights whose shapes differ from ``target``'s in dimension 1 alone, and
    that read one channel, are widened; any other mismatch is left for ``load_state_dict`` to
    report.
    """
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if (want is None or value.ndim != 4 or want.ndim != 4 or value.shape[1] != 1
                or want.shape[1] <= centre or value.shape[0] != want.shape[0]
                or value.shape[2:] != want.shape[2:]):
            continue
        wide = torch.zeros(want.shape, dtype=value.dtype)
        wide[:, centre] = value[:, 0]
        out[key] = wide
    return out
