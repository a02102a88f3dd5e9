"""Updates per second of the real trainer (`spineseg train`, data loading and all), per variant.

    python tools/bench_training_throughput.py work/ds_fold4 --init-weights work/prev_0709.pt \
        --patch 192 --threads 2 --variants float32:1 bfloat16:1 bfloat16:1:compile

A variant is ``PRECISION:WORKERS`` or ``PRECISION:WORKERS:compile`` (``--precision``,
``--workers`` and ``--compile`` of ``spineseg train``); the first is the baseline every speed-up
is against. Each variant trains two one-epoch runs of
``--short`` and ``--long`` updates with the settings of ``tools/crossval.py --from-shipped``
(batch 8, 2.5-D input, case sampling, lr 3e-4; ``--patch`` replaces the recipe's); an epoch's
``seconds`` also holds start-up and the validation pass, which are the same in both runs, so the
difference divided by the extra updates is the time of one update as the trainer runs it. Runs
alternate between variants so drifting load hits all alike; the load average is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from crossval import FINETUNE, FROM_SHIPPED

PRECISIONS = ("float32", "bfloat16")


def _variant(text: str) -> tuple[str, int, bool]:
    parts = text.split(":")
    precision, workers, *rest = parts if len(parts) > 1 else [text, ""]
    if precision not in PRECISIONS or not workers.isdigit() or rest not in ([], ["compile"]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PRECISION:WORKERS[:compile], "
                                         f"PRECISION one of {', '.join(PRECISIONS)}")
    return precision, int(workers), bool(rest)


def _name(variant: tuple[str, int, bool]) -> str:
    precision, workers, compiled = variant
    return f"{precision}_workers{workers}" + ("_compiled" if compiled else "")


def _epoch_seconds(dataset: Path, init: Path, patch: int, steps: int,
                   variant: tuple[str, int, bool], threads: int, out: Path) -> float:
    precision, workers, compiled = variant
    run = out / f"{_name(variant)}_{steps}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    spineseg = str(Path(sys.executable).with_name("spineseg"))
    # Later flags win: the recipe's, then its from-shipped overrides, then this benchmark's.
    subprocess.run([spineseg, "train", "--data", str(dataset), "--init-weights", str(init),
                    *FINETUNE, *FROM_SHIPPED, "--patch", str(patch), "--epochs", "1",
                    "--max-steps-per-epoch", str(steps), "--precision", precision,
                    "--workers", str(workers), "--compile" if compiled else "--no-compile",
                    "-o", str(run)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with (run / "metrics.csv").open(encoding="utf-8") as fh:
        return float(next(csv.DictReader(fh))["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--init-weights", type=Path, required=True)
    ap.add_argument("--patch", type=int, default=192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--short", type=int, default=10)
    ap.add_argument("--long", type=int, default=40)
    ap.add_argument("--variants", type=_variant, nargs="+",
                    default=[("float32", 1, False), ("bfloat16", 1, False)])
    args = ap.parse_args()
    if not 0 < args.short < args.long:
        ap.error("need 0 < --short < --long")
    variants: list[tuple[str, int, bool]] = list(dict.fromkeys(args.variants))
    result: dict[str, object] = {"patch": args.patch, "threads": args.threads, "batch_size": 8,
                                 "load_average_1min": round(os.getloadavg()[0], 2)}
    seconds: dict[tuple[tuple[str, int, bool], int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:  # fill the compile cache, so both measured runs find it warm
            if variant[2]:
                _epoch_seconds(args.dataset, args.init_weights, args.patch, 2, variant,
                               args.threads, Path(tmp) / "warm-up")
        for steps in (args.short, args.long):
            for variant in variants:
                seconds[variant, steps] = _epoch_seconds(
                    args.dataset, args.init_weights, args.patch, steps, variant, args.threads,
                    Path(tmp))
    per = {v: (seconds[v, args.long] - seconds[v, args.short]) / (args.long - args.short)
           for v in variants}
    base = per[variants[0]]
    for variant, s in per.items():
        name = _name(variant)
        result[f"update_s_{name}"] = round(s, 3)
        result[f"speedup_{name}"] = round(base / s, 2)
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
