"""Markdown (and JSON) tables: our numbers next to the paper's, plus a reading computed from them.

The reading is generated, never written by hand: rankings compared with Kendall's τ, paired
differences in DSC points next to the paper's, and each difference set against the seed spread
(√(SD₁² + SD₂²)), so a reader sees at once which of the paper's claims the numbers support. The
claims that matter most (proposed vs U-Net, the attention and multi-scale ablations) also get a
paired test over seeds × test patients, and every cell states whether its validation curve met
the plateau criterion.
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
from spineseg.errors import InputError
from spineseg.experiments.convergence import PLATEAU_CRITERION, PairedTest, paired_test
from spineseg.experiments.profiles import Profile
from spineseg.experiments.runner import CellSummary, SeedResult, summarize
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
    "PAIRED_CLAIMS",
    "ReportContext",
    "claim_tests",
    "dataset_summary",
    "hardware_summary",
    "reading",
    "split_summary",
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
    split: tuple[str, ...] = ()


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


def split_summary(manifest: Manifest) -> tuple[str, ...]:
    """Which patients are in which split, real and phantom counted apart (printed in the tables).

    The split is part of the dataset (``spineseg prepare --val/--test``) and its fingerprint is
    recorded in the experiment folder before the first cell trains, so it cannot move once
    scores exist.
    """
    lines = []
    for split in SPLITS:
        real = sorted({manifest.cases[c].patient for c in manifest.case_ids(split, ("real",))})
        phantoms = len({manifest.cases[c].patient for c in manifest.case_ids(split, ("phantom",))})
        parts = [f"real patient{'s' if len(real) > 1 else ''} {', '.join(real)}" if real
                 else "no real patient"]
        if phantoms:
            parts.append(_count(phantoms, "phantom"))
        lines.append(f"{split}: {'; '.join(parts)}")
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


# The paired claims: (cell A, cell B, what A − B measures). Table 3's case 1 drops the channel
# attention, case 2 the multi-scale hierarchy, case 3 is the full unit.
PAIRED_CLAIMS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "table1": (("msrunet-dice", "unet-dice", "proposed vs U-Net, Dice loss"),),
    "table3": (("case3", "case1", "channel attention (case 3 − case 1)"),
               ("case3", "case2", "multi-scale hierarchy (case 3 − case 2)")),
}


def _by_seed(results: Sequence[SeedResult]) -> dict[int, dict[str, float]]:
    """seed → {test patient: DSC}; results that predate per-patient DSC use their per-case DSC."""
    return {r.seed: dict(r.patient_dice if r.patient_dice is not None else r.case_dice)
            for r in results}


def claim_tests(table: TableSpec,
                results: dict[str, list[SeedResult]]) -> list[tuple[str, PairedTest | None]]:
    """The paired test of each of the table's claims; None where a cell has no result yet."""
    out: list[tuple[str, PairedTest | None]] = []
    for a, b, label in PAIRED_CLAIMS.get(table.name, ()):
        ra, rb = results.get(table.cell(a).run.key), results.get(table.cell(b).run.key)
        test = None
        if ra and rb:
            try:
                test = paired_test(_by_seed(ra), _by_seed(rb))
            except InputError:
                test = None
        out.append((label, test))
    return out


def _claim_lines(table: TableSpec, results: dict[str, list[SeedResult]]) -> list[str]:
    lines = []
    for label, test in claim_tests(table, results):
        if test is None:
            lines.append(f"- Paired test, {label}: not yet run (a cell has no finished seed).")
            continue
        verdict = ("no evidence of a difference" if test.p is None or test.p >= 0.05 else
                   f"A {'better' if test.median_diff > 0 else 'worse'} at the 5 % level")
        lines.append(f"- Paired test, {label}: {test.describe()} — {verdict}.")
    return lines


def _on_common_seeds(table: TableSpec, summaries: dict[str, CellSummary],
                     results: dict[str, list[SeedResult]]) -> tuple[dict[str, CellSummary], str]:
    """The summaries restricted to the seeds every run of ``table`` has finished, and a line
    saying so when that drops any.

    A mean over two seeds set against a single run mixes seed luck into the comparison (seeds
    of one cell differ by several points at a short budget), so rankings and differences compare
    like with like; the table itself still shows every finished seed.
    """
    keys = sorted({c.run.key for c in table.cells if results.get(c.run.key)})
    if not keys:
        return summaries, ""
    common = set.intersection(*({r.seed for r in results[k]} for k in keys))
    if not common or all(len(results[k]) == len(common) for k in keys):
        return summaries, ""
    out = dict(summaries)
    for k in keys:
        out[k] = summarize(k, [r for r in results[k] if r.seed in common])
    seeds = ", ".join(str(s) for s in sorted(common))
    return out, (f"- Compared on seed{'s' if len(common) > 1 else ''} {seeds}, the ones every run "
                 "of this table has finished; the table above also averages the seeds some runs "
                 "have beyond them.")


def reading(table: TableSpec, summaries: dict[str, CellSummary],
            results: dict[str, list[SeedResult]] | None = None) -> list[str]:
    """Bullet lines comparing our rankings and differences with the paper's (computed).

    With per-seed ``results``, the table's paired claims (:data:`PAIRED_CLAIMS`) are tested too.
    """
    note = ""
    if results is not None:
        summaries, note = _on_common_seeds(table, summaries, results)
    if table.name == "table1":
        lines = _reading_table1(table, summaries)
    elif table.name == "table2":
        lines = _reading_rows(table, summaries, reference="case1")
    else:
        lines = _reading_rows(table, summaries, reference="case3")
    if results is not None:
        lines += _claim_lines(table, results)
    return ([note] if note else []) + lines


def _convergence(results: Sequence[SeedResult] | None) -> dict[str, Any]:
    """Per cell: seeds finished, seeds whose curve met the plateau criterion, gains, updates."""
    if not results:
        return {"seeds": 0, "plateau_met": 0, "plateau_known": 0, "gains": [], "best_epochs": [],
                "best_val_dsc": [], "epochs": []}
    verdicts = [r.plateau_verdict for r in results]
    return {"seeds": len(results),
            "plateau_met": sum(1 for v in verdicts if v is not None and v.met),
            "plateau_known": sum(1 for v in verdicts if v is not None),
            "gains": [None if v is None else v.gain for v in verdicts],
            "best_epochs": [r.best_epoch for r in results],
            "best_val_dsc": [100.0 * r.best_val_dice for r in results],
            "epochs": [r.epochs_completed for r in results]}


def _convergence_rows(table: TableSpec, results: dict[str, list[SeedResult]]) -> list[str]:
    rows = ["| cell | run | seeds finished | plateau met | gain in last fifth (DSC points) | "
            "best epoch | best validation DSC (%) |", "|---|---|---|---|---|---|---|"]
    seen = set()
    for c in table.cells:
        if c.run.key in seen:
            continue
        seen.add(c.run.key)
        conv = _convergence(results.get(c.run.key))
        if conv["seeds"] == 0:
            rows.append(f"| {_cell_label(c)} | `{c.run.key}` | 0 | — | — | — | — |")
            continue
        met = (f"{conv['plateau_met']}/{conv['seeds']}" if conv["plateau_known"] == conv["seeds"]
               else f"{conv['plateau_met']}/{conv['seeds']} ({conv['seeds'] - conv['plateau_known']}"
                    " without a curve)")
        gains = ", ".join("—" if g is None else f"{g:.2f}" for g in conv["gains"])
        best = ", ".join(str(e) for e in conv["best_epochs"])
        val = ", ".join(f"{v:.1f}" for v in conv["best_val_dsc"])
        rows.append(f"| {_cell_label(c)} | `{c.run.key}` | {conv['seeds']} | {met} | {gains} | "
                    f"{best} | {val} |")
    return rows


def _cell_label(cell: Cell) -> str:
    cols = dict(cell.columns)
    if "case" in cols:
        return f"case {cols['case']}"
    return " / ".join(cols.values())


# --------------------------------------------------------------------------- documents


def table_markdown(table: TableSpec, summaries: dict[str, CellSummary],
                   context: ReportContext,
                   results: dict[str, list[SeedResult]] | None = None) -> str:
    """The full Markdown page of one table (with ``results``: paired tests and convergence)."""
    p = context.profile
    seeds = (f"mean ± sample SD (ddof = 1) over {context.seeds} seeds (0…{context.seeds - 1})"
             if context.seeds > 1 else "one seed (0): no spread")
    counts = Counter(summaries[c.run.key].n for c in table.cells if c.run.key in summaries)
    if context.seeds > 1 and any(n < context.seeds for n in counts):
        # A campaign in progress: say how many seeds stand behind each kind of number.
        have = ", ".join(f"{k} cell{'s' if k > 1 else ''} at {_count(n, 'seed')}"
                         for n, k in sorted(counts.items(), reverse=True))
        seeds = (f"mean ± sample SD (ddof = 1) over the seeds each cell has finished, of "
                 f"{context.seeds} (0…{context.seeds - 1}): {have}; a number without ± is one "
                 "seed")
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
              *reading(table, summaries, results), ""]
    if results is not None:
        lines += ["## Convergence per run", "",
                  f"Plateau criterion: {PLATEAU_CRITERION.describe()} (from each seed's "
                  "validation curve; see curves.png). Gains, best epochs and best validation DSC "
                  "are listed per seed: a flat curve at a low DSC is a network that stopped "
                  "learning, not a trained one.",
                  "", *_convergence_rows(table, results), ""]
    lines += [
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
    if context.split:
        lines.append("- Split by patient, fixed in the dataset before any cell was scored:")
        lines += [f"  - {line}" for line in context.split]
    lines += [f"- Test set: {', '.join(context.test_cases)} ({context.test_note}); whole "
              "slices, no post-processing; DSC = 2|G∩P|/(|G|+|P|) and IoU = |G∩P|/|G∪P| with "
              "the counts summed over all test slices (the paper's formulas, pooled).",
              "- Dataset:", *(f"  - {line}" for line in context.dataset), ""]
    return "\n".join(lines)


def table_json(table: TableSpec, summaries: dict[str, CellSummary],
               context: ReportContext,
               results: dict[str, list[SeedResult]] | None = None) -> dict[str, Any]:
    """Machine-readable companion of :func:`table_markdown` (min–max included)."""
    cells = []
    for c in table.cells:
        s = summaries.get(c.run.key)
        extra: dict[str, Any] = {}
        if results is not None:
            extra["convergence"] = _convergence(results.get(c.run.key))
            extra["patient_dsc_by_seed"] = {str(k): v for k, v in
                                            _by_seed(results.get(c.run.key, [])).items()}
        cells.append({"cell": c.name, "run": c.run.key, "model": c.run.model,
                      "loss": c.run.loss, "model_config": c.run.config_dict(),
                      "columns": dict(c.columns), "paper_dsc": c.paper_dsc,
                      "paper_iou": c.paper_iou, "paper_scale": "percent" if table.percent
                      else "fraction", "ours_percent": s.to_dict() if s else None,
                      "note": c.note, **extra})
    doc: dict[str, Any] = {
        "table": table.name, "title": table.title, "command": context.command,
        "date": context.date, "hardware": context.hardware, "profile": context.profile.name,
        "seeds": context.seeds, "test_cases": list(context.test_cases),
        "split": list(context.split), "cells": cells,
        "reading": reading(table, summaries, results)}
    if results is not None:
        doc["plateau_criterion"] = PLATEAU_CRITERION.describe()
        doc["paired_tests"] = [{"claim": label, "test": None if t is None else t.to_dict()}
                               for label, t in claim_tests(table, results)]
    return doc


def write_table(table: TableSpec, summaries: dict[str, CellSummary], context: ReportContext,
                out_dir: Path, results: dict[str, list[SeedResult]] | None = None) -> list[Path]:
    """Write ``<table>.md`` and ``<table>.json`` into ``out_dir`` (replacing earlier versions)."""
    md = write_text_atomic(out_dir / f"{table.name}.md",
                           table_markdown(table, summaries, context, results), overwrite=True)
    js = write_text_atomic(out_dir / f"{table.name}.json",
                           json.dumps(table_json(table, summaries, context, results),
                                      indent=2) + "\n", overwrite=True)
    return [md, js]
