"""Data-parallel training on CPU: two gloo processes through torchrun, only rank 0 writes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from spineseg.training.checkpoint import load_checkpoint
from test_train import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


def test_two_process_gloo_run_trains_one_epoch_and_only_rank0_writes(tmp_path) -> None:
    data = write_tiny_dataset(tmp_path / "ds", splits=("train",) * 4 + ("val", "val"))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "spineseg.cli.main", "train", "--data", str(data), "-o", str(run),
         "--model", "unet", "--width", "4", "--depth", "2", "--epochs", "1", "--batch-size", "2",
         "--patch", "32", "--device", "cpu", "--no-augment"],
        env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished after 1 epoch(s)") == 1  # rank 1 printed nothing
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt", "config.json", "curves.png", "last.pt", "metrics.csv"]  # no temp leftovers
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1
    # Weights are the plain module's (no DDP "module." prefix), loadable without torchrun.
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
               if v.is_floating_point())
