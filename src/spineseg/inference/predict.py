"""Batched axial-slice inference over a whole volume, streamed to bound memory.

Why not MONAI's ``SliceInferer``: it needs the whole volume as one float32 tensor and returns one
of the same size; here slices are normalised, padded and predicted a batch at a time and written
straight into a float16 array, so peak memory stays near one batch plus the output, and a real
progress bar can follow the slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from spineseg.data.preprocess import Preprocessing
from spineseg.inference.model_file import SegmentationModel


@dataclass(frozen=True)
class PredictConfig:
    """Knobs of slice inference (all of them change speed, none changes what is computed)."""

    batch_size: int = 8
    crop_to_body: bool = True
    body_threshold_hu: float = -500.0
    margin_vox: int = 8
    progress: bool = True


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


def _pad_to_multiple(x: torch.Tensor, divisor: int, value: float) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        # Symmetric-ish padding keeps the anatomy centred; the value is normalised air.
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
    return x, ph // 2, pw // 2


@torch.inference_mode()
def predict_probabilities(
    model: SegmentationModel,
    hu: np.ndarray,
    config: PredictConfig | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Foreground probability for every voxel of ``hu`` (Z, Y, X) as float16.

    ``hu`` must already be in the canonical orientation at the model's in-plane spacing.
    """
    cfg = config or PredictConfig()
    pre: Preprocessing = model.preprocessing
    dev = torch.device(device)
    out = np.zeros(hu.shape, dtype=np.float16)
    ys, xs = (body_bounding_box(hu, cfg.body_threshold_hu, cfg.margin_vox) if cfg.crop_to_body
              else (slice(0, hu.shape[1]), slice(0, hu.shape[2])))
    air = float(pre.normalize(np.array([pre.hu_min]))[0])
    use_amp = dev.type == "cuda"
    net = model.network
    bar = tqdm(total=hu.shape[0], desc="slices", unit="slice", disable=not cfg.progress,
               leave=False)
    try:
        for z0 in range(0, hu.shape[0], cfg.batch_size):
            z1 = min(z0 + cfg.batch_size, hu.shape[0])
            batch = torch.from_numpy(pre.normalize(hu[z0:z1, ys, xs]))[:, None]
            batch, oy, ox = _pad_to_multiple(batch, model.divisor, air)
            batch = batch.to(dev, non_blocking=True)
            if dev.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, enabled=use_amp):
                logits = net(batch)
            prob = torch.sigmoid(logits[:, 0].float())
            h, w = ys.stop - ys.start, xs.stop - xs.start
            out[z0:z1, ys, xs] = prob[:, oy:oy + h, ox:ox + w].cpu().numpy().astype(np.float16)
            bar.update(z1 - z0)
    finally:
        bar.close()
    return out
