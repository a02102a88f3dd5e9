"""Write an :class:`EvaluationResult` as ``metrics.csv``, ``summary.json`` and ``summary.md``.

All three are written atomically; an existing file is replaced only with ``overwrite=True``.
NaN (an undefined metric, see :mod:`spineseg.evaluation.metrics`) is written as an empty CSV
cell, ``null`` in JSON and ``n/a`` in Markdown, so no reader mistakes it for a number.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from spineseg.errors import OutputError
from spineseg.evaluation.metrics import PER_VOLUME_FIELDS, EvaluationResult, VolumeMetrics
from spineseg.io import check_output_path, write_text_atomic

REPORT_FILES: tuple[str, ...] = ("metrics.csv", "summary.json", "summary.md")

_DEFINITIONS = """\
Definitions:
- **DSC / IoU (paper)**: DSC = 2|G∩P| / (|G| + |P|), IoU = |G∩P| / |G∪P|, with |G∩P|, |G|, |P|
  summed over every slice of every test case before dividing (the literal reading of the paper's
  formulas over the test set).
- **Mean slice Dice**: mean Dice over the axial slices with spine in the reference or the
  prediction (slices empty in both are skipped).
- **Per-volume** rows: Dice, IoU, 95 % Hausdorff distance (HD95) and symmetric average surface
  distance (ASD) in mm with the real voxel spacing, sensitivity, precision (MONAI).
- Empty masks: Dice = IoU = 1 and distances 0 when both are empty; distances are undefined (n/a)
  when exactly one is empty, sensitivity when the reference is empty, precision when the
  prediction is empty. Undefined values are excluded from the means and counted.
"""


def _clean(value: Any) -> Any:
    """NaN/inf -> None recursively, so the JSON is strict (no NaN tokens)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _fmt(value: float, percent: bool = False, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def metrics_csv(cases: tuple[VolumeMetrics, ...]) -> str:
    """Per-case CSV text (one row per volume)."""
    buf = io.StringIO()
    fields = list(VolumeMetrics.__dataclass_fields__)
    fields.remove("slice_dice")
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                         for k, v in case.row().items()})
    return buf.getvalue()


def summary_dict(result: EvaluationResult) -> dict[str, Any]:
    """JSON-able summary: pooled metrics, per-volume means, per-case rows and the source."""
    return _clean({
        "pooled": result.pooled.to_dict(),
        "cases": [c.row() for c in result.cases],
        "source": result.source,
        "definitions": _DEFINITIONS,
    })


def summary_markdown(result: EvaluationResult) -> str:
    """A short human-readable report with the paper-style numbers first."""
    p = result.pooled
    lines = [
        "# Segmentation evaluation",
        "",
        f"{p.n_cases} case(s), {p.n_slices} axial slices, {p.n_spine_slices} with spine.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| DSC (paper, pooled over slices) | {_fmt(p.dsc, percent=True)} % |",
        f"| IoU (paper, pooled over slices) | {_fmt(p.iou, percent=True)} % |",
        f"| mean slice Dice (slices with spine) | {_fmt(p.mean_slice_dice, percent=True)} % |",
    ]
    for name in PER_VOLUME_FIELDS:
        pct = not name.endswith("_mm")
        unit = " %" if pct else " mm"
        undefined = f" ({p.n_undefined[name]} n/a)" if p.n_undefined[name] else ""
        lines.append(f"| per-volume {name} mean ± sd | {_fmt(p.mean[name], pct)} ± "
                     f"{_fmt(p.std[name], pct)}{unit}{undefined} |")
    lines += [
        "",
        "| case | Dice % | IoU % | HD95 mm | ASD mm | sensitivity % | precision % | slice Dice % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result.cases:
        lines.append(
            f"| {c.case} | {_fmt(c.dice, True)} | {_fmt(c.iou, True)} | {_fmt(c.hd95_mm)} | "
            f"{_fmt(c.asd_mm)} | {_fmt(c.sensitivity, True)} | {_fmt(c.precision, True)} | "
            f"{_fmt(c.mean_slice_dice, True)} |"
        )
    if result.source:
        lines += ["", "Source: " + ", ".join(f"{k} = `{v}`" for k, v in result.source.items())]
    lines += ["", _DEFINITIONS]
    return "\n".join(lines)


def check_report_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse early (before any evaluation work) if a report file exists and may not be replaced."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    for name in REPORT_FILES:
        check_output_path(out / name, overwrite)
    return out


def write_report(result: EvaluationResult, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the three report files into ``out_dir`` (created if needed); returns ``out_dir``.

    All targets are checked before anything is written, so a refused run leaves no mix of old
    and new files.
    """
    out = check_report_dir(out_dir, overwrite)
    write_text_atomic(out / "metrics.csv", metrics_csv(result.cases), overwrite)
    write_text_atomic(out / "summary.json",
                      json.dumps(summary_dict(result), indent=2, allow_nan=False) + "\n",
                      overwrite)
    write_text_atomic(out / "summary.md", summary_markdown(result) + "\n", overwrite)
    return out
