"""``spineseg experiment``: reproduce the paper's Tables 1–3 and Figures 6–7 (resumable)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from spineseg.experiments import PROFILES, TARGETS, ExperimentConfig, run_experiment
from spineseg.training.config import DEVICES


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="reproduce the paper's tables and figures on a prepared dataset",
        description="Train every cell of the paper's Table 1 (4 networks × Focal, BCE, Dice, "
                    "Dice+BCE), Table 2 (stage units) and Table 3 (modules) with one budget, "
                    "evaluate each on the dataset's test split (pooled DSC/IoU), and write "
                    "DIR/table{1,2,3}.md next to the paper's numbers, fig6.png, fig7.png and "
                    "curves.png (validation curves). Runs go to DIR/runs/<table>/<cell>/seed<k>/;"
                    " an interrupted call continues where it stopped when run again, and several "
                    "calls on one DIR share the work (a seed in training is locked).",
    )
    p.add_argument("target", choices=TARGETS, help="what to produce")
    p.add_argument("--data", required=True, metavar="DATASET",
                   help="prepared dataset (spineseg prepare) with val and test splits")
    p.add_argument("--profile", choices=tuple(PROFILES), default="quick",
                   help="budget: paper (GPU), converged (trains to a plateau on the 2 mm grid; "
                        "many hours of CPU), quick (about an hour on 2 CPU cores), smoke "
                        "(converged's dataset rules in minutes), tiny (tests); default quick")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: the profile's)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="cpu, cuda or auto")
    p.add_argument("--runs", metavar="RUNS_DIR",
                   help="where run folders go (default DIR/runs); keeps checkpoints out of a "
                        "docs folder")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the tables and figures the finished seeds allow")
    p.add_argument("--overwrite", action="store_true",
                   help="replace table/figure files in DIR that no experiment wrote "
                        "(DIR is not an experiment folder yet)")
    p.set_defaults(func=run)


def command_line(args: Any) -> str:
    """The call as a reproducible command line (every option spelled out)."""
    parts = ["spineseg", "experiment", args.target, "--data", str(args.data),
             "--profile", args.profile, "-o", str(args.output)]
    if args.seeds is not None:
        parts += ["--seeds", str(args.seeds)]
    parts += ["--device", args.device]
    if args.runs:
        parts += ["--runs", str(args.runs)]
    if args.report_only:
        parts.append("--report-only")
    if args.overwrite:
        parts.append("--overwrite")
    return shlex.join(parts)


def run(args: Any) -> int:
    config = ExperimentConfig(
        target=args.target, data=Path(args.data), out=Path(args.output), profile=args.profile,
        seeds=args.seeds, device=args.device, runs_dir=Path(args.runs) if args.runs else None,
        command=command_line(args), overwrite=args.overwrite, train=not args.report_only)
    outcome = run_experiment(config, progress=lambda msg: print(msg, file=sys.stderr))
    for path in outcome.written:
        print(path)
    print(f"{outcome.seeds_trained} seed run(s) trained now; tables and figures regenerated",
          file=sys.stderr)
    return 0
