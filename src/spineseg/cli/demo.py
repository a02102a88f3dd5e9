"""``spineseg demo``: the offline end-to-end demonstration (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment a synthetic CT (DICOM) end to end and print its Dice",
                       description="Generate a phantom CT as a DICOM series, segment it with the "
                       "shipped model, write mask, mesh, preview and stats, and print the Dice "
                       "against the phantom's truth.")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_output"),
                   help="output folder (default: ./demo_output); a previous demo's outputs in "
                        "it are replaced, a folder holding anything else is refused")
    p.add_argument("--seed", type=int, default=11, help="phantom seed")
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"), default=(256, 256, 80),
                   help="phantom size in voxels (default 256 256 80)")
    p.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (there is none anyway when stderr is not a terminal)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spineseg.demo import DemoConfig, run_demo
    from spineseg.inference.model_file import load_segmentation_model

    model = load_segmentation_model(args.model)
    # A bar redrawn with carriage returns is noise in a log file.
    progress = not args.quiet and sys.stderr.isatty()
    res = run_demo(args.output, model, DemoConfig(seed=args.seed, shape=tuple(args.size),
                                                  progress=progress))
    info = res.input_info
    shape = "×".join(str(s) for s in info["shape"])
    spacing = "×".join(f"{s:.2f}" for s in info["spacing"])
    print(f"phantom CT (DICOM series): {res.dicom_dir}")
    print(f"  {shape} voxels at {spacing} mm, orientation {info['orientation']}, "
          f"HU {info['min']:.0f}..{info['max']:.0f}, levels {', '.join(res.phantom_params['levels'])}")
    s = res.stats
    print(f"segmented: {s['spine_volume_ml']:.1f} mL of spine over "
          f"{s['craniocaudal_extent_mm']:.0f} mm in {s['runtime_s']['total_s']:.1f} s")
    print(f"Dice against the phantom's truth: {res.dice:.3f}")
    for p in res.outputs:
        print(f"wrote {p}")
    print(f"done in {res.seconds:.1f} s")
    return 0
