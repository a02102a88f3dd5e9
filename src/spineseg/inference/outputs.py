"""Write one case's outputs all-or-nothing, and replace an earlier set as a whole.

Everything is written into a hidden staging folder beside OUTDIR and only then renamed into place,
so an interrupted run never leaves a mask without its stats (batch mode treats ``stats.json`` as the
"case finished" marker) and never replaces good outputs with half of a new set.

``stats.json`` records the names spineseg wrote (``outputs``) and the settings that shaped them
(``settings``). The record is what lets ``--overwrite`` remove an earlier run's files that this
run does not produce (a preview, another mesh format, probabilities) without ever touching a file
spineseg did not write, and what lets a batch re-run skip a case only when nothing changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spineseg.errors import InputError, OutputError
from spineseg.export import OUTPUT_FILES, check_output_types
from spineseg.export.dicom_seg import DicomSegInfo, write_dicom_seg
from spineseg.export.seg_nrrd import write_seg_nrrd
from spineseg.inference.claim import LOCK_NAME, check_not_inputs, claim_output_folder
from spineseg.inference.model_file import SegmentationModel
from spineseg.inference.pipeline import SegmentConfig, SegmentResult
from spineseg.inference.preview import save_preview
from spineseg.io import write_image, write_text_atomic
from spineseg.io.mesh import MESH_FORMATS, write_mesh
from spineseg.report import case_quality
from spineseg.vertebrae import outputs as vertebra_outputs
from spineseg.vertebrae.analysis import VertebraeResult, label_vertebrae

STATS = "stats.json"
#: Every name spineseg writes into a case folder: the only files an overwrite may remove.
OUTPUT_NAMES = frozenset({"spine.nii.gz", "spine_prob.nii.gz", "preview.png", STATS,
                          *(f"spine.{fmt}" for fmt in MESH_FORMATS), *OUTPUT_FILES.values(),
                          *vertebra_outputs.VERTEBRAE_NAMES})
# Written first into stats.json while a set is being replaced; a crash leaves this record, so the
# next run knows which files are its own half-finished set (and that the case is not done).
INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class OutputConfig:
    mesh_format: str | None = "stl"
    probabilities: bool = False
    preview: bool = True
    overwrite: bool = False
    #: Mask formats (:data:`spineseg.export.OUTPUT_TYPES`); ``spine.nii.gz`` is always written.
    output_types: tuple[str, ...] = ("nifti",)
    vertebrae: bool = False  # named vertebrae too (spineseg.vertebrae)


def planned_outputs(outdir: Path, cfg: OutputConfig) -> list[Path]:
    names = [OUTPUT_FILES["nifti"], STATS,
             *(OUTPUT_FILES[t] for t in cfg.output_types if t != "nifti")]
    if cfg.preview:
        names.append("preview.png")
    if cfg.mesh_format:
        names.append(f"spine.{cfg.mesh_format}")
    if cfg.probabilities:
        names.append("spine_prob.nii.gz")
    if cfg.vertebrae:
        names += vertebra_outputs.planned_names(bool(cfg.mesh_format), cfg.preview,
                                                cfg.output_types)[:-1]
    return [outdir / n for n in names]


def run_settings(model: SegmentationModel, config: SegmentConfig,
                 outputs: OutputConfig) -> dict[str, Any]:
    """Every setting that shapes a case's outputs (speed-only knobs such as batch size left out)."""
    p = config.predict
    return {
        "model_sha256": model.sha256,
        "threshold": float(model.threshold),
        "series_uid": config.series_uid,
        "predict": {"mirror": p.mirror, "crop_to_body": p.crop_to_body,
                    "body_threshold_hu": p.body_threshold_hu, "margin_vox": p.margin_vox,
                    "skip_boneless_slices": p.skip_boneless_slices, "bone_hu": p.bone_hu},
        "postprocess": dataclasses.asdict(config.postprocess),
        "mesh": dataclasses.asdict(config.mesh) if config.mesh is not None else None,
        "outputs": {"mesh_format": outputs.mesh_format, "probabilities": outputs.probabilities,
                    "preview": outputs.preview,
                    # Only when other formats are asked for, so records of NIfTI-only runs
                    # (older ones included) still match a NIfTI-only re-run.
                    **({"output_types": list(outputs.output_types)}
                       if set(outputs.output_types) - {"nifti"} else {}),
                    **({"vertebrae": True} if outputs.vertebrae else {})},
        # Recorded only when the network ran on whole slices: a region run matches the whole-
        # slice one within 0.005 Dice (docs/performance.md), so records written before the
        # region existed stay valid, while switching --full-slice on or off is a new setting.
        **({"full_slice": True} if not config.region.enabled else {}),
        # Likewise the network's precision, recorded only when chosen explicitly: "auto" stays
        # within 0.003 Dice of float32 on the real cases (docs/performance.md).
        **({"precision": p.precision} if p.precision != "auto" else {}),
    }


def read_record(outdir: Path) -> dict[str, Any] | None:
    """The case's ``stats.json`` as a dict, or None when missing or unreadable."""
    try:
        record = json.loads((outdir / STATS).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_outputs(record: dict[str, Any] | None) -> set[str]:
    """Names a record says spineseg wrote; anything else in the folder is not spineseg's."""
    names = record.get("outputs") if record else None
    if not isinstance(names, list):
        return set()
    return {n for n in names if isinstance(n, str) and n in OUTPUT_NAMES}


def is_incomplete(record: dict[str, Any] | None) -> bool:
    return bool(record and record.get(INCOMPLETE))


def check_outputs(outdir: Path, cfg: OutputConfig, inputs: list[Path] | None = None) -> None:
    """Fail before any work if outputs exist (without overwrite) or would land on an input."""
    if cfg.mesh_format and cfg.mesh_format not in MESH_FORMATS:
        raise OutputError(f"unsupported mesh format {cfg.mesh_format!r} "
                          f"(use one of {', '.join(MESH_FORMATS)} or none)")
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: output path exists and is not a folder")
    # Found now, not after minutes of inference: a path below a regular file can never be made.
    resolved = outdir.resolve()
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{outdir}: cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{outdir}: cannot be created: {existing} is not writable")
    for src in inputs or []:
        s, o = src.resolve(), outdir.resolve()
        # Outputs inside an input folder would be mixed into a DICOM series or picked up as
        # cases by the next batch run.
        if s == o or (s.is_dir() and o.is_relative_to(s)):
            raise OutputError(f"{outdir}: output folder must not be (inside) the input folder {src}")
    record = read_record(outdir)
    planned = planned_outputs(outdir, cfg)
    if inputs:
        removable = [outdir / n for n in recorded_outputs(record)]
        check_not_inputs([*planned, *removable, outdir / LOCK_NAME], inputs)
    if not cfg.overwrite:
        own = recorded_outputs(record) if is_incomplete(record) else set()
        existing_files = [p for p in planned if p.exists() and p.name not in own]
        if existing_files:
            raise OutputError(f"{existing_files[0]}: already exists (use --overwrite to replace it)")


_STAGE_SUFFIX = ".partial-"


def _remove_stale_stages(out: Path, started: float) -> None:
    """Remove staging folders a killed run left beside ``out`` (hidden, so never seen otherwise).

    Called while this run holds the claim on ``out``: any live writer of this case would hold it
    too, so a staging folder of this case older than now belongs to a run that is gone.
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}{re.escape(_STAGE_SUFFIX)}[A-Za-z0-9_]+")
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        if not pattern.fullmatch(p.name):
            continue
        with contextlib.suppress(OSError):
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_mtime < started:
                shutil.rmtree(p, ignore_errors=True)


def vertebrae_of_segmentation(result: SegmentResult) -> VertebraeResult | None:
    """The named vertebrae of a ``segment()`` result, labelled in its input's grid.

    An empty mask has no vertebrae: that is logged as a warning and gives ``None``, so the
    segmentation's own outputs are still written.
    """
    try:
        return label_vertebrae(result.canonical_ct, result.canonical_mask,
                               result.probabilities, output_grid=result.mask)
    except InputError as exc:
        logging.getLogger("spineseg.vertebrae").warning("no vertebrae: %s", exc)
        return None


def write_case_outputs(result: SegmentResult, outdir: str | os.PathLike[str],
                       cfg: OutputConfig, settings: dict[str, Any] | None = None,
                       vertebrae: VertebraeResult | None = None) -> list[Path]:
    """Write mask, optional probabilities, mesh, preview and stats; returns the final paths.

    ``settings`` (see :func:`run_settings`) is recorded in ``stats.json`` so a later batch run can
    tell whether this case needs redoing. With ``cfg.overwrite`` the earlier set is replaced as a
    whole: recorded outputs this run does not produce are removed, other files are kept.
    """
    out = Path(outdir)
    source = result.stats.get("input", {}).get("source", "")
    inputs = [Path(source)] if source else []
    check_output_types(cfg.output_types, [Path(source) if source else None])
    started = time.time()
    with claim_output_folder(out):
        check_outputs(out, cfg, inputs)
        _remove_stale_stages(out, started)
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGE_SUFFIX}", dir=out.parent))
        except OSError as exc:
            raise OutputError(f"{out}: cannot write here ({exc.strerror})") from exc
        try:
            return _write_staged(result, out, stage, cfg, settings, source, vertebrae)
        except OSError as exc:
            raise OutputError(f"{out}: writing outputs failed ({exc.strerror or exc})") from exc
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _formats(result: SegmentResult, source: str, output_types: tuple[str, ...]
             ) -> vertebra_outputs.VertebraeFormats:
    """The formats asked for, the series (and acquisition) the case was read from, and the
    algorithm's identity: what a DICOM-SEG of the spine or of the vertebrae references."""
    recorded = result.stats.get("input", {})
    series = recorded.get("series_uid")
    if series is not None and recorded.get("acquisition"):
        series = f"{series}:{recorded['acquisition']}"
    model = result.stats.get("model", {})
    return vertebra_outputs.VertebraeFormats(
        output_types, series_folder=Path(source) if source else None, series_uid=series,
        dicom_info=DicomSegInfo(model_sha256=str(model.get("sha256", "")),
                                model_name=str(model.get("name", ""))))


def _write_staged(result: SegmentResult, out: Path, stage: Path, cfg: OutputConfig,
                  settings: dict[str, Any] | None, source: str,
                  vertebrae: VertebraeResult | None = None) -> list[Path]:
    write_image(result.mask, stage / OUTPUT_FILES["nifti"])
    if "seg-nrrd" in cfg.output_types:
        write_seg_nrrd(result.mask, stage / OUTPUT_FILES["seg-nrrd"])
    dicom = _formats(result, source, cfg.output_types)
    if "dicom-seg" in cfg.output_types:
        write_dicom_seg(result.mask, source, stage / OUTPUT_FILES["dicom-seg"],
                        series_uid=dicom.series_uid, info=dicom.dicom_info)
    if cfg.probabilities and result.probabilities is not None:
        write_image(result.probabilities, stage / "spine_prob.nii.gz")
    if cfg.mesh_format and result.mesh is not None:
        write_mesh(result.mesh, stage / f"spine.{cfg.mesh_format}")
    if cfg.preview:
        save_preview(result.canonical_ct, result.canonical_mask, result.mesh,
                     stage / "preview.png", title=Path(source).name if source else "")
    if vertebrae is not None:
        vertebra_outputs.write_vertebrae_files(vertebrae, stage, mesh=bool(cfg.mesh_format),
                                               preview=cfg.preview, formats=dicom,
                                               title=Path(source).name if source else "")
    names = sorted({p.name for p in stage.iterdir()} | {STATS})
    stats = dict(result.stats, **case_quality(result), outputs=names)
    if vertebrae is not None:
        stats.update(vertebra_outputs.vertebrae_stats(vertebrae))
    if settings is not None:
        stats["settings"] = settings
    (stage / STATS).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")

    earlier = recorded_outputs(read_record(out))
    stale = sorted(earlier - set(names))
    # First a record of every file about to change: a crash from here on leaves a case that
    # is marked unfinished and whose files are all known to be spineseg's.
    write_text_atomic(out / STATS, json.dumps({INCOMPLETE: True,
                                               "outputs": sorted(earlier | set(names))}) + "\n",
                      overwrite=True)
    written = []
    for name in names:
        if name != STATS:  # stats.json last: its presence marks a complete case
            os.replace(stage / name, out / name)
            written.append(out / name)
    for name in stale:
        p = out / name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(p.lstat().st_mode):  # a link or folder there is not what we wrote
                p.unlink()
    os.replace(stage / STATS, out / STATS)
    written.append(out / STATS)
    return written
