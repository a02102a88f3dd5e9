"""``spineseg stats``: recompute a mask's statistics and quality flags over its CT."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spineseg.errors import OutputError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stats",
        help="voxel count, volume, bounding box, mean/median HU and flags of an existing mask",
        description="Measure a mask over its CT: voxel count, volume (mL), bounding box (voxel "
                    "indices and LPS mm), mean and median HU inside the mask, and the quality "
                    "flags of stats.json (empty, tiny, gap, border). The mask is used on the "
                    "CT's grid, resampled through physical space (nearest neighbour) when its "
                    "own grid differs. Prints JSON, or writes it with -o.")
    p.add_argument("ct", type=Path, help="CT file or DICOM series folder")
    p.add_argument("mask", type=Path, help="mask file (any non-zero voxel counts)")
    p.add_argument("-o", "--output", type=Path, default=None, help="write the JSON here")
    p.add_argument("--series", metavar="UID", default=None,
                   help="DICOM series of the CT folder to read (as for segment)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spineseg.io import check_output_path, write_text_atomic
    from spineseg.report.statistics import compute_statistics

    if args.output is not None:
        check_output_path(args.output, args.overwrite)
        target = args.output.resolve()
        if target in (args.ct.resolve(), args.mask.resolve()):
            raise OutputError(f"{args.output}: is an input; choose another output file")
    result = compute_statistics(args.ct, args.mask, series_uid=args.series)
    text = json.dumps(result, indent=2) + "\n"
    if args.output is None:
        print(text, end="")
        return 0
    write_text_atomic(args.output, text, overwrite=args.overwrite)
    s = result["statistics"]
    flags = ", ".join(f["code"] for f in result["flags"]) or "none"
    print(f"{s['voxel_count']} voxels, {s['volume_ml']:.1f} mL, mean HU "
          f"{s['intensity_mean_hu']}, flags: {flags}; wrote {args.output}")
    return 0
