"""Dice of a model on the real cases, clean and stressed (noise, osteoporosis), through the product
pipeline (`spineseg.segment`), as reported in docs/model-card.md.

    python tools/evaluate_real_cases.py ../shared/data --model RUN/best.pt --cases ts_abdomen \
        --json out.json

Stresses (applied to the CT in its own grid, seeded): correlated noise of SD 50, 100, 150 HU
(sharp kernel), and the vertebral-body interior darkened to ~60 HU (osteoporosis; uses the
reference mask to find the bodies). Each clean case is also scored without post-processing, so
the effect of island removal is measured, not assumed.

``--region both`` scores each case with the coarse-to-fine region (keys as usual) and with whole
slices (keys ending ``_whole``) in one run; ``fp_far_ml`` is the segmented volume lying more than
50 mm from the reference column (false positives the post-processing should have removed);
``fp_beyond_3mm_ml`` is the segmented volume more than 3 mm from the reference mask: other anatomy
taken as spine (ribs, sternum, aorta, kidneys, sacrum), as opposed to a boundary drawn a voxel
wider than the reference's convention.

    python tools/evaluate_real_cases.py ../shared/data --model src/spineseg/weights/spineseg-default.pt \
        --stresses clean --region both --no-nopost
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from real_cases import CASES
from scipy import ndimage

from spineseg.data.simulate import add_ct_noise, simulate_osteoporosis
from spineseg.evaluation.evaluate import evaluate_mask_pair
from spineseg.inference.model_file import SegmentationModel, load_segmentation_model
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.postprocess import PostprocessConfig
from spineseg.inference.predict import PRECISIONS, PredictConfig
from spineseg.inference.region import RegionConfig
from spineseg.io import Volume, read_image, resample_to

STRESSES = ("clean", "noise50", "noise100", "noise150", "osteo60")
FAR_MM = 50.0
# Reference conventions differ by about a voxel at the bone surface (TotalSegmentator's masks are
# drawn wider than the manual VerSe ones); 3 mm is two to three voxels of the in-plane grids here,
# so a false positive farther out is anatomy the reference does not count as spine.
BOUNDARY_MM = 3.0


def stressed(ct: Volume, ref: Volume, stress: str, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    hu = np.asarray(ct.array, dtype=np.float32)
    if stress == "clean":
        return ct
    if stress.startswith("noise"):
        out = add_ct_noise(hu, float(stress[5:]), rng, kernel="sharp")
    else:
        out = simulate_osteoporosis(hu, ref.array > 0, target_hu=float(stress[5:]), rng=rng)
    return ct.with_array(np.clip(np.rint(out), -1024, 3071).astype(np.int16))


def score_case(shared_data: Path, case: str, model: SegmentationModel,
               stresses: Sequence[str] = STRESSES, tta: bool = False,
               compare_nopost: bool = True, regions: Sequence[bool] = (True,),
               precision: str = "auto", pad_to_patch: bool = True) -> list[dict[str, object]]:
    """One row per stress: Dice, IoU, HD95, sensitivity, precision of ``segment`` on the case.

    Post-processing's effect is measured on the clean scan only (``compare_nopost``), with the
    first of ``regions`` (coarse-to-fine region on/off); the others get a ``_whole`` / ``_region``
    key suffix.
    """
    entry = CASES[case]
    ct = read_image(shared_data / entry.image)
    ref = resample_to(read_image(shared_data / entry.spine), ct, interpolation="nearest")
    outside = ndimage.distance_transform_edt(ref.array == 0, sampling=ct.spacing[::-1])
    far, beyond = outside > FAR_MM, outside > BOUNDARY_MM
    del outside
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    rows: list[dict[str, object]] = []
    for stress in stresses:
        vol = stressed(ct, ref, stress)
        row: dict[str, object] = {"case": case, "kind": entry.kind, "stress": stress}
        runs = [(True, regions[0], "")]
        if stress == "clean" and compare_nopost:
            runs.append((False, regions[0], "_nopost"))
        runs += [(True, r, "_region" if r else "_whole") for r in regions[1:]]
        for post, region, key in runs:
            t = time.perf_counter()
            cfg = SegmentConfig(predict=PredictConfig(progress=False, mirror=tta,
                                                      precision=precision,
                                                      pad_to_patch=pad_to_patch),
                                mesh=None, postprocess=PostprocessConfig(enabled=post),
                                region=RegionConfig(enabled=region))
            res = segment(vol, model, cfg)
            m = evaluate_mask_pair(res.mask, ref, case)
            seg = res.mask.array > 0
            row.update({f"dice{key}": round(m.dice, 4), f"iou{key}": round(m.iou, 4),
                        f"hd95_mm{key}": round(m.hd95_mm, 2),
                        f"fp_far_ml{key}": round(float((seg & far).sum()) * voxel_ml, 3),
                        f"fp_beyond_3mm_ml{key}": round(float((seg & beyond).sum()) * voxel_ml,
                                                        3),
                        f"seconds{key}": round(time.perf_counter() - t, 1)})
            if post:
                row[f"sensitivity{key}"] = round(m.sensitivity, 4)
                row[f"precision{key}"] = round(m.precision, 4)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--stresses", default=",".join(STRESSES))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--tta", action="store_true", help="test-time mirroring (segment --tta)")
    ap.add_argument("--region", choices=["on", "off", "both"], default="on",
                    help="coarse-to-fine region (segment's default), whole slices "
                         "(segment --full-slice), or both in one run")
    ap.add_argument("--precision", default="auto",
                    choices=PRECISIONS, help="network arithmetic, as segment --precision")
    ap.add_argument("--no-nopost", action="store_true",
                    help="skip the clean run without post-processing")
    ap.add_argument("--no-pad-to-patch", action="store_true",
                    help="run the network on inputs smaller than its training patch "
                         "(PredictConfig.pad_to_patch off), for comparison")
    args = ap.parse_args()
    regions = {"on": (True,), "off": (False,), "both": (True, False)}[args.region]
    model = load_segmentation_model(args.model)
    rows = []
    for case in args.cases.split(","):
        for row in score_case(args.shared_data, case, model, args.stresses.split(","), args.tta,
                              not args.no_nopost, regions, args.precision,
                              not args.no_pad_to_patch):
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "sha256": model.sha256,
                                         "tta": args.tta, "region": args.region,
                                         "precision": args.precision,
                                         "pad_to_patch": not args.no_pad_to_patch,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
