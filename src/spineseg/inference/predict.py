"""Batched axial-slice inference over a whole volume, streamed to bound memory.

Why not MONAI's ``SliceInferer``: it needs the whole volume as one float32 tensor and returns one
of the same size; here slices are normalised, padded and predicted a batch at a time and written
straight into a float16 array, so peak memory stays near one batch plus the output, and a real
progress bar can follow the slices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError, ModelError
from spineseg.inference.model_file import SegmentationModel
from spineseg.inference.optimize import OptimizeConfig, optimize_network
from spineseg.models.padding import split_padding
from spineseg.models.precision import native_cpu_bfloat16


@dataclass(frozen=True)
class PredictConfig:
    """Knobs of slice inference: all but ``mirror`` and ``precision`` change speed only.

    ``mirror`` is test-time augmentation as nnU-Net does it, restricted to the one symmetry axial
    anatomy has: the probability is the mean of the network on the slice and on its left-right
    mirror image (flipped back). It costs a second forward pass per slice; the output becomes
    left-right equivariant (a mirrored scan gives the mirrored probabilities, exactly so when the
    padding to the network's divisor is symmetric).

    ``fold_batchnorm`` and ``channels_last`` rewrite the network for inference
    (:mod:`spineseg.inference.optimize`; probabilities agree to ~1e-6). ``skip_boneless_slices``
    leaves the probability of a slice at 0 without running the network when no voxel of it is
    denser than ``bone_hu``; it is off by default because on real torso CTs nearly every slice
    holds bone (docs/performance.md), so it rarely pays, and it is the one knob that could, on
    an extreme scan, change the output.

    ``precision`` is the arithmetic of the network's convolutions (:func:`resolve_precision`):
    ``"auto"`` takes bfloat16 on a CPU that computes it natively (AVX-512 BF16 or AMX, where it
    halves the network's time) and on CUDA float16, float32 elsewhere. Reduced precision moves
    probabilities by up to ~0.02, which flips a few voxels at the threshold; the real cases'
    Dice stays within 0.003 of float32 (docs/performance.md).

    ``pad_to_patch`` runs the network on no less than the patch side it was trained on, air
    around a smaller input (:mod:`spineseg.models.padding`): a spine-protocol crop narrower than
    the patch is then read in the context the network learnt it in. Off, the input is only padded
    to the divisor, as before; it is a switch for comparisons, not for use.
    """

    batch_size: int = 8
    crop_to_body: bool = True
    body_threshold_hu: float = -500.0
    margin_vox: int = 8
    progress: bool = True
    fold_batchnorm: bool = True
    channels_last: bool = True
    skip_boneless_slices: bool = False
    bone_hu: float = 150.0
    mirror: bool = False
    precision: str = "auto"
    pad_to_patch: bool = True


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype the network computes in for ``precision`` on ``device`` (see PredictConfig)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    if precision == "auto":
        if dev.type == "cuda":
            return torch.float16
        return torch.bfloat16 if dev.type == "cpu" and native_cpu_bfloat16() else torch.float32
    if precision == "float16" and dev.type == "cpu":
        raise InputError("float16 inference needs a CUDA device; on a CPU use bfloat16 or "
                         "float32")
    return getattr(torch, precision)


def body_bounding_box(hu: np.ndarray, threshold: float, margin: int) -> tuple[slice, slice]:
    """In-plane (y, x) box holding everything denser than air over all slices, plus a margin.

    Computing the network only there is exact up to the padding context at the border and saves
    30–60% of the pixels of a typical 512×512 field of view.
    """
    above = hu > threshold
    ys = np.flatnonzero(above.any(axis=(0, 2)))
    xs = np.flatnonzero(above.any(axis=(0, 1)))
    if ys.size == 0 or xs.size == 0:
        return slice(0, hu.shape[1]), slice(0, hu.shape[2])
    y0, y1 = max(int(ys[0]) - margin, 0), min(int(ys[-1]) + 1 + margin, hu.shape[1])
    x0, x1 = max(int(xs[0]) - margin, 0), min(int(xs[-1]) + 1 + margin, hu.shape[2])
    return slice(y0, y1), slice(x0, x1)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (``None``: leave torch's choice),
    restoring the previous count afterwards, since the setting is process-wide."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _grid_box(lo: int, hi: int, frame: slice, divisor: int) -> slice:
    """``[lo, hi)`` widened to whole cells of the ``divisor`` grid that starts at ``frame.start``.

    The whole-slice pass pads the body box to a multiple of the divisor (``frame``); a region
    cut on that grid meets the network's pooling windows exactly where the whole slice does,
    so its probabilities differ only by the context beyond the region, not by a shifted grid.
    """
    f0 = frame.start
    return slice(f0 + (lo - f0) // divisor * divisor, f0 - (-(hi - f0) // divisor) * divisor)


def _at_least(box: slice, size: int, divisor: int) -> slice:
    """``box`` (a multiple of ``divisor`` long) grown evenly by whole grid cells to at least
    ``size``."""
    cells = max(0, -(-(size - (box.stop - box.start)) // divisor))
    before = cells // 2 * divisor
    return slice(box.start - before, box.stop + cells * divisor - before)


def _padded_frame(box: slice, divisor: int) -> slice:
    """The body box padded to a multiple of ``divisor`` as the network's input is padded."""
    before, after = split_padding(box.stop - box.start, divisor)
    return slice(box.start - before, box.stop + after)


def _clip_boxes(boxes: np.ndarray, shape: tuple[int, ...], ys: slice, xs: slice) -> np.ndarray:
    """Per-slice boxes intersected with the body box; a slice whose box ends up empty is skipped."""
    b = np.asarray(boxes, dtype=np.int64)
    if b.shape != (shape[0], 4):
        raise InputError(f"boxes must have one (y0, y1, x0, x1) row per slice, shape "
                         f"({shape[0]}, 4), got {b.shape}")
    out = np.stack([np.maximum(b[:, 0], ys.start), np.minimum(b[:, 1], ys.stop),
                    np.maximum(b[:, 2], xs.start), np.minimum(b[:, 3], xs.stop)], axis=1)
    empty = (out[:, 1] <= out[:, 0]) | (out[:, 3] <= out[:, 2])
    out[empty] = (ys.start, ys.start, xs.start, xs.start)
    return out


@torch.inference_mode()
def predict_probabilities(
    model: SegmentationModel,
    hu: np.ndarray,
    config: PredictConfig | None = None,
    device: str | torch.device = "cpu",
    spacing_z: float = 0.0,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Foreground probability for every voxel of ``hu`` (Z, Y, X) as float16.

    ``hu`` must already be in the canonical orientation at the model's in-plane spacing;
    ``spacing_z`` (mm between slices) is needed by 2.5-D models for their slice context.
    ``boxes`` (Z, 4) restricts the network to one in-plane box ``y0, y1, x0, x1`` per slice
    (an empty box skips the slice): the probability outside a slice's box is exactly 0. Slices
    are batched with the box holding all of the batch's boxes, then cut back to each one.
    """
    cfg = config or PredictConfig()
    if cfg.batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {cfg.batch_size}")
    pre: Preprocessing = model.preprocessing
    wanted = getattr(getattr(model.network, "config", None), "in_channels", pre.channels)
    if wanted != pre.channels:  # a hand-assembled SegmentationModel; files are checked on load
        raise ModelError(f"{model.source or 'model'}: the network reads {wanted} input "
                         f"channel(s) but its preprocessing feeds {pre.channels}")
    dev = torch.device(device)
    out = np.zeros(hu.shape, dtype=np.float16)
    ys, xs = (body_bounding_box(hu, cfg.body_threshold_hu, cfg.margin_vox) if cfg.crop_to_body
              else (slice(0, hu.shape[1]), slice(0, hu.shape[2])))
    full = np.tile([ys.start, ys.stop, xs.start, xs.stop], (hu.shape[0], 1))
    per_slice = full if boxes is None else _clip_boxes(boxes, hu.shape, ys, xs)
    air = float(pre.normalize(np.array([pre.hu_min]))[0])
    dtype = resolve_precision(cfg.precision, dev)
    use_amp = dtype != torch.float32
    # A deep copy (milliseconds for these networks), so the caller's model is never rewritten.
    net = optimize_network(model.network, OptimizeConfig(
        fold_batchnorm=cfg.fold_batchnorm, channels_last=cfg.channels_last or dev.type == "cuda"))
    channels_last = cfg.channels_last or dev.type == "cuda"
    todo = np.flatnonzero(per_slice[:, 1] > per_slice[:, 0])
    if cfg.skip_boneless_slices:
        bone = (hu[:, ys, xs] > cfg.bone_hu).any(axis=(1, 2))
        todo = todo[bone[todo]]
    bar = tqdm(total=hu.shape[0], desc="slices", unit="slice", disable=not cfg.progress,
               leave=False)
    bar.update(hu.shape[0] - todo.size)
    d = model.divisor
    least = model.min_input if cfg.pad_to_patch else 0
    frame_y, frame_x = _padded_frame(ys, d), _padded_frame(xs, d)
    try:
        for i0 in range(0, todo.size, cfg.batch_size):
            zs = todo[i0:i0 + cfg.batch_size]
            b = per_slice[zs]
            # The box holding the batch's boxes, on the whole-slice pass's divisor grid; CT is
            # read inside the body box, air fills the rest (as the whole-slice pass pads).
            gys = _at_least(_grid_box(int(b[:, 0].min()), int(b[:, 1].max()), frame_y, d),
                            least, d)
            gxs = _at_least(_grid_box(int(b[:, 2].min()), int(b[:, 3].max()), frame_x, d),
                            least, d)
            rys = slice(max(gys.start, ys.start), min(gys.stop, ys.stop))
            rxs = slice(max(gxs.start, xs.start), min(gxs.stop, xs.stop))
            # Consecutive indices (always, unless slices are skipped) are a view, not a copy.
            zsel = slice(int(zs[0]), int(zs[-1]) + 1) if zs[-1] - zs[0] + 1 == zs.size else zs
            batch = torch.from_numpy(pre.network_input(hu, zsel, spacing_z, rys, rxs))
            pads = (rxs.start - gxs.start, gxs.stop - rxs.stop,
                    rys.start - gys.start, gys.stop - rys.stop)
            if any(pads):
                batch = F.pad(batch, pads, value=air)
            batch = batch.to(dev, non_blocking=True)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=dtype, enabled=use_amp):
                prob = torch.sigmoid(net(batch)[:, 0].float())
                if cfg.mirror:  # canonical LPS: the last axis runs patient right -> left
                    mirrored = torch.sigmoid(net(batch.flip(-1))[:, 0].float()).flip(-1)
                    prob = 0.5 * (prob + mirrored)
            crop = prob.cpu().numpy().astype(np.float16)
            for k, z in enumerate(zs):
                y0, y1, x0, x1 = (int(v) for v in per_slice[z])
                out[int(z), y0:y1, x0:x1] = crop[k, y0 - gys.start:y1 - gys.start,
                                                 x0 - gxs.start:x1 - gxs.start]
            bar.update(zs.size)
    finally:
        bar.close()
    return out
