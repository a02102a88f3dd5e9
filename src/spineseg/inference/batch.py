"""Segment a folder of cases: model loaded once, finished cases skipped, failures isolated.

A cohort can be split over cluster job-array tasks with ``shard=(i, n)``: task *i* (0-based)
takes every *n*-th case of the name-sorted list, so tasks never overlap and need no coordination.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spineseg.errors import InputError, PartialFailure, SpinesegError
from spineseg.inference.model_file import SegmentationModel
from spineseg.inference.outputs import OutputConfig, check_outputs, write_case_outputs
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.io import image_extension, list_dicom_series, write_text_atomic

log = logging.getLogger(__name__)

@dataclass
class CaseOutcome:
    case: str
    source: str
    status: str  # "done" | "skipped" | "failed"
    message: str = ""
    spine_volume_ml: float | None = None
    seconds: float = 0.0


@dataclass
class BatchResult:
    outcomes: list[CaseOutcome] = field(default_factory=list)
    summary_path: Path | None = None

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def is_dicom_folder(path: Path) -> bool:
    try:
        return path.is_dir() and bool(list_dicom_series(path))
    except SpinesegError:
        return False


def case_id(path: Path) -> str:
    ext = image_extension(path)
    return path.name[: -len(ext)] if ext else path.name


def find_cases(folder: Path) -> list[Path]:
    """Image files and sub-folders (DICOM series) directly inside ``folder``, sorted by name."""
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror})") from exc
    if not children:
        raise InputError(f"{folder}: empty folder (expected a CT file, a DICOM series folder or "
                         "a folder of such cases)")
    cases = []
    for child in children:
        if child.name.startswith("."):
            continue
        if child.is_dir() or image_extension(child):
            cases.append(child)
    if not cases:
        raise InputError(f"{folder}: no CT files or DICOM folders found")
    return cases


def segment_batch(
    folder: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    model: SegmentationModel,
    config: SegmentConfig | None = None,
    outputs: OutputConfig | None = None,
    shard: tuple[int, int] = (0, 1),
    on_case: Callable[[CaseOutcome], None] | None = None,
) -> BatchResult:
    """Segment every case of ``folder`` into ``outdir/<case>/``; raise PartialFailure at the end
    if any case failed (after writing ``summary.csv``)."""
    src, out = Path(folder), Path(outdir)
    ocfg = outputs or OutputConfig()
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise InputError(f"invalid shard {index}/{count}: need 0 <= I < N")
    check_outputs(out, OutputConfig(mesh_format=ocfg.mesh_format, overwrite=True), [src])
    cases = find_cases(src)[index::count]
    result = BatchResult()
    for path in cases:
        cid = case_id(path)
        case_out = out / cid
        t = time.perf_counter()
        if (case_out / "stats.json").exists() and not ocfg.overwrite:
            outcome = CaseOutcome(cid, str(path), "skipped", "already done")
        else:
            try:
                res = segment(path, model, config)
                write_case_outputs(res, case_out, ocfg)
                outcome = CaseOutcome(cid, str(path), "done",
                                      spine_volume_ml=res.stats["spine_volume_ml"])
            except SpinesegError as exc:
                outcome = CaseOutcome(cid, str(path), "failed", " ".join(str(exc).split()))
        outcome.seconds = round(time.perf_counter() - t, 2)
        result.outcomes.append(outcome)
        if on_case is not None:
            on_case(outcome)
    name = "summary.csv" if count == 1 else f"summary-shard{index}of{count}.csv"
    result.summary_path = write_text_atomic(out / name, _summary_csv(result.outcomes),
                                            overwrite=True)
    if result.failed:
        raise PartialFailure(f"{len(result.failed)} of {len(cases)} cases failed "
                             f"(see {result.summary_path})")
    return result


def _summary_csv(outcomes: list[CaseOutcome]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "source", "status", "message", "spine_volume_ml", "seconds"])
    for o in outcomes:
        w.writerow([o.case, o.source, o.status, o.message,
                    "" if o.spine_volume_ml is None else o.spine_volume_ml, o.seconds])
    return buf.getvalue()
