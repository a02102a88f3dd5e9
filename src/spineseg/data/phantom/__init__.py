"""Procedural spine-CT phantoms with exact vertebra truth, for training, tests and demos.

A phantom is a CT-like volume (int16 HU) and a binary mask of the vertebrae C1-L5 only. It is
built to defeat shortcuts a segmenter could learn on easy data: real vertebra shapes on a curved
column; bone that is *not* spine right next to it (ribs touching the bodies and transverse
processes, sacrum, iliac wings, hips, sternum, scapulae); bright non-bone (contrast aorta, kidneys,
the table); trabecular bone from osteoporotic (50 HU) to dense (250 HU); noise from 10 to 150 HU
with sharp or soft kernel correlation; partial volume from slices up to 5 mm; beam-hardening
streaks; full-body or tight fields of view; and optionally unusual voxel storage orders.

Same seed and config → bit-identical output (one ``numpy.random.Generator`` drives everything).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from spineseg.data.phantom.anatomy import (
    Tissues,
    body_profile,
    render_ribs,
    render_scapulae,
    render_soft_tissue,
    render_table,
    render_vessels,
    streaks,
)
from spineseg.data.phantom.column import build_column, render_discs_and_canal, render_vertebra
from spineseg.data.phantom.grid import Grid
from spineseg.data.phantom.pelvis import render_pelvis
from spineseg.data.shapes import LEVEL_NAMES
from spineseg.data.simulate import add_ct_noise
from spineseg.errors import InputError, OutputError
from spineseg.io import Volume, reorient, write_dicom_series, write_image, write_text_atomic

GENERATOR_VERSION = "spineseg-phantom/1"
Range = tuple[float, float]


@dataclass(frozen=True)
class PhantomConfig:
    """What varies between phantoms, and by how much (ranges are sampled uniformly per case)."""

    shape: tuple[int, int, int] = (256, 256, 100)  # voxels (X, Y, Z)
    inplane_spacing_mm: Range = (0.6, 1.0)
    slice_thickness_mm: Range = (0.5, 5.0)  # sampled log-uniformly
    min_z_extent_mm: float = 60.0  # a stack shorter than this gets thicker slices
    crop_prob: float = 0.35  # narrow field of view around the column (else the whole body)
    noise_sd: Range = (10.0, 150.0)  # sampled log-uniformly
    soft_kernel_prob: float = 0.5
    trabecular_hu: Range = (50.0, 250.0)
    cortical_hu: Range = (700.0, 1500.0)
    vertebra_scale: Range = (0.9, 1.1)
    scoliosis_prob: float = 0.3
    streak_prob: float = 0.6
    reorient_prob: float = 0.0  # store the voxels in another orientation (exercises readers)
    reorient_codes: tuple[str, ...] = ("PIR", "RAS", "LAS", "RPI", "LPI", "ASL")
    center_level: str | None = None  # centre the slices on this level ("T8", "S1"); None: random
    # Vertebra-shape template subjects left out (e.g. a held-out patient's own shapes).
    exclude_templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) < 16 for s in self.shape):
            raise InputError(f"phantom shape {self.shape} must be three sizes >= 16")
        for name in ("inplane_spacing_mm", "slice_thickness_mm", "noise_sd", "trabecular_hu",
                     "cortical_hu", "vertebra_scale"):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
                raise InputError(f"PhantomConfig.{name} must be a range 0 <= lo <= hi")
        if self.inplane_spacing_mm[0] <= 0 or self.slice_thickness_mm[0] <= 0:
            raise InputError("phantom spacings must be > 0")
        for name in ("crop_prob", "soft_kernel_prob", "scoliosis_prob", "streak_prob",
                     "reorient_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"PhantomConfig.{name} must be a probability in [0, 1]")
        if self.center_level is not None and self.center_level not in (*LEVEL_NAMES, "S1"):
            raise InputError(f"unknown center level {self.center_level!r} (C1…L5 or S1)")


@dataclass
class Phantom:
    """One generated case. ``ct`` and ``mask`` share one grid; ``params`` is JSON-able."""

    ct: Volume  # int16 HU
    mask: Volume  # uint8 {0, 1}: vertebrae only
    params: dict[str, Any]
    structures: dict[str, Volume] = field(default_factory=dict)  # uint8 ribs/pelvis/scapulae


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _lr_centroids(mask: np.ndarray, grid: Grid, col_x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-slice (x, y) centroids of ``mask`` left and right of the column (NaN if < 20 voxels)."""
    x = grid.x[None, None, :]
    out = []
    for side in (mask & (x > col_x[:, None, None]), mask & (x <= col_x[:, None, None])):
        n = side.sum(axis=(1, 2)).astype(float)
        sx = (side.sum(axis=1) * grid.x[None, :]).sum(axis=1)
        sy = (side.sum(axis=2) * grid.y[None, :]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.stack([sx / n, sy / n], axis=1)
        c[n < 20] = np.nan
        out.append(c)
    return tuple(out)


def generate_phantom(seed: int, config: PhantomConfig | None = None) -> Phantom:
    """Generate one phantom; identical ``seed`` and ``config`` give identical arrays."""
    cfg = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    nx, ny, nz = (int(s) for s in cfg.shape)
    column = build_column(rng, rng.uniform(*cfg.vertebra_scale), cfg.scoliosis_prob,
                          tuple(cfg.exclude_templates))
    zl = {n: column.height_of(n) for n in LEVEL_NAMES}

    # Slices: thickness, then a window along the column centred on a random level.
    sz = max(_loguniform(rng, *cfg.slice_thickness_mm), cfg.min_z_extent_mm / nz)
    # Lumbar and lumbosacral windows are favoured: the pelvis is the classic confounder.
    names = (*LEVEL_NAMES, "S1")
    zl["S1"] = zl["L5"] - 45
    weights = np.array([0.3 if n[0] == "C" else 1.0 if n[0] == "T" else 1.6 for n in names])
    weights[-1] = 4.0
    centre_level = names[rng.choice(len(names), p=weights / weights.sum())]
    if cfg.center_level is not None:
        centre_level = cfg.center_level
    z_centre = zl[centre_level] + rng.uniform(-20, 20)
    z_centre = max(z_centre, zl["L5"] + 5 - (nz - 1) * sz / 2)  # keep some spine in view
    z0 = z_centre - (nz - 1) * sz / 2
    z = z0 + np.arange(nz) * sz
    body = body_profile(rng, column, z)

    # In-plane: a tight crop around the column, or the whole body (+ table) in view.
    sp = rng.uniform(*cfg.inplane_spacing_mm)
    crop = bool(rng.random() < cfg.crop_prob)
    cx_col, cy_col = column.center_at_z(np.array([z_centre]))
    if crop:
        cx = cx_col[0] + rng.normal(0, 8)
        cy = cy_col[0] + rng.uniform(0, 30)
    else:
        width = float(np.max(2 * body.a)) + rng.uniform(20, 60)
        depth = float(np.max(2 * body.b)) + 70
        sp = max(sp, width / nx, depth / ny)
        cx = float(np.median(body.cx)) + rng.normal(0, 5)
        cy = float(np.median(body.cy)) + 25
    origin = (cx - (nx - 1) * sp / 2, cy - (ny - 1) * sp / 2, z0)
    grid = Grid((nz, ny, nx), (sp, sp, sz), origin)

    trab = rng.uniform(*cfg.trabecular_hu)
    dens = (trab - cfg.trabecular_hu[0]) / max(np.ptp(cfg.trabecular_hu), 1e-6)
    cort_lo, cort_hi = cfg.cortical_hu
    cort = cort_lo + (0.7 * rng.uniform() + 0.3 * dens) * (cort_hi - cort_lo)
    tis = Tissues.sample(rng, trab, cort)
    zl["diaphragm"] = zl["T10"] + rng.uniform(-15, 25)
    zl["floor"] = zl["L5"] - 150

    hu = render_soft_tissue(grid, rng, column, body, tis, zl)
    render_vessels(grid, hu, column, tis, zl, rng)
    render_table(grid, hu, body, rng)
    disc_hu = rng.uniform(70, 110)
    render_discs_and_canal(grid, hu, column, disc_hu, rng.uniform(0, 15), rng.uniform(30, 50))
    pelvis, pelvis_info = render_pelvis(grid, hu, column, trab, cort, disc_hu, rng)
    ribs = render_ribs(grid, hu, column, body, tis, rng)
    scapulae = render_scapulae(grid, hu, column, body, tis, rng)
    truth = np.zeros(grid.shape, dtype=bool)
    levels = []
    min_voxels = 500.0 / (sp * sp * sz)  # at least 0.5 mL visible to count as present
    for v in column.vertebrae:
        trab_v = trab * rng.uniform(0.9, 1.1)
        n = render_vertebra(grid, hu, truth, v, cort * rng.uniform(0.92, 1.05), trab_v, rng)
        if n >= min_voxels:
            levels.append(v.name)
    ribs &= ~truth
    pelvis &= ~truth
    scapulae &= ~truth

    streak_amp = rng.uniform(30, 150) if rng.random() < cfg.streak_prob else 0.0
    if streak_amp > 0:
        col_x, _ = column.center_at_z(grid.z)
        left, right = _lr_centroids(ribs | pelvis, grid, col_x)
        streaks(grid, hu, [(left, right)], streak_amp, rng.uniform(2.0, 5.0))

    kernel = "soft" if rng.random() < cfg.soft_kernel_prob else "sharp"
    psf_mm = rng.uniform(0.6, 1.0) if kernel == "soft" else rng.uniform(0.3, 0.6)
    sig_z = max(0.35, psf_mm / sz)
    hu = ndimage.gaussian_filter(hu, sigma=(sig_z, psf_mm / sp, psf_mm / sp), truncate=3.0)
    noise_sd = _loguniform(rng, *cfg.noise_sd)
    hu = add_ct_noise(hu, noise_sd, rng, kernel=kernel, z_sigma_vox=0.5 if sz < 1.5 else 0.0)
    ct_arr = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    geometry = {"spacing": grid.spacing, "origin": grid.origin}
    ct = Volume(ct_arr, **geometry)
    mask = Volume(truth.astype(np.uint8), **geometry)
    structures = {"ribs": Volume(ribs.astype(np.uint8), **geometry),
                  "pelvis": Volume(pelvis.astype(np.uint8), **geometry),
                  "scapulae": Volume(scapulae.astype(np.uint8), **geometry)}
    orientation = "LPS"
    if rng.random() < cfg.reorient_prob:
        orientation = str(rng.choice(list(cfg.reorient_codes)))
        ct, mask = reorient(ct, orientation), reorient(mask, orientation)
        structures = {k: reorient(v, orientation) for k, v in structures.items()}

    params: dict[str, Any] = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "config": asdict(cfg),
        "levels": levels,
        "shape_xyz": [nx, ny, nz],
        "spacing_mm": [round(float(s), 4) for s in grid.spacing],
        "orientation": orientation,
        "field_of_view": "crop" if crop else "body",
        "noise_sd": round(noise_sd, 2),
        "kernel": kernel,
        "psf_mm": round(float(psf_mm), 3),
        "trabecular_hu": round(float(trab), 1),
        "cortical_hu": round(float(cort), 1),
        "tissue_hu": {k: round(float(v), 1) for k, v in asdict(tis).items()},
        "curvature": column.params,
        "streak_hu": round(float(streak_amp), 1),
        "templates": {v.name: v.template.source for v in column.vertebrae if v.name in levels},
        "mask_voxels": int(truth.sum()),
        "rib_voxels": int(ribs.sum()),
        "pelvis_voxels": int(pelvis.sum()),
        "scapula_voxels": int(scapulae.sum()),
        **{k: round(v, 1) for k, v in pelvis_info.items()},
    }
    return Phantom(ct=ct, mask=mask, params=params, structures=structures)


def write_phantom_case(phantom: Phantom, out_dir: str | os.PathLike[str], case_id: str, *,
                       dicom: bool = False, overwrite: bool = False) -> dict[str, Path]:
    """Write a phantom in the "pairs" layout ``prepare`` reads; returns the paths written.

    ``images/<id>.nii.gz``, ``labels/<id>.nii.gz``, ``params/<id>.json`` and, with ``dicom``,
    ``dicom/<id>/`` (one CT series). Existing files are refused unless ``overwrite``; all are
    checked before anything is written so a refusal leaves no half-written case.
    """
    if not case_id or any(c in case_id for c in "/\\") or case_id.startswith("."):
        raise OutputError(f"invalid case id {case_id!r}")
    out = Path(out_dir)
    paths = {
        "image": out / "images" / f"{case_id}.nii.gz",
        "label": out / "labels" / f"{case_id}.nii.gz",
        "params": out / "params" / f"{case_id}.json",
    }
    if dicom:
        paths["dicom"] = out / "dicom" / case_id
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise OutputError(f"{p}: already exists (use --overwrite to replace it)")
    write_image(phantom.ct, paths["image"], overwrite=overwrite)
    write_image(phantom.mask, paths["label"], overwrite=overwrite)
    if dicom:
        write_dicom_series(phantom.ct, paths["dicom"], overwrite=overwrite,
                           patient_id=f"PHANTOM-{case_id}",
                           series_description=f"spineseg phantom {case_id}")
    write_text_atomic(paths["params"], json.dumps(phantom.params, indent=2) + "\n", overwrite)
    return paths


def case_id_for(seed: int) -> str:
    """Case id of the phantom with this seed (stable, sortable)."""
    return f"phantom_{seed:06d}"


def write_phantom_dataset(out_dir: str | os.PathLike[str], n_cases: int, seed: int = 0,
                          config: PhantomConfig | None = None, *, dicom: bool = False,
                          overwrite: bool = False,
                          progress: Callable[[str], None] | None = None) -> list[dict[str, Path]]:
    """Generate and write cases with seeds ``seed … seed + n_cases - 1`` (see
    :func:`write_phantom_case`). Existing outputs are detected before any case is generated."""
    if n_cases < 1:
        raise InputError(f"number of cases must be >= 1, got {n_cases}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    ids = [case_id_for(seed + i) for i in range(n_cases)]
    if not overwrite:
        for cid in ids:
            for p in (out / "images" / f"{cid}.nii.gz", out / "labels" / f"{cid}.nii.gz"):
                if p.exists():
                    raise OutputError(f"{p}: already exists (use --overwrite to replace it)")
    written = []
    for i, cid in enumerate(ids):
        phantom = generate_phantom(seed + i, config)
        written.append(write_phantom_case(phantom, out, cid, dicom=dicom, overwrite=overwrite))
        if progress is not None:
            progress(cid)
    return written
