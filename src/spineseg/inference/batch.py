"""Segment a folder of cases: model loaded once, finished cases skipped, failures isolated.

A cohort holds image files, DICOM series sub-folders and TotalSegmentator-style case folders
(``<case>/ct.nii.gz``, or any one supported image per sub-folder). A case is named after its file
without the extension, or after its sub-folder; where two entries would share a name (``dup/``,
``dup.nii.gz``, ``dup.nrrd``), or a name would be that of the batch summary or report, the files
keep their extension in the name (``dup_nii_gz``, ``dup_nrrd``), so no case is ever dropped.

A finished case (``stats.json``) is skipped only when it was made from the same input with the
same model and settings; otherwise the run stops before any work and names what differs, unless
``overwrite``. Any failure of a case, whatever its type, is that case's failure: reported, written
to the summary, and the other cases are still done.

A cohort can be split over cluster job-array tasks with ``shard=(i, n)``: task *i* (0-based)
takes every *n*-th case of the name-sorted list, so tasks never overlap and need no coordination;
each writes its own ``summary-shard<i>of<n>.csv`` and ``report-shard<i>of<n>.html``.

After the cases, ``report.html`` shows every case of the run (skipped ones from their
``stats.json``) with its preview, figures and quality flags (:mod:`spineseg.report`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spineseg.errors import InputError, OutputError, PartialFailure, SpinesegError
from spineseg.export import check_output_types
from spineseg.inference.claim import LOCK_NAME, check_not_inputs, claim_output_folder
from spineseg.inference.model_file import SegmentationModel
from spineseg.inference.outputs import (
    OutputConfig,
    check_outputs,
    is_incomplete,
    planned_outputs,
    read_record,
    recorded_outputs,
    run_settings,
    vertebrae_of_segmentation,
    write_case_outputs,
)
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.io import image_extension, write_text_atomic
from spineseg.io.dicom import is_dicom_series_folder
from spineseg.report.cohort_html import ReportRow, write_cohort_report

log = logging.getLogger(__name__)

# The batch's own files: a case of that name keeps its extension, so its folder cannot clash.
_SUMMARY = re.compile(r"(summary(-shard\d+of\d+)?\.csv|report(-shard\d+of\d+)?\.html)",
                      re.IGNORECASE)


@dataclass
class CaseOutcome:
    case: str
    source: str
    status: str  # "done" | "skipped" | "failed"
    message: str = ""
    spine_volume_ml: float | None = None
    seconds: float = 0.0
    #: The case's quality flags (``{"code", "message"}``, as in its stats.json); a failed case
    #: has the one flag ``failed``.
    flags: list[dict[str, str]] = field(default_factory=list)


@dataclass
class BatchResult:
    outcomes: list[CaseOutcome] = field(default_factory=list)
    summary_path: Path | None = None
    report_path: Path | None = None

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


@dataclass(frozen=True)
class Case:
    """One cohort entry: ``entry`` as listed, ``source`` what is read (None: ``problem`` says why)."""

    name: str
    entry: Path
    source: Path | None
    problem: str = ""


def is_dicom_folder(path: Path) -> bool:
    return is_dicom_series_folder(path)


def _stem(path: Path) -> str:
    ext = image_extension(path)
    return path.name[: -len(ext)] if ext else path.name


def _folder_source(folder: Path) -> tuple[Path | None, str]:
    """What a case sub-folder holds: ``ct.*`` (TotalSegmentator), a DICOM series, or one image."""
    try:
        images = sorted(p for p in folder.iterdir()
                        if not p.name.startswith(".") and p.is_file() and image_extension(p))
    except OSError as exc:
        return None, f"{folder}: cannot list the folder ({exc.strerror})"
    named_ct = [p for p in images if _stem(p).lower() == "ct"]
    if len(named_ct) == 1:
        return named_ct[0], ""
    if len(named_ct) > 1:
        return None, (f"{folder}: holds several CT images ({', '.join(p.name for p in named_ct)}); "
                      "keep one per case folder")
    if is_dicom_folder(folder):
        return folder, ""
    if len(images) == 1:
        return images[0], ""
    if images:
        return None, (f"{folder}: holds {len(images)} images ({', '.join(p.name for p in images)}) "
                      "and none is named ct.*; keep one CT per case folder, or name it ct.nii.gz")
    return folder, ""  # the reader says what is wrong with it (empty, no DICOM files, …)


def _case_names(entries: list[Path]) -> list[str]:
    stems = [e.name if e.is_dir() else _stem(e) for e in entries]
    counts = Counter(s.casefold() for s in stems)
    names = []
    for entry, stem in zip(entries, stems, strict=True):
        clash = counts[stem.casefold()] > 1 and not entry.is_dir()
        if clash or _SUMMARY.fullmatch(stem):
            stem = entry.name.replace(".", "_")
        names.append(stem)
    counts = Counter(n.casefold() for n in names)
    clashes = sorted({e.name for e, n in zip(entries, names, strict=True) if counts[n.casefold()] > 1})
    if clashes:
        raise InputError(f"cases would share an output folder: {', '.join(clashes)}; rename them")
    return names


def find_cases(folder: Path) -> list[Case]:
    """The cases directly inside ``folder``, sorted by name (hidden entries ignored)."""
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror})") from exc
    if not children:
        raise InputError(f"{folder}: empty folder (expected a CT file, a DICOM series folder or "
                         "a folder of such cases)")
    entries = [c for c in children
               if not c.name.startswith(".") and (c.is_dir() or image_extension(c))]
    if not entries:
        raise InputError(f"{folder}: no CT files or DICOM folders found")
    cases = []
    for entry, name in zip(entries, _case_names(entries), strict=True):
        source, problem = _folder_source(entry) if entry.is_dir() else (entry, "")
        cases.append(Case(name, entry, source, problem))
    return cases


_OPTION = {  # settings key -> how a user changes it
    "model_sha256": "--model", "threshold": "the model's threshold", "series_uid": "--series",
    "predict.mirror": "--tta", "postprocess.enabled": "--no-postprocess", "mesh": "--mesh",
    "mesh.space": "--mesh-space", "mesh.max_faces": "--max-faces",
    "outputs.mesh_format": "--mesh", "outputs.probabilities": "--probabilities",
    "outputs.preview": "--no-preview", "outputs.output_types": "--output-type",
    "full_slice": "--full-slice", "precision": "--precision", "outputs.vertebrae": "--vertebrae",
}


def _differences(old: Any, new: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new))
                for d in _differences(old.get(k), new.get(k), f"{key}.{k}" if key else k)]
    return [] if old == new else [(key, old, new)]


def setting_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable list of output-shaping settings that differ, named by their option."""
    said: dict[str, str] = {}
    for key, old, new in _differences(recorded, json.loads(json.dumps(current))):
        label = _OPTION.get(key, key)
        if label in said:
            continue
        if key == "model_sha256":
            said[label] = (f"{label} (another model file: SHA-256 {str(old)[:12]}…, "
                           f"now {str(new)[:12]}…)")
        elif not isinstance(old, dict | list) and not isinstance(new, dict | list):
            said[label] = f"{label} ({key} was {old}, now {new})"
        else:
            said[label] = label
    return list(said.values())


def _same_source(recorded: str, case: Case, cohort: Path) -> bool:
    """Whether a record was made from this case's input (compared within the cohort, so a moved
    cohort still matches)."""
    if not recorded or case.source is None:
        return False
    k = len(case.source.relative_to(cohort).parts)
    return Path(recorded).parts[-k:] == case.source.resolve().parts[-k:]


def _earlier_run(case: Case, case_out: Path, cohort: Path,
                 settings: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The finished record of ``case`` (None if not finished) and how it differs from this run."""
    record = read_record(case_out)
    if record is None or is_incomplete(record):
        return None, []
    differs = []
    if not _same_source(str(record.get("input", {}).get("source", "")), case, cohort):
        differs.append(f"the input (was {record.get('input', {}).get('source', 'not recorded')})")
    recorded = record.get("settings")
    if isinstance(recorded, dict):
        differs += setting_differences(recorded, settings)
    else:
        differs.append("settings not recorded (written by an older spineseg)")
    return record, differs


def _failure_message(exc: Exception) -> str:
    if isinstance(exc, SpinesegError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = f"out of memory (MemoryError{': ' + str(exc) if str(exc) else ''})"
    else:
        text = f"internal error: {type(exc).__name__}: {exc}"
    return " ".join(text.split())


def segment_batch(
    folder: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    model: SegmentationModel,
    config: SegmentConfig | None = None,
    outputs: OutputConfig | None = None,
    shard: tuple[int, int] = (0, 1),
    on_case: Callable[[CaseOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> BatchResult:
    """Segment every case of ``folder`` into ``outdir/<case>/``; raise PartialFailure at the end
    if any case failed (after writing the summary).

    Everything that can be refused up front is, before ``on_start(number_of_cases)`` is called:
    bad shard, unusable output folder, outputs that would land on an input, case names that
    cannot be made unique, finished cases made with other settings (without ``overwrite``).
    """
    src, out = Path(folder), Path(outdir)
    cfg = config or SegmentConfig()
    ocfg = outputs or OutputConfig()
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise InputError(f"invalid shard {index}/{count}: need 0 <= I < N")
    check_outputs(out, OutputConfig(mesh_format=ocfg.mesh_format, overwrite=True), [src])
    cases = find_cases(src)[index::count]
    settings = run_settings(model, cfg, ocfg)
    suffix = "" if count == 1 else f"-shard{index}of{count}"
    summary_name = f"summary{suffix}.csv"
    check_output_types(ocfg.output_types, [c.source for c in cases if not c.problem])
    lock = LOCK_NAME if count == 1 else f"{LOCK_NAME}-shard{index}of{count}"
    with claim_output_folder(out, lock):
        earlier = {}
        for case in cases:
            case_out = out / case.name
            check_not_inputs([case_out, *planned_outputs(case_out, ocfg),
                              *(case_out / n for n in recorded_outputs(read_record(case_out)))],
                             [src, *([case.source] if case.source else [])])
            earlier[case.name] = _earlier_run(case, case_out, src, settings)
        if not ocfg.overwrite:
            changed = [(c, earlier[c.name][1]) for c in cases
                       if earlier[c.name][0] is not None and earlier[c.name][1]]
            if changed:
                case, differs = changed[0]
                more = f" (and {len(changed) - 1} more cases)" if len(changed) > 1 else ""
                raise OutputError(f"{out / case.name}: segmented earlier with other settings: "
                                  f"{'; '.join(differs)}{more}; use --overwrite to redo, or "
                                  "another output folder")
        if on_start is not None:
            on_start(len(cases))
        result = BatchResult()
        for case in cases:
            outcome = _run_case(case, out / case.name, model, cfg, ocfg, settings,
                                earlier[case.name][0])
            result.outcomes.append(outcome)
            if on_case is not None:
                on_case(outcome)
        result.summary_path = write_text_atomic(out / summary_name,
                                                _summary_csv(result.outcomes), overwrite=True)
        result.report_path = write_cohort_report(out / f"report{suffix}.html",
                                                 _report_rows(result.outcomes, out))
    if result.failed:
        raise PartialFailure(f"{len(result.failed)} of {len(cases)} cases failed "
                             f"(see {result.summary_path})")
    return result


def _flags(record: dict[str, Any] | None) -> list[dict[str, str]]:
    flags = record.get("flags") if record else None
    return [f for f in flags if isinstance(f, dict)] if isinstance(flags, list) else []


def _run_case(case: Case, case_out: Path, model: SegmentationModel, cfg: SegmentConfig,
              ocfg: OutputConfig, settings: dict[str, Any],
              record: dict[str, Any] | None) -> CaseOutcome:
    t = time.perf_counter()
    source = str(case.source or case.entry)
    if record is not None and not ocfg.overwrite:
        # The up-front check passed, so this case was made from this input with these settings.
        seconds = record.get("runtime_s", {}).get("total_s", 0.0)
        return CaseOutcome(case.name, source, "skipped", "already done",
                           spine_volume_ml=record.get("spine_volume_ml"),
                           seconds=seconds if isinstance(seconds, int | float) else 0.0,
                           flags=_flags(record))
    if case.problem:
        return CaseOutcome(case.name, source, "failed", case.problem,
                           flags=[{"code": "failed", "message": case.problem}])
    try:
        check_outputs(case_out, ocfg, [case.source])
        res = segment(case.source, model, cfg)
        vertebrae = vertebrae_of_segmentation(res) if ocfg.vertebrae else None
        write_case_outputs(res, case_out, ocfg, settings, vertebrae)
        outcome = CaseOutcome(case.name, source, "done",
                              spine_volume_ml=res.stats["spine_volume_ml"],
                              flags=_flags(read_record(case_out)))
    except Exception as exc:  # any failure is this case's: the cohort goes on
        log.debug("case %s failed", case.name, exc_info=True)
        message = _failure_message(exc)
        outcome = CaseOutcome(case.name, source, "failed", message,
                              flags=[{"code": "failed", "message": message}])
    outcome.seconds = round(time.perf_counter() - t, 2)
    return outcome


def _report_rows(outcomes: list[CaseOutcome], out: Path) -> list[ReportRow]:
    rows = []
    for o in outcomes:
        record = {} if o.status == "failed" else (read_record(out / o.case) or {})
        preview = out / o.case / "preview.png"
        rows.append(ReportRow(o.case, o.status, o.message, o.seconds, record,
                              preview if "preview.png" in recorded_outputs(record) else None))
    return rows


def _summary_csv(outcomes: list[CaseOutcome]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "source", "status", "message", "spine_volume_ml", "seconds", "flags"])
    for o in outcomes:
        w.writerow([o.case, o.source, o.status, o.message,
                    "" if o.spine_volume_ml is None else o.spine_volume_ml, o.seconds,
                    ";".join(str(f.get("code", "")) for f in o.flags)])
    return buf.getvalue()
