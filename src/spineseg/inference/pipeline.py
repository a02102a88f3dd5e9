"""Segment one CT: the product's main job.

read → reorient to canonical LPS → resample in-plane to the model's spacing → HU window →
coarse pass locating the column (:mod:`spineseg.inference.region`) → batched slice inference in
the region around it → back to the input grid → threshold → remove non-column islands → mesh →
stats. Everything after the network works on the block holding the region, pasted into the
whole grid at the end. The mask is returned in exactly the input's voxel grid (same shape, spacing, origin
and direction), whatever order the file stored its voxels in.

An oblique scan (voxel axes tilted more than :data:`OBLIQUE_DEG` from the anatomical axes) cannot
be reoriented into axial slices: permuting its axes leaves the slices tilted (up to 45°), and the
network, trained on axial slices, then finds nothing. Such a scan is resampled onto an axis-aligned
grid at the model's spacing, segmented there, and its mask resampled (nearest neighbour) onto the
input grid. The memory the run needs is estimated from the grid sizes before anything large is
allocated.
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
from spineseg.inference.postprocess import PostprocessConfig, body_midline, clean_mask
from spineseg.inference.predict import (
    PredictConfig,
    predict_probabilities,
    resolve_precision,
    torch_threads,
)
from spineseg.inference.region import (
    ColumnRegion,
    RegionConfig,
    coarse_boxes,
    column_region,
    sample_slices,
    whole_slices,
)
from spineseg.io import CANONICAL, Volume, read_image, reorient, resample_spacing, resample_to
from spineseg.io.describe import ct_verdict, strided_sample
from spineseg.io.geometry import (
    axis_aligned_grid,
    nearest_axes,
    obliquity_deg,
    resample_axis_aligned,
)
from spineseg.io.read import DEFAULT_MAX_VOXELS
from spineseg.reconstruction import MeshConfig, mask_to_mesh
from spineseg.report.flags import probability_histogram

log = logging.getLogger(__name__)
#: Tilt (degrees) beyond which a scan is resampled onto an axis-aligned grid. Below it the nearest
#: axis order is used as is (exact, no interpolation): the spine's own curvature tilts vertebrae
#: more than that against the axial plane, so the network has seen such slices.
OBLIQUE_DEG = 10.0
#: A segmentation smaller than this (mL) is reported as "no spine found": less than a fraction
#: of one vertebra, so noise or a scan that does not show the spine.
NEAR_EMPTY_ML = 1.0
# Bytes per voxel the pipeline holds at its peak (estimated before allocating, see _check_memory):
# on the model's grid the float32 CT while SimpleITK's copy of it exists, then float16
# probabilities; on the canonical grid float16 probabilities, the thresholded mask, the int32
# component labels and the uint8 masks of post-processing.
_MODEL_GRID_BYTES = 8
_CANONICAL_GRID_BYTES = 9
_PROBABILITY_BYTES = 4  # float32 probabilities on the input grid, when kept
# Network activations on the CPU per slice pixel and base_width channel: about ten float32
# full-resolution feature maps are alive at once (measured ~40 bytes for msrunet, with margin).
_ACTIVATION_BYTES = 48
AIR_HU = -1024.0


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
    #: Refuse (ResourceError) a run estimated to need more bytes; ``None``: the memory available
    #: when the run starts (Linux: MemAvailable, and the cgroup limit where one is set).
    max_memory_bytes: int | None = None
    #: torch intra-op threads for inference; ``None`` leaves torch's default (all cores).
    threads: int | None = None
    #: Coarse-to-fine: locate the column first and run the network only around it
    #: (``RegionConfig(enabled=False)``: whole slices).
    region: RegionConfig = field(default_factory=RegionConfig)


@dataclass
class SegmentResult:
    """Outputs of :func:`segment`; ``mask`` (uint8) shares the input's physical grid exactly."""

    mask: Volume
    probabilities: Volume | None
    mesh: trimesh.Trimesh | None
    stats: dict[str, Any]
    canonical_ct: Volume
    canonical_mask: Volume
    #: Voxel counts of the probabilities in ten bins over [0, 1] within the mask's bounding box
    #: (what the low-confidence flag reads, without keeping the probability map).
    probability_histogram: list[int] | None = None


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
    looks_ct, reason = ct_verdict(strided_sample(arr))
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


def _crop(vol: Volume, zs: slice, ys: slice = slice(None), xs: slice = slice(None)) -> Volume:
    """The sub-volume ``[zs, ys, xs]`` (a view) with its own origin, on the same physical grid."""
    z0, y0, x0 = (s.indices(n)[0] for s, n in zip((zs, ys, xs), vol.array.shape, strict=True))
    origin = np.asarray(vol.origin) + vol.direction_matrix @ (np.asarray(vol.spacing)
                                                              * (x0, y0, z0))
    return Volume(vol.array[zs, ys, xs], vol.spacing, tuple(origin), vol.direction)


def _slab(vol: Volume, z0: int, z1: int) -> Volume:
    return _crop(vol, slice(z0, z1))


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


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or ``None`` where unknown."""
    avail: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    try:  # a container's cgroup (v2) limit is often far below the machine's memory
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            left = max(0, int(limit) - used)
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def _check_config(cfg: SegmentConfig) -> None:
    """Refuse settings that would only fail after inference (or never be noticed)."""
    for name, value in (("threads", cfg.threads), ("max_memory_bytes", cfg.max_memory_bytes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise InputError(f"{name} must be an integer >= 1 (or None), got {value!r}")
    resolve_precision(cfg.predict.precision, cfg.device)
    faces = cfg.mesh.max_faces if cfg.mesh is not None else None
    if faces is not None and (isinstance(faces, bool) or not isinstance(faces, int) or faces < 1):
        raise InputError(f"max_faces must be an integer >= 1 (or None), got {faces!r}")


def _check_memory(vol: Volume, model_grid: tuple[int, int, int], spacing: tuple[float, ...],
                  canonical_voxels: int, net: SegmentationModel, cfg: SegmentConfig) -> None:
    """Raise :class:`ResourceError` when the run would need more memory than allowed.

    Counts the input array (and its reoriented copy), the per-voxel arrays on the model's and the
    canonical grid, and the network's activations for one batch of whole slices (on a GPU those
    live in its own memory and are not counted). Nothing large has been allocated yet.
    """
    limit = cfg.max_memory_bytes if cfg.max_memory_bytes is not None else available_memory()
    if limit is None:
        return
    n_model = int(np.prod(model_grid, dtype=np.float64))
    need = (2 * int(vol.array.nbytes) + _MODEL_GRID_BYTES * n_model
            + _CANONICAL_GRID_BYTES * canonical_voxels
            + (_PROBABILITY_BYTES * int(vol.array.size) if cfg.keep_probabilities else 0))
    batch = min(cfg.predict.batch_size, model_grid[2])
    if not str(cfg.device).startswith("cuda"):
        d = net.divisor
        padded = -(-model_grid[0] // d) * d * (-(-model_grid[1] // d) * d)
        need += batch * padded * int(net.model_config.get("base_width", 32)) * _ACTIVATION_BYTES
    if need > limit:
        gib = 2.0**30
        raise ResourceError(
            f"{vol.meta.get('source', 'image')}: segmenting needs about {need / gib:.1f} GiB of "
            f"memory (the model's grid at {' x '.join(f'{s:g}' for s in spacing)} mm is "
            f"{'x'.join(map(str, model_grid))} voxels, in batches of {batch} slices), more than "
            f"the {limit / gib:.1f} GiB available; crop or downsample the scan, lower "
            "--batch-size, or free memory")


def _plan_grid(vol: Volume, spacing_xy: tuple[float, float]) -> tuple[
        bool, tuple[int, int, int], tuple[float, float, float], int]:
    """``(oblique, model grid size_xyz, its spacing, canonical-grid voxels)``, computed from the
    header alone; the model grid matches what :func:`resample_spacing` or
    :func:`resample_axis_aligned` will produce."""
    order = nearest_axes(vol)
    spacing_z = float(vol.spacing[order[2]])
    spacing = (float(spacing_xy[0]), float(spacing_xy[1]), spacing_z)
    if obliquity_deg(vol) > OBLIQUE_DEG:
        size, _ = axis_aligned_grid(vol, spacing)
        return True, size, spacing, int(np.prod(size, dtype=np.float64))
    shape = [vol.shape_xyz[v] for v in order]
    old = [float(vol.spacing[v]) for v in order]
    size = (max(1, round(shape[0] * old[0] / spacing[0])),
            max(1, round(shape[1] * old[1] / spacing[1])), shape[2])
    return False, size, spacing, int(vol.array.size)


def _locate(net: SegmentationModel, work: Volume, cfg: SegmentConfig) -> ColumnRegion:
    """The coarse pass: the network on a few slices, turned into a region (see region.py)."""
    hu = np.asarray(work.array)
    shape = (int(hu.shape[0]), int(hu.shape[1]), int(hu.shape[2]))
    if not cfg.region.enabled:
        return whole_slices(shape)
    sampled = sample_slices(shape[0], float(work.spacing[2]), cfg.region.step_mm)
    coarse = predict_probabilities(net, hu, cfg.predict, cfg.device,
                                   spacing_z=float(work.spacing[2]),
                                   boxes=coarse_boxes(shape, sampled))[sampled]
    return column_region(coarse, sampled, shape, net.threshold,
                         (float(work.spacing[0]), float(work.spacing[1])), cfg.region)


def _canonical_block(block: tuple[slice, slice], work: Volume, canon: Volume
                     ) -> tuple[slice, slice]:
    """The canonical-grid ``(ys, xs)`` covering the model grid's ``block``, plus one voxel.

    The two grids share origin and direction and differ only in in-plane spacing
    (:func:`resample_spacing`), so index ranges scale by the spacing ratio.
    """
    out = []
    for sl, axis, n in ((block[0], 1, canon.array.shape[1]), (block[1], 0, canon.array.shape[2])):
        ratio = float(work.spacing[axis]) / float(canon.spacing[axis])
        lo = int(np.floor(sl.start * ratio)) - 1
        hi = int(np.ceil((sl.stop - 1) * ratio)) + 2
        out.append(slice(max(lo, 0), min(hi, n)))
    return out[0], out[1]


def _threshold_block(prob: np.ndarray, ys: slice, xs: slice, threshold: float,
                     pad: int = 2) -> tuple[slice, slice]:
    """The in-plane part of ``[ys, xs]`` where some slice's probability reaches ``threshold``,
    grown by ``pad`` voxels.

    Linear resampling makes each output voxel a convex combination of its neighbours on the
    model grid, so outside this block (one voxel of neighbourhood, plus one of margin) nothing
    can reach the threshold: the mask is the same as from the whole block, while resampling,
    post-processing and meshing see only the bone's neighbourhood, not the region's 60 mm of
    margin. A block without any such voxel is left as it is.
    """
    hit = prob[:, ys, xs] >= threshold
    rows = np.flatnonzero(hit.any(axis=(0, 2)))
    cols = np.flatnonzero(hit.any(axis=(0, 1)))
    if rows.size == 0:
        return ys, xs
    return (slice(max(ys.start + int(rows[0]) - pad, ys.start),
                  min(ys.start + int(rows[-1]) + 1 + pad, ys.stop)),
            slice(max(xs.start + int(cols[0]) - pad, xs.start),
                  min(xs.start + int(cols[-1]) + 1 + pad, xs.stop)))


def _warn_if_empty(cleaned: np.ndarray, voxel_ml: float, source: str) -> None:
    volume_ml = float(cleaned.sum()) * voxel_ml
    if volume_ml < NEAR_EMPTY_ML:
        log.warning("%s: no spine found (%.2f mL segmented, %d voxels); check that the image is "
                    "a CT showing the spine, and its orientation", source, volume_ml,
                    int(cleaned.sum()))


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
    _check_config(cfg)
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
    source_name = str(vol.meta.get("source", "image"))
    sx, sy = net.preprocessing.spacing_xy
    oblique, grid, grid_spacing, canonical_voxels = _plan_grid(vol, (sx, sy))
    _check_memory(vol, grid, grid_spacing, canonical_voxels, net, cfg)
    # The limit holds after resampling too: a coarse scan upsampled to the model's spacing can
    # grow many-fold (5 mm -> 2 mm in-plane is 6x the voxels).
    try:
        if oblique:
            canon = resample_axis_aligned(vol, grid_spacing, interpolation="linear",
                                          default_value=AIR_HU, max_voxels=cfg.max_voxels)
            needs_resample = False
        else:
            canon = reorient(vol, CANONICAL)
            needs_resample = not np.allclose(canon.spacing[:2], (sx, sy), rtol=0.01)
        work = (resample_spacing(canon, (sx, sy, canon.spacing[2]), interpolation="linear",
                                 max_voxels=cfg.max_voxels) if needs_resample else canon)
    except ResourceError as exc:
        raise ResourceError(f"{source_name}: {exc} (the model works at "
                            f"{sx:g} x {sy:g} mm in-plane); crop the scan, or raise --max-voxels "
                            "if the machine has the memory") from exc
    times["preprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with torch_threads(cfg.threads):
        region = _locate(net, work, cfg)
        times["locate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        prob = predict_probabilities(net, np.asarray(work.array), cfg.predict, cfg.device,
                                     spacing_z=float(work.spacing[2]), boxes=region.boxes)
    # From here on only the model grid's geometry is needed, not its CT voxels; and only the
    # block holding the region, where every non-zero probability lies, or tighter still, the
    # block where the probability reaches the threshold.
    ys, xs = region.block()
    if not cfg.keep_probabilities:
        ys, xs = _threshold_block(prob, ys, xs, net.threshold)
    work_grid, work_spacing = work.shape_xyz, tuple(float(v) for v in work.spacing)
    work_block = _crop(work.with_array(prob), slice(None), ys, xs)
    del work, prob
    times["inference_s"] = time.perf_counter() - t

    t = time.perf_counter()
    cys, cxs = _canonical_block((ys, xs), work_block, canon) if needs_resample else (ys, xs)
    canon_block = _crop(canon, slice(None), cys, cxs)
    prob_block = (_resample_slabs(work_block, canon_block) if needs_resample
                  else work_block.array)
    del work_block
    raw = prob_block >= net.threshold
    raw_voxels = int(raw.sum())
    midline = body_midline(np.asarray(canon.array), cfg.postprocess.body_threshold_hu) - cxs.start
    # The float16 probabilities stay alive through clean_mask (counted in _CANONICAL_GRID_BYTES)
    # so that their histogram over the final mask can be kept.
    cleaned_block, report = clean_mask(raw, canon.spacing, cfg.postprocess,
                                       midline=midline)
    del raw
    histogram = probability_histogram(prob_block, cleaned_block)
    if not cfg.keep_probabilities:
        del prob_block  # 2 bytes a voxel no longer needed: matters on 800-slice scans
    cleaned = np.zeros(canon.array.shape, dtype=np.uint8)
    cleaned[:, cys, cxs] = cleaned_block
    canon_mask = canon.with_array(cleaned)
    mask = _back_to_input_grid(canon_mask, vol, "nearest")
    probabilities = None
    if cfg.keep_probabilities:
        full = np.zeros(canon.array.shape, dtype=np.float32)
        full[:, cys, cxs] = prob_block
        del prob_block
        probabilities = _back_to_input_grid(canon.with_array(full), vol, "linear")
        del full
    times["postprocess_s"] = time.perf_counter() - t

    voxel_ml = float(np.prod(canon.spacing)) / 1000.0
    _warn_if_empty(cleaned, voxel_ml, source_name)
    t = time.perf_counter()
    mesh = None
    if cfg.mesh is not None:
        if not cleaned.any():
            log.warning("no mesh: %s: the mask is empty", source_name)
        else:
            try:  # on the block: the same surface, a fraction of the voxels to march through
                mesh = mask_to_mesh(canon_block.with_array(cleaned_block), cfg.mesh)
            except GeometryError as exc:
                log.warning("no mesh: %s: %s", source_name, exc)
    times["mesh_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0

    z_with = np.flatnonzero(cleaned.any(axis=(1, 2)))
    stats: dict[str, Any] = {
        "spine_volume_ml": round(float(cleaned.sum()) * voxel_ml, 3),
        "craniocaudal_extent_mm": round(float((z_with[-1] - z_with[0] + 1) * canon.spacing[2]), 2)
        if z_with.size else 0.0,
        "slices_with_spine": int(z_with.size),
        "slices_total": int(canon.array.shape[0]),
        "input": {"source": str(vol.meta.get("source", "")), **_geometry(vol),
                  "obliquity_deg": round(obliquity_deg(vol), 3)},
        "processing_grid": {"shape_xyz": list(work_grid), "spacing": list(work_spacing),
                            "axis_aligned_resample": oblique},
        "region": {"enabled": cfg.region.enabled, **region.summary()},
        "model": {"name": net.model_name, "config": net.model_config, "sha256": net.sha256,
                  "source": net.source, "trained_with": net.meta.get("spineseg_version", ""),
                  "preprocessing": net.preprocessing.to_dict()},
        "spineseg_version": __version__,
        "postprocess": {**report.__dict__,
                        "raw_volume_ml": round(raw_voxels * voxel_ml, 3)},
        "mesh_faces": len(mesh.faces) if mesh is not None else 0,
        "test_time_mirroring": cfg.predict.mirror,
        "precision": str(resolve_precision(cfg.predict.precision, cfg.device)).removeprefix(
            "torch."),
        "runtime_s": {k: round(v, 3) for k, v in times.items()},
        "device": cfg.device,
    }
    for key in ("series_uid", "acquisition", "series_note"):  # which DICOM series, and why
        if key in vol.meta:
            stats["input"][key] = vol.meta[key]
    return SegmentResult(mask, probabilities, mesh, stats, canon, canon_mask, histogram)

