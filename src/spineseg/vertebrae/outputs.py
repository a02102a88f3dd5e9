"""Write a :class:`VertebraeResult`: label map, label table, CSV, coloured mesh, named preview.

The label map ``vertebrae.nii.gz`` is marked as one in its header and names its colour table
``vertebrae.ctbl`` (3D Slicer's format); with ``--output-type`` it is also written as a DICOM-SEG
(``vertebrae.seg.dcm``, one coded segment per vertebra) and a 3D Slicer segmentation
(``vertebrae.seg.nrrd``), each vertebra with its name, colour and terminology.

:func:`write_vertebrae_files` writes into a folder that the caller stages (``spineseg segment
--vertebrae`` adds them to its own all-or-nothing set); :func:`save_vertebrae` is the standalone
writer: every file goes into a hidden staging folder beside OUTDIR and is renamed into place only
when all are written, so an interrupted run leaves no half set and never replaces good files
with part of a new one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import trimesh

from spineseg.errors import GeometryError, OutputError
from spineseg.export.dicom_seg import DicomSegInfo, write_dicom_seg_labels
from spineseg.export.label_map import colour_table_text, write_label_nifti
from spineseg.export.seg_nrrd import write_seg_nrrd_labels
from spineseg.export.terminology import LabelSegment, vertebra_term
from spineseg.inference.claim import check_not_inputs, claim_output_folder
from spineseg.io.atomic import atomic_path
from spineseg.io.mesh import write_mesh
from spineseg.reconstruction.mesh import MeshConfig, mask_to_mesh
from spineseg.vertebrae.analysis import VertebraeResult

LABELS = "vertebrae.nii.gz"
TABLE = "vertebrae.json"
CSV = "vertebrae.csv"
MESH = "vertebrae.ply"
PREVIEW = "vertebrae_preview.png"
COLOURS = "vertebrae.ctbl"
#: The label map in the formats of ``--output-type`` besides NIfTI.
TYPED_FILES = {"dicom-seg": "vertebrae.seg.dcm", "seg-nrrd": "vertebrae.seg.nrrd"}
STATS = "stats.json"
#: Every file the vertebra outputs may add to a case folder.
VERTEBRAE_NAMES = frozenset({LABELS, TABLE, CSV, MESH, PREVIEW, COLOURS, *TYPED_FILES.values()})
_WINDOW = (-400.0, 1200.0)


def colour(label: int) -> tuple[int, int, int]:
    """A fixed RGB colour per label value, neighbours distinct (the same in every output)."""
    rgba = plt.get_cmap("tab20")((label * 7) % 20)
    return (round(rgba[0] * 255), round(rgba[1] * 255), round(rgba[2] * 255))


def label_table(result: VertebraeResult) -> dict[str, Any]:
    """The content of ``vertebrae.json``: one entry per label value plus the naming state."""
    rows = result.rows()
    labels = [{"id": r["label"], "name": r["name"], "colour": list(colour(r["label"])),
               "confidence": r["confidence"], "confident": r["confident"],
               "rib_bearing": r["rib_bearing"], "partial": r["partial"]} for r in rows]
    return {"labels": labels, **result.summary()}


def vertebrae_stats(result: VertebraeResult) -> dict[str, Any]:
    """Per-vertebra entries for ``stats.json``, keyed TotalSegmentator-style (``vertebrae_L1``),
    and the count a cohort report shows."""
    return {"vertebrae": {r["structure"]: r for r in result.rows()},
            "vertebrae_summary": {"count": len(result.vertebrae), **result.summary()}}


def label_segments(result: VertebraeResult) -> list[LabelSegment]:
    """One segment per vertebra from the top down: its VerSe id, name, colour and coded type,
    the same in the colour table, the DICOM-SEG and the ``.seg.nrrd``."""
    return [LabelSegment(v.label, vertebra_term(v.name, colour(v.label)))
            for v in reversed(result.vertebrae)]


@dataclass(frozen=True)
class VertebraeFormats:
    """Label-map formats besides NIfTI, and the source series a DICOM-SEG references."""

    output_types: tuple[str, ...] = ("nifti",)
    series_folder: Path | None = None
    series_uid: str | None = None
    dicom_info: DicomSegInfo | None = None


def _csv_text(result: VertebraeResult) -> str:
    rows = result.rows()
    buf = io.StringIO()
    fields = [k for k in rows[0] if k != "centroid_lps_mm"] if rows else ["name"]
    fields += ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = {k: ("" if v is None else v) for k, v in r.items() if k != "centroid_lps_mm"}
        flat.update(zip(fields[-3:], r["centroid_lps_mm"], strict=True))
        writer.writerow(flat)
    return buf.getvalue()


def coloured_mesh(result: VertebraeResult, max_faces: int = 200_000) -> trimesh.Trimesh | None:
    """One mesh of all vertebrae (LPS mm), each vertex coloured by its vertebra's colour."""
    canon = result.canonical_labels
    arr = np.asarray(canon.array)
    parts = []
    budget = max(500, max_faces // max(1, len(result.vertebrae)))
    for v in result.vertebrae:
        try:
            mesh = mask_to_mesh(canon.with_array((arr == v.label).astype(np.uint8)),
                                MeshConfig(max_faces=budget))
        except GeometryError:
            continue
        mesh.visual.vertex_colors = np.tile([*colour(v.label), 255], (len(mesh.vertices), 1))
        parts.append(mesh)
    return trimesh.util.concatenate(parts) if parts else None


def save_named_preview(result: VertebraeResult, path: Path, title: str = "") -> Path:
    """Sagittal and coronal planes through the column with each vertebra coloured and named."""
    hu = np.asarray(result.canonical_ct.array)
    lab = np.asarray(result.canonical_labels.array)
    sx, sy, sz = (float(s) for s in result.canonical_ct.spacing)
    _, yy, xx = np.nonzero(lab) if lab.any() else (np.array([0]),) * 3
    cy, cx = int(np.median(yy)), int(np.median(xx))
    views = [("sagittal", hu[::-1, :, cx], lab[::-1, :, cx], sz / sy, 1),
             ("coronal", hu[::-1, cy, :], lab[::-1, cy, :], sz / sx, 2)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 6))
    for ax, (name, img, msk, aspect, axis) in zip(axes, views, strict=True):
        ax.imshow(img, cmap="gray", vmin=_WINDOW[0], vmax=_WINDOW[1], aspect=aspect,
                  interpolation="nearest")
        overlay = np.zeros((*msk.shape, 4))
        for v in result.vertebrae:
            overlay[msk == v.label] = [*(c / 255 for c in colour(v.label)), 0.45]
        ax.imshow(overlay, aspect=aspect, interpolation="nearest")
        for v in result.vertebrae:
            z, y, x = v.measures.centroid_voxel_zyx
            col = y if axis == 1 else x
            text = v.name if v.level.named else f"{v.name}?"
            ax.text(col, hu.shape[0] - 1 - z, text, color="white", fontsize=8,
                    ha="center", va="center", fontweight="bold",
                    bbox={"facecolor": np.array(colour(v.label)) / 255, "alpha": 0.8,
                          "pad": 1.5, "linewidth": 0})
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle((title + "\n" if title else "") + result.report.note, fontsize=8)
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _write_typed(result: VertebraeResult, out: Path, formats: VertebraeFormats) -> list[Path]:
    segments = label_segments(result)
    written: list[Path] = []
    if not segments:  # nothing to describe; the NIfTI and the tables say "no vertebrae"
        return written
    if "dicom-seg" in formats.output_types:
        if formats.series_folder is None:
            raise OutputError(f"{out}: a vertebrae DICOM-SEG needs the source DICOM series")
        written.append(write_dicom_seg_labels(
            result.labels, formats.series_folder, out / TYPED_FILES["dicom-seg"], segments,
            series_uid=formats.series_uid,
            info=replace(formats.dicom_info or DicomSegInfo(),
                                     series_description="spineseg vertebrae"),
            overwrite=True))
    if "seg-nrrd" in formats.output_types:
        written.append(write_seg_nrrd_labels(result.labels, out / TYPED_FILES["seg-nrrd"],
                                             segments, overwrite=True))
    return written


def write_vertebrae_files(result: VertebraeResult, folder: str | os.PathLike[str], *,
                          mesh: bool = True, preview: bool = True, title: str = "",
                          max_faces: int = 200_000,
                          formats: VertebraeFormats | None = None) -> list[Path]:
    """Write the vertebra outputs into ``folder`` (which the caller stages); returns the paths."""
    out = Path(folder)
    written = [write_label_nifti(result.labels, out / LABELS, colour_table=COLOURS,
                                 intent_name="vertebrae", overwrite=True)]
    (out / COLOURS).write_text(colour_table_text(label_segments(result), COLOURS),
                               encoding="utf-8")
    written.append(out / COLOURS)
    written += _write_typed(result, out, formats or VertebraeFormats())
    table = out / TABLE
    table.write_text(json.dumps(label_table(result), indent=2) + "\n", encoding="utf-8")
    (out / CSV).write_text(_csv_text(result), encoding="utf-8")
    written += [table, out / CSV]
    if mesh:
        m = coloured_mesh(result, max_faces)
        if m is not None:
            written.append(write_mesh(m, out / MESH, overwrite=True))
    if preview:
        written.append(save_named_preview(result, out / PREVIEW, title))
    return written


def planned_names(mesh: bool, preview: bool, output_types: tuple[str, ...] = ("nifti",)
                  ) -> list[str]:
    """The files a set holds, ``stats.json`` last (segment writes its own)."""
    typed = [TYPED_FILES[t] for t in output_types if t in TYPED_FILES]
    return [LABELS, COLOURS, *typed, TABLE, CSV, *([MESH] if mesh else []),
            *([PREVIEW] if preview else []), STATS]


def check_vertebrae_outputs(outdir: Path, mesh: bool, preview: bool, overwrite: bool,
                            inputs: list[Path], output_types: tuple[str, ...] = ("nifti",)
                            ) -> None:
    """Fail before any work if an output exists (without overwrite) or would hit an input."""
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: output path exists and is not a folder")
    planned = [outdir / n for n in planned_names(mesh, preview, output_types)]
    check_not_inputs(planned, inputs)
    if not overwrite:
        existing = next((p for p in planned if p.exists()), None)
        if existing is not None:
            raise OutputError(f"{existing}: already exists (use --overwrite to replace it)")


def save_vertebrae(result: VertebraeResult, outdir: str | os.PathLike[str], *,
                   mesh: bool = True, preview: bool = True, overwrite: bool = False,
                   inputs: list[Path] | None = None, extra_stats: dict[str, Any] | None = None,
                   formats: VertebraeFormats | None = None) -> list[Path]:
    """Write the whole vertebra set plus ``stats.json`` into ``outdir``, all or nothing."""
    out = Path(outdir)
    formats = formats or VertebraeFormats()
    with claim_output_folder(out):
        check_vertebrae_outputs(out, mesh, preview, overwrite, inputs or [],
                                formats.output_types)
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.vertebrae-", dir=out.parent))
        except OSError as exc:
            raise OutputError(f"{out}: cannot write here ({exc.strerror})") from exc
        try:
            files = write_vertebrae_files(result, stage, mesh=mesh, preview=preview,
                                          title=(extra_stats or {}).get("source", ""),
                                          formats=formats)
            stats = {**(extra_stats or {}), **vertebrae_stats(result),
                     "outputs": sorted({p.name for p in files} | {STATS})}
            (stage / STATS).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
            written = []
            for p in [*files, stage / STATS]:  # stats.json last: it marks a complete set
                os.replace(p, out / p.name)
                written.append(out / p.name)
            return written
        except OSError as exc:
            raise OutputError(f"{out}: writing outputs failed ({exc.strerror or exc})") from exc
        finally:
            shutil.rmtree(stage, ignore_errors=True)
