"""``spineseg phantom``: write synthetic spine CT cases with exact vertebra masks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spineseg.data.phantom import PhantomConfig, write_phantom_dataset


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "phantom",
        help="generate synthetic spine CT cases (image + vertebra mask pairs)",
        description="Generate procedural spine CT phantoms: real vertebra shapes on a curved "
                    "column with ribs, pelvis, organs, table, noise and artefacts. Writes "
                    "DIR/images/<id>.nii.gz, DIR/labels/<id>.nii.gz (the 'pairs' layout that "
                    "'spineseg prepare' reads), DIR/params/<id>.json and, with --dicom, "
                    "DIR/dicom/<id>/. The same seed always gives the same case.",
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                   help="output folder")
    p.add_argument("--cases", type=int, default=1, metavar="N", help="number of cases (1)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the first case; case i uses S+i (0)")
    p.add_argument("--size", type=int, nargs=3, default=(256, 256, 100), metavar=("X", "Y", "Z"),
                   help="voxels per case (256 256 100)")
    p.add_argument("--reorient-prob", type=float, default=0.0, metavar="P",
                   help="probability of storing a case in a non-LPS voxel order (0)")
    p.add_argument("--exclude-template", action="append", default=[], metavar="SUBJECT",
                   help="do not use the vertebra shapes of this template subject (e.g. verse005, "
                        "when that patient is held out); repeatable")
    p.add_argument("--dicom", action="store_true", help="also write each CT as a DICOM series")
    p.add_argument("--overwrite", action="store_true", help="replace existing cases")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = PhantomConfig(shape=tuple(args.size), reorient_prob=args.reorient_prob,
                           exclude_templates=tuple(args.exclude_template))
    with tqdm(total=max(args.cases, 0), desc="phantoms", unit="case", file=sys.stderr,
              disable=None) as bar:
        written = write_phantom_dataset(args.output, args.cases, args.seed, config,
                                        dicom=args.dicom, overwrite=args.overwrite,
                                        progress=lambda _cid: bar.update(1))
    print(f"wrote {len(written)} case(s) to {args.output}")
    for kind in ("images", "labels", "params", *(["dicom"] if args.dicom else [])):
        print(f"  {kind + '/':<8} {args.output / kind}")
    return 0
