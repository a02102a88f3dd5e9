"""Updates per second of the real trainer (`spineseg train`, data loading and all), per precision.

    python tools/bench_training_throughput.py work/ds_fold4 --init-weights work/prev_0709.pt \
        --patch 192 --threads 2

Each precision trains two one-epoch runs of ``--short`` and ``--long`` updates with the settings
of ``tools/crossval.py --from-shipped`` (batch 8, 2.5-D input, case sampling, lr 3e-4, one
data-loading worker; ``--patch`` replaces the recipe's); an epoch's
``seconds`` also holds start-up and the validation pass, which are the same in both runs, so the
difference divided by the extra updates is the time of one update as the trainer runs it. Runs
alternate between precisions so drifting load hits both alike; the load average is printed.
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


def _epoch_seconds(dataset: Path, init: Path, patch: int, steps: int, precision: str,
                   threads: int, out: Path) -> float:
    run = out / f"{precision}_{steps}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    spineseg = str(Path(sys.executable).with_name("spineseg"))
    # Later flags win: the recipe's, then its from-shipped overrides, then this benchmark's.
    subprocess.run([spineseg, "train", "--data", str(dataset), "--init-weights", str(init),
                    *FINETUNE, *FROM_SHIPPED, "--patch", str(patch), "--epochs", "1",
                    "--max-steps-per-epoch", str(steps), "--precision", precision,
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
    args = ap.parse_args()
    if not 0 < args.short < args.long:
        ap.error("need 0 < --short < --long")
    result: dict[str, object] = {"patch": args.patch, "threads": args.threads, "batch_size": 8,
                                 "load_average_1min": round(os.getloadavg()[0], 2)}
    seconds: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (args.short, args.long):
            for precision in ("float32", "bfloat16"):
                seconds[precision, steps] = _epoch_seconds(
                    args.dataset, args.init_weights, args.patch, steps, precision, args.threads,
                    Path(tmp))
    for precision in ("float32", "bfloat16"):
        per = (seconds[precision, args.long] - seconds[precision, args.short]) / (
            args.long - args.short)
        result[f"update_s_{precision}"] = round(per, 3)
    result["bfloat16_speedup"] = round(
        float(result["update_s_float32"]) / float(result["update_s_bfloat16"]), 2)  # type: ignore[arg-type]
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
