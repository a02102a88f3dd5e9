"""Facts about a volume for ``spineseg info``: grid, intensities and whether it looks like CT.

The CT check exists because the model expects Hounsfield units: an MR image, a label map or a CT
exported without its rescale intercept would be segmented into nonsense without any error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from spineseg.io.volume import Volume

# Percentiles are taken on at most this many evenly strided voxels: exact enough for a summary,
# and no full-size float copy of a large scan.
_PERCENTILE_SAMPLE = 1 << 23
_AIR_HU = (-1100.0, -900.0)
_PADDING_BELOW_HU = -1500.0  # scanner fill outside the reconstruction circle (-2048, -3024)
_MIN_AIR_FRACTION = 1e-3
# A spine-protocol CT reconstructed on a small field of view holds no air, only tissue: it is
# still HU if fat, soft tissue and bone are where CT puts them (docs/anatomy.md). A rescaled or
# z-scored image has no such three-peak layout.
_FAT_HU = (-190.0, -30.0)
_SOFT_HU = (-200.0, 250.0)
_MIN_FAT_FRACTION = 0.02
_MIN_SOFT_FRACTION = 0.5
_MIN_BONE_P99_HU = 300.0
_CT_MAX_HU = 4000.0  # 12-bit CT tops out at 3071; metal/contrast may exceed it a little


@dataclass(frozen=True)
class ImageInfo:
    """What ``spineseg info`` reports. Statistics are over finite voxels only."""

    source: str
    format: str
    shape: tuple[int, int, int]  # x, y, z
    spacing: tuple[float, float, float]
    orientation: str
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    dtype: str
    min: float
    max: float
    mean: float
    p1: float
    p99: float
    nonfinite: int
    looks_like_ct: bool
    ct_reason: str
    series_uid: str | None = None
    modality: str | None = None
    series_note: str | None = None
    #: The physical frame of ``origin`` and ``direction``: x right→left, y anterior→posterior,
    #: z inferior→superior (DICOM's and ITK's; NIfTI's RAS has x and y negated).
    space: str = "LPS"

    def to_dict(self) -> dict[str, object]:
        """JSON-able: tuples become lists, NaN statistics (no finite voxel) become None."""
        out: dict[str, object] = {}
        for key, value in asdict(self).items():
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out[key] = value
        return out


def strided_sample(values: np.ndarray, limit: int = _PERCENTILE_SAMPLE) -> np.ndarray:
    """At most about ``limit`` evenly strided voxels of ``values`` (a view where possible)."""
    flat = values.reshape(-1)
    return flat[::max(1, flat.size // limit)]


def ct_verdict(values: np.ndarray) -> tuple[bool, str]:
    """Does this look like CT in HU? ``values`` are finite voxels (any shape)."""
    v = values.ravel()
    if v.size == 0:
        return False, "no finite voxels"
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return False, f"constant image (all {lo:g})"
    if lo >= 0:
        return False, (f"all values >= 0 (range {lo:g}..{hi:g}), no air at -1000 HU: MR, a label "
                       "map, or CT stored without its rescale intercept")
    body = v[v > _PADDING_BELOW_HU]
    if body.size == 0:
        return False, f"all values below {_PADDING_BELOW_HU:g}"
    air = _fraction(body, _AIR_HU)
    p1, p99 = (float(x) for x in np.percentile(body, [1, 99]))
    if p99 > _CT_MAX_HU:
        return False, f"99th percentile {p99:g} is beyond the CT range (-1024..3071 HU)"
    if air >= _MIN_AIR_FRACTION:
        return True, (f"air near -1000 HU in {air:.1%} of voxels, 1st-99th percentiles "
                      f"{p1:g}..{p99:g} within the CT range")
    fat = _fraction(body, _FAT_HU)
    soft = _fraction(body, _SOFT_HU)
    if fat >= _MIN_FAT_FRACTION and soft >= _MIN_SOFT_FRACTION and p99 >= _MIN_BONE_P99_HU:
        return True, (f"no air in the field of view (a tissue-only crop, as in spine-protocol "
                      f"CT), but fat in {fat:.0%} and soft tissue in {soft:.0%} of voxels, "
                      f"99th percentile {p99:g} HU (bone)")
    return False, (f"no air near -1000 HU and no fat/soft-tissue/bone layout (fat {fat:.1%}, "
                   f"soft tissue {soft:.0%}, 1st-99th percentiles {p1:g}..{p99:g}): not HU")


def _fraction(values: np.ndarray, hu_range: tuple[float, float]) -> float:
    return float(np.count_nonzero((values >= hu_range[0]) & (values <= hu_range[1]))) / values.size


def describe(volume: Volume) -> ImageInfo:
    """Summarise ``volume``: geometry, intensity statistics, non-finite count and CT verdict."""
    arr = volume.array
    finite_mask = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else None
    finite = arr[finite_mask] if finite_mask is not None else arr.ravel()
    nonfinite = int(arr.size - finite.size)
    sample = strided_sample(finite).astype(np.float64)
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        mean = float(finite.mean(dtype=np.float64))
        p1, p99 = (float(x) for x in np.percentile(sample, [1, 99]))
    else:
        lo = hi = mean = p1 = p99 = float("nan")
    looks_ct, reason = ct_verdict(sample)
    meta = volume.meta
    if meta.get("modality") and meta["modality"] != "CT":
        looks_ct, reason = False, f"DICOM modality is {meta['modality']}, not CT"
    return ImageInfo(
        source=meta.get("source", ""), format=meta.get("format", ""),
        shape=volume.shape_xyz,
        spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
        orientation=volume.orientation,
        origin=tuple(float(o) for o in volume.origin),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in volume.direction),
        dtype=str(arr.dtype), min=lo, max=hi, mean=mean, p1=p1, p99=p99, nonfinite=nonfinite,
        looks_like_ct=looks_ct, ct_reason=reason,
        series_uid=meta.get("series_uid"), modality=meta.get("modality"),
        series_note=meta.get("series_note"),
    )
