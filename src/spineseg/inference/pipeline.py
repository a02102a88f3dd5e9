"""Segment one CT: the product's main job.

read → reorient to canonical LPS → resample in-plane to the model's spacing → HU window →
batched slice inference → back to the input grid → threshold → remove non-column islands →
mesh → stats. The mask is returned in exactly the input's voxel grid (same shape, spacing, origin
and direction), whatever order the file stored its voxels in.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh

from spineseg import __version__
from spineseg.errors import GeometryError, InputError, ResourceError
from spineseg.inference.model_file import SegmentationModel, load_segmentation_model
from spineseg.inference.postprocess import PostprocessConfig, clean_mask
from spineseg.inference.predict import PredictConfig, predict_probabilities
from spineseg.io import CANONICAL, Volume, read_image, reorient, resample_spacing, resample_to
from spineseg.io.describe import ct_verdict
from spineseg.io.read import DEFAULT_MAX_VOXELS
from spineseg.reconstruction import MeshConfig, mask_to_mesh

log = logging.getLogger(__name__)
_VERDICT_SAMPLE = 1 << 22  # voxels looked at for the "is this CT in HU?" warning


@dataclass(frozen=True)
class SegmentConfig:
    """Everything that shapes one segmentation run (the model is passed separately)."""

    device: str = "cpu"
    series_uid: str | None = None
    predict: PredictConfig = field(default_factory=PredictConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    mesh: MeshConfig | None = field(default_factory=MeshConfig)
    keep_probabilities: bool = False
    max_voxels: int = DEFAULT_MAX_VOXELS


@dataclass
class SegmentResult:
    """Outputs of :func:`segment`; ``mask`` (uint8) shares the input's physical grid exactly."""

    mask: Volume
    probabilities: Volume | None
    mesh: trimesh.Trimesh | None
    stats: dict[str, Any]
    canonical_ct: Volume
    canonical_mask: Volume


def _check_intensities(vol: Volume) -> None:
    arr = vol.array
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(f"{vol.meta.get('source', 'image')}: {bad} voxels are NaN or "
                             "infinite; fix or mask them before segmenting")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputError(f"{vol.meta.get('source', 'image')}: every voxel has the value {lo:g}; "
                         "this is not a CT image")
    stride = max(1, arr.size // _VERDICT_SAMPLE)
    looks_ct, reason = ct_verdict(arr.ravel()[::stride])
    if not looks_ct:
        log.warning("%s: %s; this may not be a CT in Hounsfield units and the result may be "
                    "wrong", vol.meta.get("source", "image"), reason)


def _geometry(vol: Volume) -> dict[str, Any]:
    return {
        "shape_xyz": list(vol.shape_xyz),
        "spacing": [float(s) for s in vol.spacing],
        "origin": [float(o) for o in vol.origin],
        "direction": [float(d) for d in vol.direction],
        "orientation": vol.orientation,
    }


def _back_to_input_grid(canonical: Volume, original: Volume, interpolation: str) -> Volume:
    back = reorient(canonical, original.orientation)
    if back.same_grid(original):
        return original.with_array(back.array)
    # Oblique input: reorientation is only the nearest axis permutation; resample exactly.
    return resample_to(canonical, original, interpolation=interpolation)


def _slab(vol: Volume, z0: int, z1: int) -> Volume:
    origin = np.asarray(vol.origin) + vol.direction_matrix[:, 2] * vol.spacing[2] * z0
    return Volume(vol.array[z0:z1], vol.spacing, tuple(origin), vol.direction)


def _resample_slabs(prob: Volume, reference: Volume, slab: int = 32) -> np.ndarray:
    """Resample float16 probabilities in-plane onto ``reference``, a slab of slices at a time.

    Both grids share their slices (in-plane resampling keeps z), so slabs are independent and the
    result is identical to one whole-volume resample, while the float32 copies SimpleITK needs stay
    the size of one slab instead of the whole scan (a 512×512×800 scan stays under 4 GiB).
    """
    out = np.empty(reference.array.shape, dtype=np.float16)
    for z0 in range(0, out.shape[0], slab):
        z1 = min(z0 + slab, out.shape[0])
        moving = _slab(prob, z0, z1)
        moving = moving.with_array(np.asarray(moving.array, dtype=np.float32))
        ref = _slab(reference, z0, z1)
        out[z0:z1] = resample_to(moving, ref, interpolation="linear").array
    return out


def segment(
    source: str | os.PathLike[str] | Volume,
    model: SegmentationModel | str | os.PathLike[str] | None = None,
    config: SegmentConfig | None = None,
) -> SegmentResult:
    """Segment the spine in a CT given as a path (file or DICOM folder) or a :class:`Volume`.

    ``model`` is a loaded :class:`SegmentationModel`, a path to a model file, or ``None`` for the
    shipped default. Raises :class:`~spineseg.errors.SpinesegError` subclasses on bad input.
    """
    cfg = config or SegmentConfig()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    vol = source if isinstance(source, Volume) else read_image(
        source, series_uid=cfg.series_uid, max_voxels=cfg.max_voxels)
    _check_intensities(vol)
    times["read_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    net = model if isinstance(model, SegmentationModel) else load_segmentation_model(
        model, device=cfg.device)
    times["load_model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    canon = reorient(vol, CANONICAL)
    sx, sy = net.preprocessing.spacing_xy
    needs_resample = not np.allclose(canon.spacing[:2], (sx, sy), rtol=0.01)
    # The limit holds after resampling too: a coarse scan upsampled to the model's spacing can
    # grow many-fold (5 mm -> 2 mm in-plane is 6x the voxels).
    try:
        work = (resample_spacing(canon, (sx, sy, canon.spacing[2]), interpolation="linear",
                                 max_voxels=cfg.max_voxels) if needs_resample else canon)
    except ResourceError as exc:
        raise ResourceError(f"{vol.meta.get('source', 'image')}: {exc} (the model works at "
                            f"{sx:g} x {sy:g} mm in-plane); crop the scan, or raise --max-voxels "
                            "if the machine has the memory") from exc
    times["preprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    prob = predict_probabilities(net, np.asarray(work.array), cfg.predict, cfg.device,
                                 spacing_z=float(work.spacing[2]))
    # From here on only the model grid's geometry is needed, not its CT voxels.
    work = work.with_array(prob)
    times["inference_s"] = time.perf_counter() - t

    t = time.perf_counter()
    prob_canon = _resample_slabs(work, canon) if needs_resample else prob
    del work, prob
    raw = prob_canon >= net.threshold
    if not cfg.keep_probabilities:
        del prob_canon  # 2 bytes a voxel no longer needed: matters on 800-slice scans
    raw_voxels = int(raw.sum())
    cleaned, report = clean_mask(raw, canon.spacing, cfg.postprocess, hu=np.asarray(canon.array))
    del raw
    canon_mask = canon.with_array(cleaned)
    mask = _back_to_input_grid(canon_mask, vol, "nearest")
    probabilities = None
    if cfg.keep_probabilities:
        probabilities = _back_to_input_grid(
            canon.with_array(np.asarray(prob_canon, dtype=np.float32)), vol, "linear")
        del prob_canon
    times["postprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    mesh = None
    if cfg.mesh is not None and cleaned.any():
        try:
            mesh = mask_to_mesh(canon_mask, cfg.mesh)
        except GeometryError as exc:
            log.warning("no mesh: %s", exc)
    times["mesh_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    voxel_ml = float(np.prod(canon.spacing)) / 1000.0
    z_with = np.flatnonzero(cleaned.any(axis=(1, 2)))
    stats: dict[str, Any] = {
        "spine_volume_ml": round(float(cleaned.sum()) * voxel_ml, 3),
        "craniocaudal_extent_mm": round(float((z_with[-1] - z_with[0] + 1) * canon.spacing[2]), 2)
        if z_with.size else 0.0,
        "slices_with_spine": int(z_with.size),
        "slices_total": int(canon.array.shape[0]),
        "input": {"source": str(vol.meta.get("source", "")), **_geometry(vol)},
        "model": {"name": net.model_name, "config": net.model_config, "sha256": net.sha256,
                  "source": net.source, "trained_with": net.meta.get("spineseg_version", ""),
                  "preprocessing": net.preprocessing.to_dict()},
        "spineseg_version": __version__,
        "postprocess": {**report.__dict__,
                        "raw_volume_ml": round(raw_voxels * voxel_ml, 3)},
        "mesh_faces": len(mesh.faces) if mesh is not None else 0,
        "test_time_mirroring": cfg.predict.mirror,
        "runtime_s": {k: round(v, 3) for k, v in times.items()},
        "device": cfg.device,
    }
    for key in ("series_uid", "series_note"):  # which DICOM series was read, and why
        if key in vol.meta:
            stats["input"][key] = vol.meta[key]
    return SegmentResult(mask, probabilities, mesh, stats, canon, canon_mask)

