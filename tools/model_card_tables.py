"""Render the Dice tables of docs/model-card.md from tools/evaluate_real_cases.py JSON outputs.

    python tools/model_card_tables.py --loo work/eval_loo_*.json --shipped work/eval_shipped.json \
        [--fp32 work/eval_final_fp32.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

STRESS_NAMES = {"clean": "clean", "noise50": "noise SD 50", "noise100": "noise SD 100",
                "noise150": "noise SD 150", "osteo60": "bodies ~60 HU"}


def _rows(paths: list[Path]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows.extend(json.loads(p.read_text(encoding="utf-8"))["rows"])
    return rows


def loo_table(rows: list[dict]) -> str:
    cases = sorted({r["case"] for r in rows})
    stresses = [s for s in STRESS_NAMES if any(r["stress"] == s for r in rows)]
    head = "| held-out case | " + " | ".join(STRESS_NAMES[s] for s in stresses) + \
        " | clean, no post-processing | clean HD95 mm | clean sens. / prec. |"
    lines = [head, "|" + "---|" * (len(stresses) + 4)]
    for c in cases:
        by = {r["stress"]: r for r in rows if r["case"] == c}
        clean = by.get("clean", {})
        cells = [f"{by[s]['dice']:.3f}" if s in by else "" for s in stresses]
        lines.append(f"| {c} | " + " | ".join(cells) +
                     f" | {clean.get('dice_nopost', float('nan')):.3f}"
                     f" | {clean.get('hd95_mm', float('nan')):.1f}"
                     f" | {clean.get('sensitivity', float('nan')):.2f} / "
                     f"{clean.get('precision', float('nan')):.2f} |")
    means = []
    for s in stresses:
        vals = [r["dice"] for r in rows if r["stress"] == s]
        means.append(f"{sum(vals) / len(vals):.3f}")
    lines.append("| **mean** | " + " | ".join(means) + " | | | |")
    return "\n".join(lines)


def _cell(row: dict, key: str, fmt: str = ".3f") -> str:
    value = row.get(key)
    return "" if value is None else format(value, fmt)


def shipped_table(rows: list[dict], fp32: list[dict]) -> str:
    f32 = {(r["case"], r["stress"]): r for r in fp32}
    head = "| case (in training) | stress | Dice (shipped, fp16) | sens. / prec. |"
    head += " Dice (fp32 checkpoint) |" if f32 else ""
    head += " no post-processing |"
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in rows:
        line = (f"| {r['case']} | {STRESS_NAMES[r['stress']]} | {r['dice']:.3f} | "
                f"{_cell(r, 'sensitivity', '.2f')} / {_cell(r, 'precision', '.2f')} |")
        if f32:
            line += f" {_cell(f32.get((r['case'], r['stress']), {}), 'dice')} |"
        lines.append(line + f" {_cell(r, 'dice_nopost')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loo", type=Path, nargs="+", required=True)
    ap.add_argument("--shipped", type=Path, required=True)
    ap.add_argument("--fp32", type=Path, default=None)
    args = ap.parse_args()
    print(loo_table(_rows(args.loo)))
    print()
    print(shipped_table(_rows([args.shipped]), _rows([args.fp32]) if args.fp32 else []))


if __name__ == "__main__":
    main()
