"""The decision threshold chosen by nested cross-validation on held-out patients, as in
docs/model-card.md ("The decision threshold, chosen on held-out patients only").

    python tools/threshold_selection.py ../shared/data work --json out.json

Every held-out patient is segmented through ``spineseg.segment`` (post-processing on, clean) by
the model that never saw it, at every candidate threshold:

- the seven-patient recipe: each fold's soup (``WORK/run_<fold>_soup/last.pt``) on its own
  held-out patients; fold *k* is scored at the candidate best on the other folds' patients;
- the shipped file on the four crops it never saw, leave-one-patient-out, plus the whole-body
  cases at every candidate for the release guards.

A model's threshold is a field of its file, so the candidates are applied with
``dataclasses.replace`` on the loaded model; nothing is retrained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from crossval import FOLDS
from evaluate_real_cases import score_case

from spineseg.inference.model_file import SegmentationModel, load_segmentation_model

CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)
SHIPPED_HELD_OUT = ("verse005", "verse006", "verse007", "verse008")
WHOLE_BODY = ("ts_chest", "ts_abdomen")


def dice_at(shared: Path, case: str, model: SegmentationModel,
            candidates: Sequence[float]) -> dict[float, dict[str, object]]:
    """Clean-scan row of ``score_case`` at every candidate threshold."""
    out = {}
    for t in candidates:
        row = score_case(shared, case, dataclasses.replace(model, threshold=t), ("clean",),
                         compare_nopost=False)[0]
        out[t] = row
        print(json.dumps({"threshold": t, **row}), flush=True)
    return out


def nested(groups: dict[str, Sequence[str]], dice: dict[str, dict[float, float]],
           candidates: Sequence[float]) -> dict[str, object]:
    """Per group (fold or patient): the candidate best on the other groups' patients, and each
    of the group's patients scored at it."""
    chosen, scored = {}, {}
    for g, cases in groups.items():
        others = [c for h, cs in groups.items() if h != g for c in cs]
        best = max(candidates, key=lambda t: (np.mean([dice[c][t] for c in others]), -abs(t - .5)))
        chosen[g] = best
        scored.update({c: dice[c][best] for c in cases})
    base = {c: dice[c][0.5] for c in scored}
    change = {c: scored[c] - base[c] for c in scored}
    return {"chosen": chosen, "nested_dice": scored, "dice_at_0.5": base,
            "nested_mean": float(np.mean(list(scored.values()))),
            "mean_at_0.5": float(np.mean(list(base.values()))),
            "worst_change": float(min(change.values())),
            "best_over_all": max(candidates, key=lambda t: (
                np.mean([dice[c][t] for c in scored]), -abs(t - .5)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("work", type=Path, help="work folder holding run_<fold>_soup/last.pt")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows: dict[str, dict[str, dict[float, dict[str, object]]]] = {"recipe": {}, "shipped": {}}
    for fold, cases in FOLDS.items():
        model = load_segmentation_model(args.work / f"run_{fold}_soup" / "last.pt")
        for case in cases:
            rows["recipe"][case] = dice_at(args.shared_data, case, model, CANDIDATES)
    shipped = load_segmentation_model(None)
    for case in (*SHIPPED_HELD_OUT, *WHOLE_BODY):
        rows["shipped"][case] = dice_at(args.shared_data, case, shipped, CANDIDATES)
    dice = {k: {c: {t: float(r["dice"]) for t, r in by_t.items()} for c, by_t in v.items()}
            for k, v in rows.items()}
    recipe = nested(FOLDS, dice["recipe"], CANDIDATES)
    shipped_result = nested({c: (c,) for c in SHIPPED_HELD_OUT}, dice["shipped"], CANDIDATES)
    result = {"candidates": CANDIDATES, "recipe": recipe, "shipped": shipped_result,
              "rows": {k: {c: {str(t): r for t, r in by_t.items()} for c, by_t in v.items()}
                       for k, v in rows.items()}}
    print(json.dumps({k: result[k] for k in ("recipe", "shipped")}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
