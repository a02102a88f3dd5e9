"""Per-vertebra instances and level names on the real cases, as reported in docs/vertebrae.md.

    python tools/evaluate_vertebrae.py ../shared/data --predictions PRED --json out.json \
        --markdown out.md

Each case is run twice: on the reference spine mask (the upper bound: only splitting and naming
can fail) and on the shipped model's mask with its probabilities (what a user gets). PRED holds
one folder per case with ``spine.nii.gz`` and ``spine_prob.nii.gz`` as written by
``spineseg segment --probabilities``; a case without them is segmented here with the shipped
model. Per reference vertebra: Dice of the predicted instance that overlaps it most, whether it
is matched by exactly one instance with Dice >= 0.80, and whether an instance with its name has
its centroid within 20 mm of it (identification). A confident name is wrong when the reference
vertebra the instance overlaps most has another name. Beside each Dice, the split bound: the
Dice the same binary mask reaches when every voxel of it goes to the nearest reference
vertebra, the most any splitter could get out of that mask; the gap between the two is what
the splitting loses, the rest is the mask's own error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from real_cases import CASES
from scipy import ndimage

from spineseg.io import CANONICAL, Volume, read_image, reorient, resample_to, write_text_atomic
from spineseg.vertebrae.analysis import label_vertebrae
from spineseg.vertebrae.levels import VERSE_NAMES

MATCH_DICE = 0.80
ID_MM = 20.0
# TotalSegmentator v2 ids -> VerSe ids (27 L5 ... 31 L1, 32 T12 ... 43 T1, 44 C7 ... 50 C1);
# its sacrum (25) and S1 (26) are not spine.
TS_TO_VERSE = {27 + i: 24 - i for i in range(5)} | {32 + i: 19 - i for i in range(12)} | {
    44 + i: 7 - i for i in range(7)}


def reference_levels(shared: Path, case: str, ct: Volume) -> np.ndarray:
    """The case's per-vertebra reference as VerSe ids on the CT's canonical grid."""
    ref = read_image(shared / CASES[case].vertebrae)
    arr = np.asarray(resample_to(ref, ct, interpolation="nearest").array).astype(np.int32)
    if case.startswith("ts_"):
        lut = np.zeros(max(arr.max(), 60) + 1, dtype=np.int32)
        for ts, verse in TS_TO_VERSE.items():
            lut[ts] = verse
        arr = lut[arr]
    return arr


def _centroid_mm(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0) * spacing_zyx


def nearest_reference(ref: np.ndarray) -> np.ndarray:
    """Every voxel's nearest reference label (computed once per case, used for each mask)."""
    _, idx = ndimage.distance_transform_edt(ref == 0, return_indices=True)
    return ref[tuple(idx)]


def split_bound(ref: np.ndarray, binary: np.ndarray,
                nearest: np.ndarray | None = None) -> dict[int, float]:
    """Per reference vertebra, Dice of ``binary`` split by the nearest reference label."""
    near = np.where(binary, nearest_reference(ref) if nearest is None else nearest, 0)
    out = {}
    for r in (int(v) for v in np.unique(ref) if v):
        rm, pm = ref == r, near == r
        out[r] = 2 * int((rm & pm).sum()) / max(int(rm.sum()) + int(pm.sum()), 1)
    return out


def score(ref: np.ndarray, pred: np.ndarray, spacing_zyx: np.ndarray, named: bool,
          confident: dict[int, bool], binary: np.ndarray,
          nearest: np.ndarray | None = None) -> dict[str, Any]:
    """Per-vertebra scores of predicted instance labels against reference VerSe labels."""
    rows = []
    bound = split_bound(ref, binary, nearest)
    pred_ids = [int(v) for v in np.unique(pred) if v]
    sizes = {p: int((pred == p).sum()) for p in pred_ids}
    for r in (int(v) for v in np.unique(ref) if v):
        rm = ref == r
        overlap = np.bincount(pred[rm], minlength=max(pred_ids, default=0) + 1)
        dices = {p: 2 * int(overlap[p]) / (int(rm.sum()) + sizes[p]) for p in pred_ids}
        best = max(dices, key=dices.get) if dices else None
        same = pred == r
        found = bool(same.any()) and float(np.linalg.norm(
            _centroid_mm(same, spacing_zyx) - _centroid_mm(rm, spacing_zyx))) <= ID_MM
        rows.append({"name": VERSE_NAMES.get(r, str(r)), "volume_ml": round(
            float(rm.sum() * np.prod(spacing_zyx)) / 1000, 1),
            "dice": round(dices[best], 3) if best else 0.0,
            "dice_split_bound": round(bound[r], 3),
            "matched": sum(d >= MATCH_DICE for d in dices.values()) == 1,
            "predicted_name": VERSE_NAMES.get(best, "unnamed") if best else None,
            "identified": found})
    wrong = spurious = 0
    for p in pred_ids:
        if not confident.get(p):
            continue
        under = ref[pred == p]
        under = under[under > 0]
        if under.size == 0:
            spurious += 1
        elif int(np.bincount(under).argmax()) != p:
            wrong += 1
    n_conf = sum(bool(v) for v in confident.values())
    return {"vertebrae": rows, "instances": len(pred_ids), "named": named,
            "confident_names": n_conf, "confident_wrong": wrong, "confident_spurious": spurious}


def run_case(shared: Path, case: str, predictions: Path | None) -> dict[str, Any]:
    entry = CASES[case]
    ct = read_image(shared / entry.image)
    canon = reorient(ct, CANONICAL)
    ref = reference_levels(shared, case, canon)
    nearest = nearest_reference(ref)
    spacing = np.asarray(canon.spacing, dtype=float)[::-1]
    out: dict[str, Any] = {"case": case, "kind": entry.kind, "sagittal": entry.sagittal}
    inputs = {"reference mask": (read_image(shared / entry.spine), None)}
    folder = predictions / case if predictions else None
    if folder and (folder / "spine.nii.gz").is_file():
        prob = folder / "spine_prob.nii.gz"
        inputs["model mask"] = (read_image(folder / "spine.nii.gz"),
                                read_image(prob) if prob.is_file() else None)
    else:
        from spineseg.inference.pipeline import SegmentConfig, segment

        res = segment(ct, None, SegmentConfig(mesh=None, keep_probabilities=True))
        inputs["model mask"] = (res.mask, res.probabilities)
    for label, (mask, prob) in inputs.items():
        result = label_vertebrae(ct, mask, prob)
        conf_at = result.config.levels.confident
        confident = {v.label: v.level.named and v.level.confidence >= conf_at
                     for v in result.vertebrae}
        binary = np.asarray(resample_to(mask, canon, interpolation="nearest").array) > 0
        scored = score(ref, np.asarray(result.canonical_labels.array).astype(np.int32), spacing,
                       result.named, confident, binary, nearest)
        scored["anchors"] = [a["kind"] for a in result.report.anchors]
        scored["transitional"] = result.report.transitional
        out[label] = scored
    return out


def summarise(cases: list[dict[str, Any]], which: str) -> dict[str, Any]:
    rows = [v for c in cases for v in c[which]["vertebrae"]]
    anchored = [v for c in cases if c[which]["named"] for v in c[which]["vertebrae"]]
    unanchored = [c for c in cases if not c[which]["named"]]
    return {
        "vertebrae": len(rows),
        "matched_share": round(float(np.mean([v["matched"] for v in rows])), 3),
        "mean_dice": round(float(np.mean([v["dice"] for v in rows])), 3),
        "mean_dice_split_bound": round(float(np.mean([v["dice_split_bound"] for v in rows])), 3),
        "identified_share": round(float(np.mean([v["identified"] for v in rows])), 3),
        "identified_share_anchored": round(float(np.mean([v["identified"] for v in anchored])), 3)
        if anchored else None,
        "anchored_vertebrae": len(anchored),
        "confident_names": sum(c[which]["confident_names"] for c in cases),
        "confident_wrong": sum(c[which]["confident_wrong"] for c in cases),
        "confident_spurious": sum(c[which]["confident_spurious"] for c in cases),
        "unanchored_scans": [c["case"] for c in unanchored],
        "unanchored_confident_wrong": sum(c[which]["confident_wrong"] for c in unanchored),
    }


def markdown(cases: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = ["| case | mask | instances | anchors | per-vertebra Dice | matched ≥ 0.80 | "
             "identified (≤ 20 mm, right name) | confident / wrong |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for which in ("reference mask", "model mask"):
            s = c[which]
            v = s["vertebrae"]
            dice = " ".join(f"{r['name']} {r['dice']:.2f}" for r in v)
            lines.append(
                f"| {c['case']} | {which} | {s['instances']} | "
                f"{', '.join(s['anchors']) or 'none (unnamed)'} | {dice} | "
                f"{sum(r['matched'] for r in v)}/{len(v)} | "
                f"{sum(r['identified'] for r in v)}/{len(v)} | "
                f"{s['confident_names']} / {s['confident_wrong']} |")
    lines += ["", "| mask | vertebrae | matched ≥ 0.80 | mean Dice (split bound) | "
              "identified (all) | identified (scans with an anchor) | confident wrong | "
              "confident wrong, scans without an anchor |", "|---|---|---|---|---|---|---|---|"]
    for which, s in summary.items():
        anch = (f"{s['identified_share_anchored']:.0%} of {s['anchored_vertebrae']}"
                if s["identified_share_anchored"] is not None else "—")
        lines.append(f"| {which} | {s['vertebrae']} | {s['matched_share']:.0%} | "
                     f"{s['mean_dice']:.3f} ({s['mean_dice_split_bound']:.3f}) | "
                     f"{s['identified_share']:.0%} | {anch} | "
                     f"{s['confident_wrong']} of {s['confident_names']} | "
                     f"{s['unanchored_confident_wrong']} ({', '.join(s['unanchored_scans'])}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("--predictions", type=Path, default=None)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    cases = [run_case(args.shared_data, c, args.predictions) for c in args.cases]
    summary = {w: summarise(cases, w) for w in ("reference mask", "model mask")}
    text = markdown(cases, summary)
    print(text)
    if args.json:
        write_text_atomic(args.json, json.dumps({"cases": cases, "summary": summary}, indent=2)
                          + "\n", overwrite=True)
    if args.markdown:
        write_text_atomic(args.markdown, text, overwrite=True)


if __name__ == "__main__":
    main()
