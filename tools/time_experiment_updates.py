"""Seconds per training update of every network in an experiment profile, on this machine now.

    OMP_NUM_THREADS=1 python tools/time_experiment_updates.py --profile converged --steps 30

For each distinct run of Tables 1–3 (network, ablation, loss) the profile's network is built at
its width and depth and timed on one forward, backward and Adam step of a batch of the profile's
patch size (random HU-like input, a random mask): the model part of an update, which is what
differs between cells. Data sampling and augmentation are timed once on a prepared dataset when
``--data`` is given. The median over ``--steps`` updates after two warm-ups is printed with the
1-minute load average before and after, since other jobs on a small machine move it by 2×.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import torch

from spineseg.experiments import TABLES, get_profile
from spineseg.experiments.specs import runs_of
from spineseg.models import build_model
from spineseg.training.trainer import make_loss


def _median_seconds(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``steps`` single calls after two warm-up calls.

    CPU seconds of this process are what one call costs a dedicated core (other jobs on the
    machine inflate the wall time, much less the CPU time); both are reported.
    """
    timer = timeit.Timer(fn)
    timer.repeat(repeat=2, number=1)
    wall = timer.repeat(repeat=steps, number=1)
    cpu = timeit.Timer(fn, timer=time.process_time).repeat(repeat=steps, number=1)
    return statistics.median(wall), statistics.median(cpu)


def _data_seconds(data: Path, patch: int, batch: int, steps: int) -> tuple[float, float]:
    from spineseg.data.augment import AugmentConfig, train_transforms
    from spineseg.data.dataset import SliceDataset
    from spineseg.data.manifest import read_manifest

    pp = read_manifest(data).preprocessing_obj
    ds = SliceDataset(data, "train", patch_size=(patch, patch), preprocessing=pp,
                      foreground_fraction=0.5,
                      transform=train_transforms(AugmentConfig(preprocessing=pp)), seed=0)
    counter = iter(range(10**9))

    def load() -> None:
        samples = [ds[next(counter) % len(ds)] for _ in range(batch)]
        torch.stack([s["image"] for s in samples])

    return _median_seconds(load, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="converged")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data", type=Path, help="prepared dataset to time data sampling on")
    ap.add_argument("--runs", help="comma-separated run keys (default: every run)")
    args = ap.parse_args()
    profile = get_profile(args.profile)
    torch.manual_seed(0)
    runs = runs_of(list(TABLES.values()))
    if args.runs:
        runs = [r for r in runs if r.key in args.runs.split(",")]
    p, b = profile.patch_size, profile.batch_size
    x = (torch.randn(b, 1, p, p) * 0.5).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(b, 1, p, p) < 0.05).float()
    out: dict[str, object] = {"profile": profile.name, "threads": torch.get_num_threads(),
                              "patch": p, "batch_size": b, "base_width": profile.base_width,
                              "steps": args.steps, "load_average_before": os.getloadavg()}
    if args.data:
        wall, cpu = _data_seconds(args.data, p, b, args.steps)
        out["data_s_per_batch"] = {"wall": round(wall, 3), "cpu": round(cpu, 3)}
    seconds: dict[str, dict[str, float]] = {}
    for run in runs:
        tc = profile.train_config(run, data="-", out="-", seed=0, device="cpu")
        net = build_model(tc.model, **tc.model_config).to(memory_format=torch.channels_last)
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=profile.lr)
        loss_fn = make_loss(tc.loss)

        def update(net: torch.nn.Module = net, opt: torch.optim.Optimizer = opt,
                   loss_fn: Callable[..., torch.Tensor] = loss_fn) -> None:
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        wall, cpu = _median_seconds(update, args.steps)
        seconds[run.key] = {"wall": round(wall, 3), "cpu": round(cpu, 3)}
        print(json.dumps({run.key: seconds[run.key], "load": os.getloadavg()[0]}), flush=True)
    out["update_s"] = seconds
    for kind in ("wall", "cpu"):  # one update of every distinct run: the cost of one seed / update
        out[f"update_s_sum_over_runs_{kind}"] = round(sum(v[kind] for v in seconds.values()), 2)
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
