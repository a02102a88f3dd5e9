"""Where one training update's time goes: data (sampling + augmentation) versus forward, backward
and Adam step, in contiguous (NCHW) and channels_last (NHWC) memory format, float32 and bfloat16
autocast (the trainer's ``--precision``).

    python tools/profile_training.py work/ds_final --threads 2 --patch 192 --batch-size 8

The network is the shipped architecture (msrunet, width 16, depth 4, 2.5-D: 3 input channels);
every figure is the median over ``--steps`` updates after two warm-up updates, with the machine's
load average printed beside it, since a loaded 2-core machine moves these numbers by 2x.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from spineseg.data.augment import AugmentConfig, train_transforms
from spineseg.data.dataset import SliceDataset
from spineseg.data.manifest import read_manifest
from spineseg.models import build_model
from spineseg.training.trainer import make_loss


def _median_seconds(fn, steps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patch", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pp = dataclasses.replace(read_manifest(args.dataset).preprocessing_obj, context_slices=1,
                             context_mm=3.0)
    ds = SliceDataset(args.dataset, "train", patch_size=(args.patch,) * 2, preprocessing=pp,
                      foreground_fraction=0.6,
                      transform=train_transforms(AugmentConfig(preprocessing=pp)), seed=0)
    counter = iter(range(10**9))

    def load() -> dict[str, torch.Tensor]:
        samples = [ds[next(counter) % len(ds)] for _ in range(args.batch_size)]
        return {k: torch.stack([s[k] for s in samples]) for k in ("image", "label")}

    batch = load()
    result: dict[str, object] = {
        "load_average_1min": round(os.getloadavg()[0], 2), "threads": args.threads,
        "patch": args.patch, "batch_size": args.batch_size,
        "data_s_per_batch": round(_median_seconds(load, args.steps), 3),
    }
    loss_fn = make_loss("dicebce")
    for name, fmt, bf16 in (("contiguous", torch.contiguous_format, False),
                            ("channels_last", torch.channels_last, False),
                            ("channels_last_bfloat16", torch.channels_last, True)):
        net = build_model("msrunet", base_width=16, depth=4, in_channels=pp.channels)
        net = net.to(memory_format=fmt).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = batch["image"].contiguous(memory_format=fmt)
        y = batch["label"]

        def update(net=net, opt=opt, x=x, y=y, bf16=bf16) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        result[f"update_s_{name}"] = round(_median_seconds(update, args.steps), 3)
    for name in ("channels_last", "channels_last_bfloat16"):
        result[f"{name}_speedup"] = round(
            float(result["update_s_contiguous"]) / float(result[f"update_s_{name}"]), 2)
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
