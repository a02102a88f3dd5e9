"""Where along the column a model misses bone: sensitivity and precision of ``spineseg.segment``
in ten equal bands of each reference mask's cranio-caudal extent, through the product pipeline.

    python tools/column_profile.py ../shared/data --model MODEL.pt --cases verse007,verse008 \
        --json out.json

A whole-scan Dice hides whether a model loses bone evenly or at one place; on spine-protocol crops
the losses gather at the crop's first and last centimetres (a vertebra cut by the field of view,
next to anatomy the crop does not show). Band 0 is the most cranial tenth of the reference, band 9
the most caudal; ``ends`` pools bands 0 and 9, ``middle`` bands 2-7.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from real_cases import CASES

from spineseg.inference.model_file import SegmentationModel, load_segmentation_model
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.predict import PredictConfig
from spineseg.io import CANONICAL, read_image, reorient, resample_to, write_text_atomic

BANDS = 10


def band_rates(pred: np.ndarray, ref: np.ndarray, bands: int = BANDS) -> dict[str, object]:
    """Per-band and pooled sensitivity/precision of boolean (z, y, x) masks, z cranio-caudal.

    Bands split the z range the reference occupies into ``bands`` equal parts (band 0 cranial:
    z grows superior in LPS).
    """
    zs = np.flatnonzero(ref.any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("the reference mask is empty")
    tp = (pred & ref).sum(axis=(1, 2)).astype(float)
    rs, ps = ref.sum(axis=(1, 2)).astype(float), pred.sum(axis=(1, 2)).astype(float)

    def rates(sel: np.ndarray) -> dict[str, float | None]:
        t, r, p = tp[sel].sum(), rs[sel].sum(), ps[sel].sum()
        return {"sensitivity": round(float(t / r), 4) if r else None,
                "precision": round(float(t / p), 4) if p else None}

    # Band of each slice, counted from the cranial end (z grows superior); slices outside the
    # reference's extent belong to none (-1).
    z = np.arange(ref.shape[0])
    band = np.floor((zs[-1] - z) / (zs[-1] - zs[0] + 1) * bands).astype(int)
    band[(z < zs[0]) | (z > zs[-1])] = -1
    per_band = [rates(band == b) for b in range(bands)]
    ends = (band == 0) | (band == bands - 1)
    # Upper bound of what the crop's edges cost in Dice through the reference's convention: a
    # crop cut tightly around the labelled vertebrae still shows slivers of the unlabelled
    # neighbours (an end plate, articular processes), which a model rightly calls bone.
    fp_ends = float((ps[ends] - tp[ends]).sum())
    total_tp, total_p, total_r = tp.sum(), pred.sum(), ref.sum()
    return {"bands": per_band, "ends": rates(ends),
            "middle": rates((band >= 2) & (band <= bands - 3)),
            "dice": round(float(2 * total_tp / (total_p + total_r)), 4),
            "dice_without_end_false_positives": round(
                float(2 * total_tp / (total_p - fp_ends + total_r)), 4)}


def profile_case(shared: Path, case: str, model: SegmentationModel) -> dict[str, object]:
    entry = CASES[case]
    ct = read_image(shared / entry.image)
    ref = resample_to(read_image(shared / entry.spine), ct, interpolation="nearest")
    res = segment(ct, model, SegmentConfig(predict=PredictConfig(progress=False), mesh=None))
    pred = np.asarray(reorient(res.mask, CANONICAL).array) > 0
    truth = np.asarray(reorient(ref, CANONICAL).array) > 0
    return {"case": case, "kind": entry.kind, "sagittal": entry.sagittal,
            "model_sha256": model.sha256, **band_rates(pred, truth)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    model = load_segmentation_model(args.model)
    rows = []
    for case in args.cases.split(","):
        row = profile_case(args.shared_data, case, model)
        rows.append(row)
        ends, mid = row["ends"], row["middle"]
        print(f"{case}: sensitivity ends {ends['sensitivity']} middle {mid['sensitivity']}; "  # type: ignore[index]
              f"precision ends {ends['precision']} middle {mid['precision']}; Dice "  # type: ignore[index]
              f"{row['dice']}, without the end bands' false positives "
              f"{row['dice_without_end_false_positives']}", flush=True)
    if args.json:
        write_text_atomic(args.json, json.dumps({"rows": rows}, indent=2) + "\n", overwrite=True)


if __name__ == "__main__":
    main()
