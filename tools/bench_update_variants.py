"""Time one training update of the shipped architecture under layout, kernel and precision
variants, interleaved in one process so the machine's load drifts over all of them alike.

    python tools/bench_update_variants.py --threads 1 --patch 192 --rounds 4
    python tools/bench_update_variants.py --grid precision --threads 2 --patch 160
    python tools/bench_update_variants.py --grid compile --threads 2 --patch 192

``--grid kernels`` (default): memory format (NCHW / channels_last) x how the channel attention pools its
descriptors (``copy``: mean and max over a contiguous copy, as shipped; ``raw``: straight from
the feature map; ``adaptive``: torch's adaptive pooling kernels) x whether 1x1 convolutions run
as ``F.conv2d`` or as matrix products (``gemm``; at one thread and batch < 16 torch sends 1x1
convolutions to its reference kernel, whose backward zero-fills its input gradient).
``--grid precision``: memory format x float32 / bfloat16 autocast (the trainer's
``--precision``), with the attention as shipped. ``--grid compile``: the float32 default, eager
bfloat16 NHWC and the same network under ``torch.compile`` (its compile time, paid once before
the first update, is printed apart). The data
are random tensors, so only the update is timed; ``tools/profile_training.py`` times the real
data pipeline. Prints the median seconds per update of each variant and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spineseg.models import build_model
from spineseg.models.blocks import ChannelAttention
from spineseg.training.trainer import make_loss


def _pool_copy(att: ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    return ChannelAttention.weights(att, x)


def _pool_raw(att: ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    avg = torch.mean(x, dim=(2, 3), keepdim=True)
    mx = torch.amax(x, dim=(2, 3), keepdim=True)
    return torch.sigmoid(att.mlp(avg) + att.mlp(mx))


def _pool_adaptive(att: ChannelAttention, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(att.mlp(F.adaptive_avg_pool2d(x, 1)) + att.mlp(F.adaptive_max_pool2d(x, 1)))


POOLS = {"copy": _pool_copy, "raw": _pool_raw, "adaptive": _pool_adaptive}


def _pointwise_gemm(conv: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A 1x1 convolution as one matrix product (NHWC: ``linear`` over channels; NCHW: batched)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        w = conv.weight.view(conv.weight.shape[0], -1)
        if x.shape[-2:] == (1, 1):
            return F.conv2d(x, conv.weight, conv.bias)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), w, conv.bias).permute(0, 3, 1, 2)
        y = torch.matmul(w, x.flatten(2)).unflatten(2, x.shape[2:])
        return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)
    return forward


def _update(fmt: torch.memory_format, pool: str, gemm: bool, patch: int, batch: int,
            bf16: bool, compiled: bool = False) -> Callable[[], float]:
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=16, depth=4, in_channels=3)
    net = net.to(memory_format=fmt)  # type: ignore[call-overload]
    for m in net.modules():
        if isinstance(m, ChannelAttention):
            m.weights = (lambda f, a: lambda x: f(a, x))(POOLS[pool], m)  # type: ignore[method-assign]
        if gemm and isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
            m.forward = _pointwise_gemm(m)  # type: ignore[method-assign]
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = make_loss("dicebce")
    forward = torch.compile(net) if compiled else net
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, patch, patch, generator=g).contiguous(memory_format=fmt)
    y = (torch.rand(batch, 1, patch, patch, generator=g) > 0.8).float()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--patch", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--grid", choices=("kernels", "precision", "compile"), default="kernels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    nchw, nhwc = torch.contiguous_format, torch.channels_last
    # (memory format, attention pooling, 1x1 convolutions as matrix products, bfloat16)
    variants: dict[str, tuple[torch.memory_format, str, bool, bool]] = {
        "nchw copy (trainer)": (nchw, "copy", False, False),
        "nchw raw": (nchw, "raw", False, False),
        "nchw adaptive": (nchw, "adaptive", False, False),
        "nchw adaptive gemm": (nchw, "adaptive", True, False),
        "nhwc copy": (nhwc, "copy", False, False), "nhwc raw": (nhwc, "raw", False, False),
        "nhwc adaptive": (nhwc, "adaptive", False, False),
        "nhwc adaptive gemm": (nhwc, "adaptive", True, False),
    }
    if args.grid == "precision":
        variants = {"nchw float32 (trainer)": (nchw, "copy", False, False),
                    "nchw bfloat16": (nchw, "copy", False, True),
                    "nhwc float32": (nhwc, "copy", False, False),
                    "nhwc bfloat16": (nhwc, "copy", False, True)}
    compiled: set[str] = set()
    if args.grid == "compile":
        compiled = {"nhwc bfloat16 compiled"}
        variants = {"nchw float32 (trainer)": (nchw, "copy", False, False),
                    "nhwc bfloat16": (nhwc, "copy", False, True),
                    "nhwc bfloat16 compiled": (nhwc, "copy", False, True)}
    steps = {k: _update(fmt, pool, gemm, args.patch, args.batch_size, bf16, k in compiled)
             for k, (fmt, pool, gemm, bf16) in variants.items()}
    first, warm = {}, {}
    for k, step in steps.items():  # two warm-up updates each (the first one compiles)
        t = time.perf_counter()
        first[k] = [step(), step()][0]
        warm[k] = time.perf_counter() - t
    # Same weights, same batch: the same first loss (bfloat16 rounds it in the third digit).
    if max(first.values()) - min(first.values()) > (1e-4 if args.grid == "kernels" else 2e-3):
        raise SystemExit(f"variants disagree on the first loss: {first}")
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            t = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t)
    print(f"threads {args.threads}, patch {args.patch}, batch {args.batch_size}, "
          f"load {os.getloadavg()[0]:.2f}")
    for k, v in times.items():
        print(f"{k:22s} {statistics.median(v):.3f} s  ({' '.join(f'{t:.2f}' for t in v)})"
              + (f"  compile + 2 warm-up updates {warm[k]:.0f} s" if k in compiled else ""))


if __name__ == "__main__":
    main()
