"""Markdown (and JSON) tables: our numbers next to the paper's, plus a reading computed from them.

The reading is generated, never written by hand: rankings compared with Kendall's τ, paired
differences in DSC points next to the paper's, and each difference set against the seed spread
(√(SD₁² + SD₂²)), so a reader sees at once which of the paper's claims the numbers support.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from scipy.stats import kendalltau

from spineseg import __version__
from spineseg.data.manifest import SPLITS, Manifest
from spineseg.experiments.profiles import Profile
from spineseg.experiments.runner import CellSummary
from spineseg.experiments.specs import (
    LOSS_LABELS,
    LOSSES,
    NETWORK_LABELS,
    NETWORKS,
    Cell,
    TableSpec,
)
from spineseg.io import write_text_atomic

__all__ = [
    "ReportContext",
    "dataset_summary",
    "hardware_summary",
    "reading",
    "table_json",
    "table_markdown",
]


@dataclass(frozen=True)
class ReportContext:
    """Everything a table states besides the numbers: how, when, where and on what."""

    command: str
    date: str
    hardware: str
    dataset: tuple[str, ...]
    profile: Profile
    seeds: int
    test_cases: tuple[str, ...]
    test_note: str
    train_slices: int


def hardware_summary(device: str) -> str:
    """CPU model, cores, torch threads and the GPU if one was used (for the table header)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = (f"CPU {cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    else:
        text += "; no GPU used"
    return f"{text}; spineseg {__version__}"


def dataset_summary(manifest: Manifest, root: Path) -> tuple[str, ...]:
    """One line per split: number of cases, patients and kinds (real CT / phantom)."""
    lines = [f"dataset `{root}` ({manifest.layout or 'prepared'} layout, in-plane "
             f"{'×'.join(f'{s:g}' for s in manifest.preprocessing['spacing_xy'])} mm)"]
    for split in SPLITS:
        ids = manifest.case_ids(split)
        kinds = Counter(manifest.cases[c].kind for c in ids)
        patients = {manifest.cases[c].patient for c in ids}
        kind_text = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        slices = sum(manifest.cases[c].slices for c in ids)
        shown = ", ".join(ids) if len(ids) <= 8 else ", ".join(ids[:8]) + ", …"
        lines.append(f"{split}: {_count(len(ids), 'case')} ({kind_text}; "
                     f"{_count(len(patients), 'patient')}, {_count(slices, 'slice')})"
                     f"{': ' + shown if ids else ''}")
    return tuple(lines)


# --------------------------------------------------------------------------- formatting


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _scale(table: TableSpec) -> float:
    return 1.0 if table.percent else 0.01


def _num(value: float | None, table: TableSpec) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2f}" if table.percent else f"{value:.4f}"


def _ours(summary: CellSummary | None, metric: str, table: TableSpec) -> str:
    if summary is None:
        return "not run"
    s = _scale(table)
    mean, sd = getattr(summary, f"{metric}_mean") * s, getattr(summary, f"{metric}_sd") * s
    if summary.n < 2:  # the header says "one seed"
        return _num(mean, table)
    return f"{_num(mean, table)} ± {_num(sd, table)}"


def _get(summaries: dict[str, CellSummary], cell: Cell) -> CellSummary | None:
    return summaries.get(cell.run.key)


def _table1_rows(table: TableSpec, summaries: dict[str, CellSummary]) -> list[str]:
    head = ["network", "metric", *(LOSS_LABELS[loss] for loss in LOSSES)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for net in NETWORKS:
        for metric in ("dsc", "iou"):
            cells = []
            for loss in LOSSES:
                cell = table.cell(f"{net}-{loss}")
                paper = getattr(cell, f"paper_{metric}")
                ours = _ours(_get(summaries, cell), metric, table)
                cells.append(ours if loss == "dicebce" else f"{ours} (paper {_num(paper, table)})")
            label = "DSC" if metric == "dsc" else "IoU"
            rows.append(f"| {NETWORK_LABELS[net]} | {label} | " + " | ".join(cells) + " |")
    return rows


def _row_table(table: TableSpec, summaries: dict[str, CellSummary]) -> list[str]:
    desc = [name for name, _ in table.cells[0].columns]
    head = [*desc, "DSC (ours)", "DSC (paper)"]
    if table.has_iou:
        head += ["IoU (ours)", "IoU (paper)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in table.cells:
        s = _get(summaries, cell)
        vals = [v for _, v in cell.columns]
        vals += [_ours(s, "dsc", table), _num(cell.paper_dsc, table)]
        if table.has_iou:
            vals += [_ours(s, "iou", table), _num(cell.paper_iou, table)]
        rows.append("| " + " | ".join(vals) + " |")
    return rows


# --------------------------------------------------------------------------- computed reading


_TIE = 0.005  # DSC points: values closer than the printed precision are a tie


def _order(names: Sequence[str], values: Sequence[float]) -> str:
    """``a > b = c`` style ranking; ties (within the printed precision) joined by ``=``."""
    pairs = sorted(zip(values, names, strict=True), key=lambda p: -p[0])
    text = pairs[0][1]
    for (prev, _), (value, name) in pairwise(pairs):
        text += (" = " if prev - value < _TIE else " > ") + name
    return text


def _compare_rank(label: str, names: Sequence[str], ours: Sequence[float],
                  paper: Sequence[float]) -> str:
    if len(names) < 2:
        return ""
    same = _order(names, ours) == _order(names, paper)
    if same:
        verdict = "same order: reproduces"
    elif max(ours) - min(ours) < _TIE:
        verdict = "ours all tied: no ranking to compare"
    else:
        tau = float(kendalltau(ours, paper).statistic)
        verdict = f"order differs (Kendall τ = {tau:+.2f})"
    return (f"- {label}: ours {_order(names, ours)}; paper {_order(names, paper)} — {verdict}.")


def _delta(label: str, a: CellSummary, b: CellSummary, paper_a: float | None,
           paper_b: float | None, table: TableSpec) -> str:
    """Difference a − b in DSC points, next to the paper's and against the seed spread."""
    d = a.dsc_mean - b.dsc_mean
    text = f"- {label}: {d:+.2f} DSC points"
    if paper_a is not None and paper_b is not None:
        pd = (paper_a - paper_b) / _scale(table)
        if abs(d) < _TIE:
            agree = "ours: no difference"
        else:
            agree = "same sign" if (d > 0) == (pd > 0) else "opposite sign"
        text += f" (paper {pd:+.2f}; {agree})"
    else:
        text += " (no paper value)"
    if a.n > 1 and b.n > 1:
        spread = math.hypot(a.dsc_sd, b.dsc_sd)
        text += ("; larger than" if abs(d) > spread else "; within") + \
            f" the seed spread √(SD₁²+SD₂²) = {spread:.2f}"
    else:
        text += "; one seed, spread unknown"
    return text + "."


def _gap(table: TableSpec, summaries: dict[str, CellSummary]) -> str:
    gaps = [summaries[c.run.key].dsc_mean - c.paper_dsc / _scale(table)
            for c in table.cells if c.paper_dsc is not None and c.run.key in summaries]
    if not gaps:
        return ""
    mean = sum(gaps) / len(gaps)
    return (f"- Level: our DSC is on average {abs(mean):.2f} points "
            f"{'below' if mean < 0 else 'above'} the paper's over {len(gaps)} cells "
            f"(range {min(gaps):+.2f} … {max(gaps):+.2f}).")


def _reading_table1(table: TableSpec, s: dict[str, CellSummary]) -> list[str]:
    out = []
    for loss in LOSSES:
        cells = [table.cell(f"{n}-{loss}") for n in NETWORKS]
        with_paper = [c for c in cells if c.paper_dsc is not None and c.run.key in s]
        out.append(_compare_rank(f"Networks, {LOSS_LABELS[loss]}",
                                 [dict(c.columns)["network"] for c in with_paper],
                                 [s[c.run.key].dsc_mean for c in with_paper],
                                 [c.paper_dsc for c in with_paper]))  # type: ignore[misc]
    for loss in LOSSES:
        for other in ("unet", "fcn", "segnet"):
            a, b = table.cell(f"msrunet-{loss}"), table.cell(f"{other}-{loss}")
            if a.run.key in s and b.run.key in s:
                out.append(_delta(f"proposed vs {NETWORK_LABELS[other]}, {LOSS_LABELS[loss]}",
                                  s[a.run.key], s[b.run.key], a.paper_dsc, b.paper_dsc, table))
    for net in NETWORKS:
        cells = [table.cell(f"{net}-{loss}") for loss in LOSSES]
        with_paper = [c for c in cells if c.paper_dsc is not None and c.run.key in s]
        out.append(_compare_rank(f"Losses, {NETWORK_LABELS[net]}",
                                 [dict(c.columns)["loss"] for c in with_paper],
                                 [s[c.run.key].dsc_mean for c in with_paper],
                                 [c.paper_dsc for c in with_paper]))  # type: ignore[misc]
        a, b = table.cell(f"{net}-dicebce"), table.cell(f"{net}-dice")
        if a.run.key in s and b.run.key in s:
            out.append(_delta(f"{NETWORK_LABELS[net]}: Dice+BCE vs Dice loss (the authors' "
                              "suggestion)", s[a.run.key], s[b.run.key], None, None, table))
    out.append(_gap(table, s))
    return [line for line in out if line]


def _reading_rows(table: TableSpec, s: dict[str, CellSummary], reference: str) -> list[str]:
    ran = [c for c in table.cells if c.run.key in s]
    out = [_compare_rank("Cases by DSC", [f"case {dict(c.columns)['case']}" for c in ran],
                         [s[c.run.key].dsc_mean for c in ran],
                         [c.paper_dsc / _scale(table) for c in ran])]  # type: ignore[operator]
    ref = table.cell(reference)
    if ref.run.key in s:
        for c in ran:
            if c.name != reference:
                out.append(_delta(f"case {dict(c.columns)['case']} vs case "
                                  f"{dict(ref.columns)['case']}", s[c.run.key],
                                  s[ref.run.key], c.paper_dsc, ref.paper_dsc, table))
    out.append(_gap(table, s))
    return [line for line in out if line]


def reading(table: TableSpec, summaries: dict[str, CellSummary]) -> list[str]:
    """Bullet lines comparing our rankings and differences with the paper's (computed)."""
    if table.name == "table1":
        return _reading_table1(table, summaries)
    if table.name == "table2":
        return _reading_rows(table, summaries, reference="case1")
    return _reading_rows(table, summaries, reference="case3")


# --------------------------------------------------------------------------- documents


def table_markdown(table: TableSpec, summaries: dict[str, CellSummary],
                   context: ReportContext) -> str:
    """The full Markdown page of one table."""
    p = context.profile
    seeds = (f"mean ± sample SD (ddof = 1) over {context.seeds} seeds (0…{context.seeds - 1})"
             if context.seeds > 1 else "one seed (0): no spread")
    lines = [f"# {table.title}", "",
             "Our numbers next to the paper's (Jin et al. 2021: in parentheses or in its own "
             "column; — where it printed none, nothing for Dice+BCE, which it did not run)."
             f" Ours: {seeds}, pooled {'percent' if table.percent else 'fraction'} over the "
             "test split. min–max per cell are in the JSON next to this file.", ""]
    lines += _table1_rows(table, summaries) if table.name == "table1" else \
        _row_table(table, summaries)
    notes = [f"- {dict(c.columns).get('case', c.name)}: {c.note}" for c in table.cells
             if c.note and table.name != "table1"]
    if notes:
        lines += ["", "Shared runs and mappings:", *notes]
    lines += ["", "## Reading (computed from the numbers above)", "",
              *reading(table, summaries), "",
              "## How these numbers were made", "",
              f"- Command: `{context.command}`",
              f"- Date: {context.date}",
              f"- Hardware: {context.hardware}",
              f"- Profile `{p.name}`: {p.purpose}.",
              f"- Budget per cell (identical for every cell): {p.budget()}.",
              f"- On this dataset: {_count(context.train_slices, 'training slice')} → "
              f"{p.steps_per_epoch(context.train_slices)} steps per epoch, "
              f"{p.epochs * p.steps_per_epoch(context.train_slices)} updates per run at most"
              + (" (fewer steps than the profile's cap: the training split is small)"
                 if p.max_steps_per_epoch is not None
                 and p.steps_per_epoch(context.train_slices) < p.max_steps_per_epoch else "")
              + ".",
              ]
    diffs = p.differences_from_paper()
    if diffs:
        lines.append("- Scaled down from the paper's protocol: " + "; ".join(diffs) + ".")
    lines += [f"- Test set: {', '.join(context.test_cases)} ({context.test_note}); whole "
              "slices, no post-processing; DSC = 2|G∩P|/(|G|+|P|) and IoU = |G∩P|/|G∪P| with "
              "the counts summed over all test slices (the paper's formulas, pooled).",
              "- Dataset:", *(f"  - {line}" for line in context.dataset), ""]
    return "\n".join(lines)


def table_json(table: TableSpec, summaries: dict[str, CellSummary],
               context: ReportContext) -> dict[str, Any]:
    """Machine-readable companion of :func:`table_markdown` (min–max included)."""
    cells = []
    for c in table.cells:
        s = summaries.get(c.run.key)
        cells.append({"cell": c.name, "run": c.run.key, "model": c.run.model,
                      "loss": c.run.loss, "model_config": c.run.config_dict(),
                      "columns": dict(c.columns), "paper_dsc": c.paper_dsc,
                      "paper_iou": c.paper_iou, "paper_scale": "percent" if table.percent
                      else "fraction", "ours_percent": s.to_dict() if s else None,
                      "note": c.note})
    return {"table": table.name, "title": table.title, "command": context.command,
            "date": context.date, "hardware": context.hardware, "profile": context.profile.name,
            "seeds": context.seeds, "test_cases": list(context.test_cases),
            "cells": cells, "reading": reading(table, summaries)}


def write_table(table: TableSpec, summaries: dict[str, CellSummary], context: ReportContext,
                out_dir: Path) -> list[Path]:
    """Write ``<table>.md`` and ``<table>.json`` into ``out_dir`` (replacing earlier versions)."""
    md = write_text_atomic(out_dir / f"{table.name}.md",
                           table_markdown(table, summaries, context), overwrite=True)
    js = write_text_atomic(out_dir / f"{table.name}.json",
                           json.dumps(table_json(table, summaries, context), indent=2) + "\n",
                           overwrite=True)
    return [md, js]
