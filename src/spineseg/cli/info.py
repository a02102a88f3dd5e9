"""``spineseg info``: what an image is — grid, orientation, intensities, and whether it is CT."""

from __future__ import annotations

import argparse
import json
from typing import Any

from spineseg.io import describe, read_image
from spineseg.io.describe import ImageInfo


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "info",
        help="show an image's grid, orientation, intensity range and whether it looks like CT",
        description="Read a NIfTI/NRRD/MetaImage file or a DICOM series folder and print its "
                    "shape (x, y, z), spacing, orientation code, origin (mm, in LPS physical "
                    "coordinates, as DICOM and ITK use), intensity range and "
                    "whether the values look like CT in Hounsfield units.",
    )
    p.add_argument("path", help="image file or folder holding a DICOM series")
    p.add_argument("--series", metavar="UID", default=None,
                   help="DICOM series instance UID to read when the folder holds several; "
                        "UID:N reads acquisition N of a series holding several")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=run)


def _num(x: float) -> str:
    return f"{x:.6g}"


def format_info(info: ImageInfo) -> str:
    """The aligned text block ``spineseg info`` prints."""
    rows = [("source", info.source), ("format", info.format)]
    if info.series_uid is not None:
        rows.append(("series", f"{info.series_uid or '(empty UID)'} ({info.modality or '?'})"))
    rows += [
        ("shape (x,y,z)", " x ".join(str(s) for s in info.shape)),
        ("spacing (mm)", " x ".join(f"{s:.4f}" for s in info.spacing)),
        ("orientation", info.orientation),
        (f"origin (mm, {info.space})", "(" + ", ".join(f"{o:.2f}" for o in info.origin) + ")"),
        ("dtype", info.dtype),
        ("intensity", f"min {_num(info.min)}  max {_num(info.max)}  mean {_num(info.mean)}  "
                      f"p1..p99 {_num(info.p1)}..{_num(info.p99)}"),
        ("non-finite", f"{info.nonfinite} voxels (NaN/inf)"),
        ("CT", f"{'yes' if info.looks_like_ct else 'no'}: {info.ct_reason}"),
    ]
    if info.series_note:
        rows.append(("note", info.series_note))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    info = describe(read_image(args.path, series_uid=args.series))
    print(json.dumps(info.to_dict(), indent=2) if args.json else format_info(info))
    return 0
