"""Segmentation metrics on binary spine masks, in millimetres with the real voxel spacing.

Three views of the same predictions, because they answer different questions:

1. **Paper-style DSC and IoU, pooled** — the seed paper defines DSC = 2|G∩P| / (|G| + |P|) and
   IoU = |G∩P| / |G∪P| "over the test set" without saying how slices are combined. We take the
   literal reading: G and P are the sets of all spine pixels of *all* test slices of *all* test
   patients, i.e. |G∩P|, |G| and |P| are summed over every slice before dividing. Large slices
   therefore weigh more than small ones and empty slices contribute nothing.
2. **Mean per-slice Dice** over the slices that contain spine in G or in P (slices empty in both
   are skipped: they would add a perfect 1 for every background slice and flatter the model).
3. **Per-volume metrics** (one row per patient): Dice, IoU, 95 % Hausdorff distance and
   symmetric average surface distance in mm (anisotropic spacing), sensitivity and precision.

Empty-mask conventions (documented in the report as well):
- Dice and IoU of an empty prediction against an empty reference are 1 (nothing to find, nothing
  claimed); with exactly one of them empty they are 0.
- Surface distances are 0 when both are empty and NaN when exactly one is empty (a distance to
  nothing is undefined; MONAI would return inf). NaNs are excluded from means and counted.
- Sensitivity is NaN when the reference is empty, precision NaN when the prediction is empty.

The computations are MONAI's (``monai.metrics``); only the pooling of counts over slices, which
MONAI does not offer (its ``DiceMetric`` averages per item), is written here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)

from spineseg.errors import GeometryError

# Slices per MONAI call for the per-slice Dice: bounds the float copy MONAI makes to a few
# hundred MB even for 512×512 slices.
_SLICE_CHUNK = 64


@dataclass(frozen=True)
class VolumeMetrics:
    """Metrics of one volume (patient). Distances in mm; NaN where undefined (see module doc)."""

    case: str
    dice: float
    iou: float
    hd95_mm: float
    asd_mm: float
    sensitivity: float
    precision: float
    ref_voxels: int
    pred_voxels: int
    intersection_voxels: int
    ref_volume_ml: float
    pred_volume_ml: float
    n_slices: int
    n_spine_slices: int
    mean_slice_dice: float
    # Per-slice Dice of the slices with spine in G or P, kept for pooling over cases.
    slice_dice: tuple[float, ...] = field(default=(), repr=False)

    def row(self) -> dict[str, Any]:
        """One CSV row (without the per-slice list)."""
        d = asdict(self)
        d.pop("slice_dice")
        return d


@dataclass(frozen=True)
class PooledMetrics:
    """Metrics over a whole test set (see module doc for the exact definitions)."""

    dsc: float  # paper-style DSC, counts pooled over all slices of all cases
    iou: float  # paper-style IoU, pooled the same way
    mean_slice_dice: float  # mean Dice over slices with spine in G or P
    n_cases: int
    n_slices: int
    n_spine_slices: int
    mean: dict[str, float]  # mean of each per-volume metric (NaNs excluded)
    std: dict[str, float]
    n_undefined: dict[str, int]  # how many volumes had NaN for each metric

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PER_VOLUME_FIELDS: tuple[str, ...] = (
    "dice", "iou", "hd95_mm", "asd_mm", "sensitivity", "precision",
)


def paper_dsc(intersection: int, ref: int, pred: int) -> float:
    """DSC = 2|G∩P| / (|G| + |P|); 1 when both are empty."""
    total = ref + pred
    return 1.0 if total == 0 else 2.0 * intersection / total


def paper_iou(intersection: int, ref: int, pred: int) -> float:
    """IoU = |G∩P| / |G∪P|; 1 when both are empty."""
    union = ref + pred - intersection
    return 1.0 if union == 0 else intersection / union


def _as_batch(mask: np.ndarray) -> torch.Tensor:
    """(Z, Y, X) bool -> (1, 1, Z, Y, X) float tensor, MONAI's one-hot-of-one-class layout.

    Float, not bool: MONAI's ``get_confusion_matrix`` miscounts boolean tensors (it subtracts).
    """
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a one-voxel margin.

    Every reported metric is invariant to this (only true negatives change, and none is
    reported); it keeps MONAI's float copies small for 512×512×N scans.
    """
    union = pred | ref
    if not union.any():
        return pred[:0, :0, :0], ref[:0, :0, :0]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
    return pred[tuple(box)], ref[tuple(box)]


def _validate(pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float]) -> None:
    if pred.shape != ref.shape or pred.ndim != 3:
        raise GeometryError(
            f"prediction {pred.shape} and reference {ref.shape} must be 3D arrays on the same grid"
        )
    if len(spacing_xyz) != 3 or any(not (s > 0 and math.isfinite(s)) for s in spacing_xyz):
        raise GeometryError(f"invalid voxel spacing {tuple(spacing_xyz)}")


def slice_dice(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Dice of every axial slice (axis 0) with spine in ``ref`` or ``pred``, in slice order."""
    spine = np.flatnonzero(ref.any(axis=(1, 2)) | pred.any(axis=(1, 2)))
    out: list[np.ndarray] = []
    for start in range(0, len(spine), _SLICE_CHUNK):
        idx = spine[start:start + _SLICE_CHUNK]
        p = torch.from_numpy(np.ascontiguousarray(pred[idx], dtype=np.float32))[:, None]
        g = torch.from_numpy(np.ascontiguousarray(ref[idx], dtype=np.float32))[:, None]
        out.append(compute_dice(p, g, include_background=True, ignore_empty=False)[:, 0].numpy())
    return np.concatenate(out).astype(float) if out else np.zeros(0, dtype=float)


def volume_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float], case: str = ""
) -> VolumeMetrics:
    """All per-volume metrics of a binary prediction against a binary reference.

    ``pred`` and ``ref`` are ``(z, y, x)`` arrays on the same grid (nonzero = spine) and
    ``spacing_xyz`` the voxel size in ``(x, y, z)`` mm, the ``Volume`` convention; it is reversed
    here because MONAI takes one spacing per array axis.
    """
    _validate(pred, ref, spacing_xyz)
    pred = np.asarray(pred) != 0
    ref = np.asarray(ref) != 0
    spacing_zyx = [float(s) for s in reversed(tuple(spacing_xyz))]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0

    per_slice = slice_dice(pred, ref)
    n_slices = int(pred.shape[0])
    pred, ref = _crop_to_union(pred, ref)
    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    p, g = _as_batch(pred), _as_batch(ref)
    cm = get_confusion_matrix(p, g, include_background=True)  # (1, 1, 4): tp, fp, tn, fn
    tp = int(cm[0, 0, 0])

    if n_ref == 0 and n_pred == 0:
        dice = iou = 1.0
        hd95 = asd = 0.0
    else:
        dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
        iou = float(compute_iou(p, g, include_background=True, ignore_empty=False)[0, 0])
        if n_ref == 0 or n_pred == 0:
            hd95 = asd = math.nan
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI warns about its own internals here
                hd95 = float(compute_hausdorff_distance(
                    p, g, include_background=True, percentile=95, spacing=spacing_zyx)[0, 0])
                asd = float(compute_average_surface_distance(
                    p, g, include_background=True, symmetric=True, spacing=spacing_zyx)[0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 -> NaN is the documented convention
        sens = float(compute_confusion_matrix_metric("sensitivity", cm)[0, 0])
        prec = float(compute_confusion_matrix_metric("precision", cm)[0, 0])
    if n_ref == 0:
        sens = math.nan
    if n_pred == 0:
        prec = math.nan
    return VolumeMetrics(
        case=case,
        dice=dice,
        iou=iou,
        hd95_mm=hd95,
        asd_mm=asd,
        sensitivity=sens,
        precision=prec,
        ref_voxels=n_ref,
        pred_voxels=n_pred,
        intersection_voxels=tp,
        ref_volume_ml=n_ref * voxel_ml,
        pred_volume_ml=n_pred * voxel_ml,
        n_slices=n_slices,
        n_spine_slices=len(per_slice),
        mean_slice_dice=float(per_slice.mean()) if len(per_slice) else math.nan,
        slice_dice=tuple(float(v) for v in per_slice),
    )


def pool(cases: Sequence[VolumeMetrics]) -> PooledMetrics:
    """Combine per-volume results into the test-set numbers (see module doc)."""
    inter = sum(c.intersection_voxels for c in cases)
    n_ref = sum(c.ref_voxels for c in cases)
    n_pred = sum(c.pred_voxels for c in cases)
    all_slices = [v for c in cases for v in c.slice_dice]
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    undefined: dict[str, int] = {}
    for name in PER_VOLUME_FIELDS:
        values = np.array([getattr(c, name) for c in cases], dtype=float)
        finite = values[np.isfinite(values)]
        undefined[name] = int(len(values) - len(finite))
        mean[name] = float(finite.mean()) if len(finite) else math.nan
        std[name] = float(finite.std()) if len(finite) else math.nan
    return PooledMetrics(
        dsc=paper_dsc(inter, n_ref, n_pred),
        iou=paper_iou(inter, n_ref, n_pred),
        mean_slice_dice=float(np.mean(all_slices)) if all_slices else math.nan,
        n_cases=len(cases),
        n_slices=sum(c.n_slices for c in cases),
        n_spine_slices=len(all_slices),
        mean=mean,
        std=std,
        n_undefined=undefined,
    )


@dataclass(frozen=True)
class EvaluationResult:
    """Per-case metrics plus the pooled test-set summary and where they came from."""

    cases: tuple[VolumeMetrics, ...]
    pooled: PooledMetrics
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cases(
        cls, cases: Sequence[VolumeMetrics], source: dict[str, Any] | None = None
    ) -> EvaluationResult:
        return cls(tuple(cases), pool(cases), dict(source or {}))
