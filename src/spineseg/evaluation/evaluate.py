"""Evaluate segmentations: saved masks against references, or a checkpoint on a dataset split.

Two entry points, one result type (:class:`~spineseg.evaluation.metrics.EvaluationResult`):

- :func:`evaluate_masks` pairs prediction and reference files by name and aligns each prediction
  to its reference **through physical space** (nearest-neighbour resampling), because masks of
  the same patient are often stored in different voxel orders (see the data README: a flipped
  anterior–posterior axis is common). Both are then put in LPS so that axis 0 is axial and
  "per slice" means per axial slice, as in the paper.
- :func:`evaluate_model` runs a trained network slice by slice on a prepared dataset split.

Checkpoints are read with :func:`spineseg.serialization.load_checkpoint`, the one loader the
trainer and evaluation share; nothing here imports :mod:`spineseg.training`. Evaluation does not
use :mod:`spineseg.inference` on purpose: it measures the network alone on prepared slices,
without the product pipeline's post-processing, but runs it on at least its training patch as
the pipeline does (:mod:`spineseg.models.padding`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn
from tqdm.auto import tqdm

from spineseg.data.manifest import case_dir, read_manifest
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import DataError, GeometryError, InputError, ModelError
from spineseg.evaluation.metrics import EvaluationResult, VolumeMetrics, volume_metrics
from spineseg.io import Volume, read_image, resample_to
from spineseg.models.padding import pad_to_multiple, training_patch_size

MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- masks on disk


def _case_name(path: Path) -> str | None:
    name = path.name
    for suffix in MASK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _mask_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        case = _case_name(p)
        if case is None or not p.is_file():
            continue
        if case in files:
            raise InputError(f"{folder}: two mask files for case {case!r} "
                             f"({files[case].name}, {p.name})")
        files[case] = p
    return files


def _to_lps(volume: Volume) -> Volume:
    """Reorient (axis permutation/flip only, no interpolation) so array axis 0 runs along z."""
    return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), "LPS"), volume.meta)


def align_mask(pred: Volume, ref: Volume) -> Volume:
    """``pred`` on ``ref``'s grid via physical space (nearest neighbour; outside = background)."""
    if pred.same_grid(ref):
        return pred
    return resample_to(pred, ref, interpolation="nearest")


def binary_mask(volume: Volume, name: str = "") -> np.ndarray:
    """uint8 spine mask: finite nonzero voxels. NaN/inf (a float mask from a broken export or a
    resampling that filled outside the scan with NaN) is not spine, and is logged as a warning:
    ``NaN != 0`` would otherwise count every such voxel as foreground."""
    arr = np.asarray(volume.array)
    if not np.issubdtype(arr.dtype, np.floating):
        return (arr != 0).astype(np.uint8)
    finite = np.isfinite(arr)
    bad = int(arr.size - np.count_nonzero(finite))
    if bad:
        where = name or volume.meta.get("source", "") or "mask"
        log.warning("%s: %d voxels are NaN or infinite; counted as background", where, bad)
    return (finite & (arr != 0)).astype(np.uint8)


def evaluate_mask_pair(pred: Volume, ref: Volume, case: str = "") -> VolumeMetrics:
    """Metrics of one prediction against its reference (finite nonzero = spine in both)."""
    aligned = align_mask(pred.with_array(binary_mask(pred, pred.meta.get("source", case))), ref)
    ref_lps = _to_lps(ref.with_array(binary_mask(ref, ref.meta.get("source", case))))
    pred_lps = _to_lps(aligned.with_array(np.asarray(aligned.array).astype(np.uint8)))
    return volume_metrics(pred_lps.array, ref_lps.array, ref_lps.spacing, case)


def evaluate_masks(pred_dir: str | os.PathLike[str],
                   ref_dir: str | os.PathLike[str]) -> EvaluationResult:
    """Evaluate every reference mask in ``ref_dir`` against the same-named file in ``pred_dir``.

    Names are matched without extension (``case1.nii.gz`` pairs with ``case1.nrrd``). A reference
    without a prediction is an :class:`InputError` (a missing output must not silently improve
    the mean); predictions without a reference are listed in ``source`` and otherwise ignored.
    """
    preds, refs = _mask_files(Path(pred_dir)), _mask_files(Path(ref_dir))
    if not refs:
        raise InputError(f"{ref_dir}: no reference masks ({', '.join(MASK_SUFFIXES)})")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise InputError(f"{pred_dir}: no prediction for reference case(s) {', '.join(missing)}")
    cases = []
    for c in sorted(refs):
        try:
            cases.append(evaluate_mask_pair(read_image(preds[c]), read_image(refs[c]), c))
        except GeometryError as exc:
            if str(preds[c]) in str(exc) or str(refs[c]) in str(exc):
                raise
            # resample_to does not know the files; a user needs to know which pair misfits.
            raise GeometryError(f"{preds[c]} vs {refs[c]}: {exc}") from exc
    return EvaluationResult.from_cases(cases, {
        "mode": "masks",
        "predictions": str(pred_dir),
        "references": str(ref_dir),
        "unmatched_predictions": sorted(set(preds) - set(refs)),
    })


# --------------------------------------------------------------------------- model on a dataset


def iter_slice_logits(
    model: nn.Module,
    hu: np.ndarray,
    preprocessing: Preprocessing,
    *,
    divisor: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    spacing_z: float = 0.0,
    min_size: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first slice index, logits (B, C, H, W))`` for batches of whole axial slices.

    ``hu`` is ``(Z, H, W)`` in HU (a memory map is fine: only one batch is read at a time).
    Slices are padded with normalised air to multiples of ``divisor`` (= 2**depth, which the
    networks require), and to at least ``min_size`` (the training patch side: see
    :mod:`spineseg.models.padding`), and the logits cropped back, so every pixel keeps its
    position. Logits stay
    on ``device`` in float32. The caller sets ``model.eval()`` and the grad mode.
    ``spacing_z`` (mm between slices) is needed only by a 2.5-D model's slice context.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device)
    air = float(preprocessing.normalize(np.array([preprocessing.hu_min]))[0])
    cuda = dev.type == "cuda"
    for start in range(0, hu.shape[0], batch_size):
        zs = slice(start, min(start + batch_size, hu.shape[0]))
        x = torch.from_numpy(preprocessing.network_input(hu, zs, spacing_z))
        x = x.to(dev, non_blocking=cuda)
        x, (top, left) = pad_to_multiple(x, divisor, air, min_size)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, enabled=cuda):
            logits = model(x)
        h, w = hu.shape[1:]
        yield start, logits[..., top:top + h, left:left + w].float()


def predict_volume(model: nn.Module, hu: np.ndarray, preprocessing: Preprocessing, *,
                   divisor: int, batch_size: int = 16, device: str | torch.device = "cpu",
                   threshold: float = 0.5, spacing_z: float = 0.0,
                   min_size: int = 0) -> np.ndarray:
    """Binary (uint8) spine mask of a ``(Z, H, W)`` HU volume, slice by slice; ``min_size``
    as in :func:`iter_slice_logits`."""
    was_training = model.training
    model.eval()
    out = np.zeros(hu.shape, dtype=np.uint8)
    logit_threshold = float(np.log(threshold / (1.0 - threshold)))
    try:
        with torch.inference_mode():
            for start, logits in iter_slice_logits(model, hu, preprocessing, divisor=divisor,
                                                   batch_size=batch_size, device=device,
                                                   spacing_z=spacing_z, min_size=min_size):
                out[start:start + logits.shape[0]] = (
                    (logits[:, 0] > logit_threshold).to(torch.uint8).cpu().numpy())
    finally:
        model.train(was_training)
    return out


def evaluate_network(
    model: nn.Module,
    dataset: str | os.PathLike[str],
    preprocessing: Preprocessing,
    *,
    divisor: int,
    split: str = "test",
    kinds: Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    min_size: int = 0,
) -> list[VolumeMetrics]:
    """Predict and score every case of ``split`` of a prepared dataset with ``model``;
    ``min_size`` as in :func:`iter_slice_logits`."""
    root = Path(dataset)
    manifest = read_manifest(root)
    wanted = manifest.preprocessing_obj
    if not np.allclose(wanted.spacing_xy, preprocessing.spacing_xy):
        raise DataError(f"{root}: prepared at {wanted.spacing_xy} mm in-plane, but the model "
                        f"expects {preprocessing.spacing_xy} mm; prepare the dataset with the "
                        "model's preprocessing")
    cases = manifest.case_ids(split, tuple(kinds) if kinds else None)
    if not cases:
        raise DataError(f"{root}: split {split!r} has no cases")
    results: list[VolumeMetrics] = []
    for cid in tqdm(cases, desc=f"evaluate {split}", unit="case", disable=not progress):
        d = case_dir(root, cid)
        try:
            hu = np.load(d / "image.npy", mmap_mode="r")
            ref = np.load(d / "mask.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{d}: cannot open the case arrays ({exc})") from exc
        spacing = tuple(float(s) for s in manifest.cases[cid].spacing)
        pred = predict_volume(model, hu, preprocessing, divisor=divisor,
                              batch_size=batch_size, device=device, spacing_z=spacing[2],
                              min_size=min_size)
        results.append(volume_metrics(pred, np.asarray(ref), spacing, cid))
    return results


def evaluate_model(
    checkpoint: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    split: str = "test",
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    kinds: Sequence[str] | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate a training checkpoint (``best.pt``/``last.pt``) on a split of a prepared dataset."""
    # Imported here so that mask evaluation works without torch's model code loaded.
    from spineseg.models import build_model
    from spineseg.serialization import load_checkpoint

    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    try:
        model = build_model(str(ckpt["model_name"]), **dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ModelError(f"{checkpoint}: weights do not match the recorded network ({exc})") \
            from exc
    model.to(device)
    preprocessing = Preprocessing.from_dict(ckpt["preprocessing"])
    divisor = 2 ** int(ckpt["model_config"].get("depth", 0))
    min_size = training_patch_size(ckpt.get("train_config"))
    cases = evaluate_network(model, dataset, preprocessing, divisor=divisor, split=split,
                             kinds=kinds, batch_size=batch_size, device=device, progress=progress,
                             min_size=min_size)
    return EvaluationResult.from_cases(cases, {
        "mode": "model",
        "checkpoint": str(checkpoint),
        "model": str(ckpt["model_name"]),
        "epoch": int(ckpt.get("epoch", -1)),
        "dataset": str(dataset),
        "split": split,
        "min_input": min_size,
    })
