"""``spineseg evaluate``: score masks against references, or a checkpoint on a dataset split."""

from __future__ import annotations

import argparse
from typing import Any

from spineseg.errors import InputError
from spineseg.evaluation.evaluate import evaluate_masks, evaluate_model
from spineseg.evaluation.report import REPORT_FILES, check_report_dir, write_report


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="Dice, IoU, HD95, ASD, sensitivity, precision of predictions",
        description="Either --model CKPT --data DATASET [--split test]: run a trained network on a "
                    "prepared split; or --pred DIR --ref DIR: compare mask files of the same name "
                    "(aligned through physical space). Writes metrics.csv (per case), "
                    "summary.json and summary.md into OUT. The paper-style DSC/IoU pool "
                    "|G∩P|, |G|, |P| over all test slices of all cases.",
    )
    p.add_argument("--model", metavar="CKPT", help="training checkpoint (best.pt / last.pt)")
    p.add_argument("--data", metavar="DATASET", help="prepared dataset folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="dataset split (default test)")
    p.add_argument("--pred", metavar="DIR", help="folder of predicted masks")
    p.add_argument("--ref", metavar="DIR", help="folder of reference masks (same file names)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="report folder")
    p.add_argument("--device", default="auto",
                   help="torch device for --model: auto, cpu, cuda, cuda:1 … (default auto)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per batch (default 16)")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_mode = args.model is not None or args.data is not None
    mask_mode = args.pred is not None or args.ref is not None
    if model_mode == mask_mode:
        raise InputError("give either --model CKPT --data DATASET, or --pred DIR --ref DIR")
    check_report_dir(args.output, args.overwrite)
    if model_mode:
        if args.model is None or args.data is None:
            raise InputError("--model and --data go together")
        result = evaluate_model(args.model, args.data, args.split, device=args.device,
                                batch_size=args.batch_size, progress=True)
    else:
        if args.pred is None or args.ref is None:
            raise InputError("--pred and --ref go together")
        result = evaluate_masks(args.pred, args.ref)
    out = write_report(result, args.output, overwrite=args.overwrite)
    p = result.pooled
    print(f"{p.n_cases} case(s): DSC {100 * p.dsc:.2f} %, IoU {100 * p.iou:.2f} % "
          f"(pooled over {p.n_slices} slices); mean slice Dice {100 * p.mean_slice_dice:.2f} %")
    print(f"report: {', '.join(str(out / f) for f in REPORT_FILES)}")
    return 0
