"""``spineseg benchmark``: speed against MONAI BasicUNet and nnU-Net 3-D, or the memory check."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

GIB = 1024**3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="time the pipeline against peer networks",
                       description="Segment a synthetic CT with the shipped model and pipeline "
                       "and with peer networks (random weights: same arithmetic) in one "
                       "process; report which model was timed, seconds per volume, slices/s, "
                       "peak memory and the speed ratios.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="256×256×64 volume, 1 repeat (about a minute on 2 cores)")
    size.add_argument("--tiny", action="store_true",
                      help="64×64×8 volume, miniature nnU-Net, no mesh (smoke test; with "
                      "--random-weights a width-8, depth-2 network)")
    p.add_argument("--memory", action="store_true",
                   help="instead: segment a 512×512×800 int16 volume in a fresh process and "
                   "report its peak resident memory against --limit-gib")
    p.add_argument("--ablate", action="store_true",
                   help="instead: time the network part with each speed-up switched off in "
                   "turn (default 512×512×32)")
    p.add_argument("--limit-gib", type=float, default=4.0, help="memory limit (--memory)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", type=int, default=None, help="in-plane size (default 512)")
    p.add_argument("--slices", type=int, default=None,
                   help="slices (default 300; 800 with --memory)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (median; default 3)")
    p.add_argument("--peer-slices", type=int, default=None,
                   help="slices BasicUNet is timed on (default 48)")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: physical cores)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=None,
                       help="model file to time (default: the shipped model)")
    which.add_argument("--random-weights", action="store_true",
                       help="time the shipped architecture with random weights instead (same "
                       "arithmetic, but an empty mask skips cleaning and meshing)")
    p.add_argument("--full-slice", action="store_true",
                   help="time spineseg on whole slices only (segment --full-slice); by default "
                   "it is timed with the coarse-to-fine region and on whole slices")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),
                   default="auto", help="network arithmetic, as segment --precision")
    p.add_argument("--no-peers", action="store_true", help="time spineseg only")
    p.add_argument("--no-nnunet", action="store_true", help="skip the nnU-Net 3-D peer")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _run_memory(args: argparse.Namespace) -> int:
    from spineseg.benchmark import MemoryConfig, measure_segment_memory
    from spineseg.benchmark.inputs import describe_model

    cfg = MemoryConfig(size=args.size or 512, slices=args.slices or 800,
                       limit_gib=args.limit_gib, threads=args.threads,
                       batch_size=args.batch_size, random_weights=args.random_weights,
                       model_path=str(args.model) if args.model else None,
                       region=not args.full_slice)
    print(f"memory check: {cfg.size}×{cfg.size}×{cfg.slices} int16, segment() in a fresh "
          "process …", file=sys.stderr)
    rep = measure_segment_memory(cfg)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    x, y, z = rep.shape_xyz
    print(f"model        {describe_model(rep.model)}")
    print(f"input        {x}×{y}×{z} int16 = {_gib(rep.input_bytes)}")
    print(f"peak RSS     {_gib(rep.peak_rss_bytes)} "
          f"({'exact VmHWM' if rep.peak_rss_exact else 'sampled'}), limit "
          f"{_gib(rep.limit_bytes)}: {'OK' if rep.within_limit else 'EXCEEDED'}")
    print(f"peak phase   {rep.peak_phase}")
    for k, v in rep.phase_peaks_bytes.items():
        print(f"  {k:<14}{_gib(v):>10}  ({rep.runtime_s.get(k, 0.0):.1f} s)")
    for note in rep.notes:
        print(f"note: {note}")
    return 0


def _line(name: str, r: dict[str, Any]) -> str:
    return (f"{name:<22}{r['seconds']:>9.2f} s {r['slices_per_s']:>8.2f} slices/s   network "
            f"{r['network_slices_per_s']:>8.2f} slices/s   peak RSS {_gib(r['peak_rss_bytes'])}"
            + (f"   {r['precision']}" if r.get("precision") else ""))


def _run_ablation(args: argparse.Namespace) -> int:
    from spineseg.benchmark.ablation import run_ablation
    from spineseg.benchmark.inputs import describe_model

    rep = run_ablation(size=args.size or 512, slices=args.slices or 32,
                       repeats=args.repeats or 3, threads=args.threads,
                       model_path=str(args.model) if args.model else None,
                       random_weights=args.random_weights)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    print(f"model: {describe_model(rep.model)}")
    print(f"{'variant':<34}{'s':>8}{'slices/s':>10}{'speed vs default':>18}{'max |Δp|':>11}")
    for r in rep.rows:
        print(f"{r.label:<34}{r.seconds:>8.2f}{r.slices_per_s:>10.2f}"
              f"{r.relative_to_default:>17.2f}×{r.max_abs_prob_diff:>11.1e}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.memory:
        return _run_memory(args)
    if args.ablate:
        return _run_ablation(args)
    from spineseg.benchmark import BenchmarkConfig, NnUNetFastSpec, run_benchmark
    from spineseg.benchmark.inputs import describe_model

    preset: dict[str, Any] = {}
    if args.quick:
        preset = {"size": 256, "slices": 64, "repeats": 1, "peer_slices": 16}
    elif args.tiny:
        preset = {"size": 64, "slices": 8, "repeats": 1, "peer_slices": 8, "base_width": 8,
                  "depth": 2, "nnunet_spec": NnUNetFastSpec.tiny(), "mesh": False}
    given = {"size": args.size, "slices": args.slices, "repeats": args.repeats,
             "peer_slices": args.peer_slices}
    preset.update({k: v for k, v in given.items() if v is not None})
    cfg = BenchmarkConfig(**preset, device=args.device, threads=args.threads,
                          batch_size=args.batch_size, peers=not args.no_peers,
                          nnunet=not args.no_nnunet, random_weights=args.random_weights,
                          model_path=str(args.model) if args.model else None,
                          region=not args.full_slice, precision=args.precision)
    rep = run_benchmark(cfg, progress=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    m = rep.machine
    print(f"machine: {m['cpu']}, {m['physical_cores']} physical cores, "
          f"{_gib(m['ram_bytes'])} RAM, torch {m['torch']}, MONAI {m['monai']}, "
          f"{m['torch_threads']} torch threads, load {m['load_average_1m']}")
    x, y, z = rep.input["shape_xyz"]
    print(f"input:   {x}×{y}×{z} int16 NIfTI, spacing {rep.input['spacing_mm']} mm")
    o = rep.ours
    print(f"model:   {describe_model(o['model'])}")
    runs = [("spineseg (ours)" if not o["region"] else "spineseg, region", o)]
    if "full_slice" in o:
        runs.append(("spineseg, whole slices", o["full_slice"]))
    for name, r in runs:
        print(_line(name, r))
        print("  phases: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items()
                                        if k != "total_s"))
    labels = {"monai_basicunet": "MONAI BasicUNet", "nnunet_3d_fast": "nnU-Net 3D fast",
              "nnunet_3d_fast_full_slice": "nnU-Net 3D fast (ours on whole slices)",
              "nnunet_3d_fast_same_precision": "nnU-Net 3D fast at our precision",
              "region_vs_full_slice": "whole slices (region's gain)"}
    for key, r in rep.peers.items():
        print(_line(labels[key], r))
    for key, ratio in rep.ratios.items():
        print(f"vs {labels[key]}: {ratio:.2f}×")
    for note in rep.notes:
        print(f"note: {note}")
    return 0
