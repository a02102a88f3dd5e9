"""``spineseg vertebrae``: a CT and its spine mask → named vertebrae, measurements, outputs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spineseg.errors import InputError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "vertebrae", help="split a spine mask into named vertebrae with volume, HU and heights",
        description="Split a binary spine mask into vertebrae, name them C1-L5 from anchors in "
                    "the CT (ribs, pelvis) or leave them unnamed when none is in view, and "
                    "measure each (volume, trabecular HU, body heights). Writes vertebrae.nii.gz "
                    "(on the CT's grid), vertebrae.ctbl (its colour table), vertebrae.json, "
                    "vertebrae.csv, vertebrae.ply, "
                    "vertebrae_preview.png and stats.json into OUTDIR.")
    p.add_argument("ct", type=Path, help="CT file (NIfTI/NRRD/MHA) or DICOM series folder")
    p.add_argument("mask", type=Path, help="binary spine mask (any non-zero voxel is spine)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--prob", type=Path, default=None,
                   help="the network's spine probabilities (spine_prob.nii.gz), optional")
    p.add_argument("--mesh", choices=["ply", "none"], default="ply",
                   help="coloured mesh, one colour per vertebra (default ply)")
    p.add_argument("--no-preview", action="store_true", help="skip vertebrae_preview.png")
    p.add_argument("--output-type", action="append", default=[], metavar="TYPE",
                   help="label-map formats besides vertebrae.nii.gz: dicom-seg "
                        "(vertebrae.seg.dcm, DICOM series CT only), seg-nrrd "
                        "(vertebrae.seg.nrrd, 3D Slicer); repeat or comma-separate")
    p.add_argument("--series", default=None, help="DICOM SeriesInstanceUID of the CT")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spineseg.export import check_output_types, parse_output_types
    from spineseg.io import read_image
    from spineseg.vertebrae.analysis import label_vertebrae
    from spineseg.vertebrae.outputs import (
        VertebraeFormats,
        check_vertebrae_outputs,
        save_vertebrae,
    )

    if not str(args.output).strip():
        raise InputError("empty output folder (use -o . for the current folder)")
    inputs = [p for p in (args.ct, args.mask, args.prob) if p is not None]
    for path in inputs:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
    mesh, preview = args.mesh != "none", not args.no_preview
    types = parse_output_types(args.output_type)
    check_output_types(types, [args.ct])
    check_vertebrae_outputs(args.output, mesh, preview, args.overwrite, inputs, types)
    ct = read_image(args.ct, series_uid=args.series)
    mask = read_image(args.mask)
    prob = read_image(args.prob) if args.prob is not None else None
    result = label_vertebrae(ct, mask, prob)
    written = save_vertebrae(result, args.output, mesh=mesh, preview=preview,
                             overwrite=args.overwrite, inputs=inputs,
                             formats=VertebraeFormats(types, args.ct, args.series),
                             extra_stats={"source": str(args.ct), "mask": str(args.mask)})
    print(result.report.note)
    for note in result.report.transitional:
        print(f"transitional anatomy: {note}")
    for row in result.rows():
        heights = "/".join("-" if row[k] is None else f"{row[k]:.1f}" for k in (
            "height_anterior_mm", "height_middle_mm", "height_posterior_mm"))
        hu = "-" if row["hu_median"] is None else f"{row['hu_median']:.0f}"
        flag = "  height ratio < 0.8" if row["height_flag"] else ""
        print(f"{row['name']:>4}  confidence {row['confidence']:.2f}  {row['volume_ml']:6.1f} mL"
              f"  median HU {hu:>5}  heights A/M/P {heights} mm"
              f"{'  partial' if row['partial'] else ''}{flag}")
    for path in written:
        print(f"wrote {path}")
    return 0
