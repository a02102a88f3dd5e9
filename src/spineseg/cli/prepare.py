"""``spineseg prepare``: build a prepared dataset from public layouts (thin shell)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spineseg.data.layouts import LAYOUTS
from spineseg.data.prepare import PrepareConfig, PrepareResult, SourceSpec, prepare_dataset
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import PartialFailure


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "prepare", help="prepare a training dataset from image/mask folders",
        description="Read CT images and vertebra masks (pairs, VerSe, TotalSegmentator or nnU-Net "
                    "layout), map labels to binary spine (C1-L5), reorient to LPS, resample "
                    "in-plane and split by patient. Re-running resumes.")
    p.add_argument("source", type=Path, metavar="SRC", help="source folder")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DATASET")
    p.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto")
    p.add_argument("--labels", metavar="SPEC",
                   help="label ids counted as spine in SRC, e.g. '1-25,28' (default per layout)")
    p.add_argument("--kind", choices=("auto", "real", "phantom"), default="auto",
                   help="kind of SRC's cases (auto: phantom if SRC has a params/ folder)")
    p.add_argument("--add", type=Path, action="append", default=[], metavar="SRC2",
                   help="another source folder (layout and kind detected); repeatable")
    p.add_argument("--add-phantom", type=Path, action="append", default=[], metavar="SRC2",
                   help="another source folder whose cases are phantoms; repeatable")
    p.add_argument("--spacing", type=float, default=Preprocessing().spacing_xy[0], metavar="MM",
                   help="in-plane spacing in mm (default %(default)s)")
    p.add_argument("--val", default="0.2", metavar="N|F|IDS",
                   help="validation patients: count, fraction or comma-separated ids")
    p.add_argument("--test", default="0", metavar="N|F|IDS",
                   help="test patients (as --val; a count takes real patients before phantoms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-copies", type=int, default=0, metavar="K",
                   help="extra noisy/osteoporotic copies of each real training case")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    kind = None if args.kind == "auto" else args.kind
    sources = [SourceSpec(args.source, args.layout, args.labels, kind),
               *(SourceSpec(s) for s in args.add),
               *(SourceSpec(s, kind="phantom") for s in args.add_phantom)]
    pp = Preprocessing(spacing_xy=(args.spacing, args.spacing))
    config = PrepareConfig(preprocessing=pp, val=args.val, test=args.test, seed=args.seed,
                           noise_copies=args.noise_copies, progress=not args.no_progress)
    try:
        result = prepare_dataset(sources, args.output, config)
    except PartialFailure as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:
            _report(partial)
            for case, reason in sorted(partial.failed.items()):
                print(f"failed: {case}: {reason}", file=sys.stderr)
        raise
    _report(result)
    return 0


def _report(result: PrepareResult) -> None:
    counts = ", ".join(f"{k} {len(v)}" for k, v in result.splits.items())
    print(f"{result.root}: {len(result.prepared)} prepared, {len(result.skipped)} already done, "
          f"{len(result.failed)} failed; splits: {counts}")
