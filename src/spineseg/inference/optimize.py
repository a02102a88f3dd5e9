"""Inference-only rewrites of a trained network that change its speed, not its output.

Each rewrite here was measured on the shipped configuration (docs/performance.md) and is used
only where it paid:

* batch norm folded into the preceding convolution (``fold_batchnorm``): in eval mode BN is an
  affine map per channel, so ``BN(conv(x))`` is one convolution with rescaled weights and a bias.
  It removes a full read and write of every feature map after each convolution.
* channels-last memory format (``to_channels_last``): oneDNN's CPU convolutions run natively in
  NHWC, so NCHW tensors are otherwise reordered around every convolution.
* intra-op threads = physical cores (``physical_cores``/``configure_threads``): SMT siblings share
  the FMA units and only add contention.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from spineseg.errors import ModelError

__all__ = [
    "OptimizeConfig",
    "configure_threads",
    "fold_batchnorm",
    "optimize_network",
    "physical_cores",
    "to_channels_last",
]


@dataclass(frozen=True)
class OptimizeConfig:
    """Which rewrites :func:`optimize_network` applies (all exact up to float rounding)."""

    fold_batchnorm: bool = True
    channels_last: bool = True


def _leaves_in_order(seq: nn.Sequential) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, module) of the modules a Sequential runs, in execution order.

    Only nested Sequentials are descended (their execution order is their child order, which
    MONAI's ``Convolution`` and ``ADN`` inherit); any other container is one opaque step, so a
    conv is fused only with a BN that provably consumes its output and nothing else.
    """
    out: list[tuple[nn.Module, str, nn.Module]] = []
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            out.extend(_leaves_in_order(child))
        else:
            out.append((seq, name, child))
    return out


def _is_outermost_sequential(module: nn.Module, parent: nn.Module | None) -> bool:
    return isinstance(module, nn.Sequential) and not isinstance(parent, nn.Sequential)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model`` with every Conv2d→BatchNorm2d pair fused into one conv.

    The BN is replaced by ``nn.Identity``. ``model`` itself is left untouched. Raises
    :class:`ModelError` for a BN without running statistics (it normalises with batch
    statistics, which no fixed convolution can reproduce).
    """
    folded = copy.deepcopy(model).eval()
    stack: list[tuple[nn.Module | None, nn.Module]] = [(None, folded)]
    while stack:
        parent, module = stack.pop()
        if _is_outermost_sequential(module, parent):
            assert isinstance(module, nn.Sequential)
            steps = _leaves_in_order(module)
            for (p_conv, n_conv, conv), (p_bn, n_bn, bn) in itertools.pairwise(steps):
                if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d:
                    if bn.running_mean is None or bn.running_var is None:
                        raise ModelError("cannot fold a BatchNorm2d without running statistics")
                    setattr(p_conv, n_conv, fuse_conv_bn_eval(conv, bn))
                    setattr(p_bn, n_bn, nn.Identity())
            # Containers inside the Sequential that are not Sequentials still need a visit.
            stack.extend((p, m) for p, _, m in steps if not isinstance(m, nn.Sequential))
        elif not isinstance(module, nn.Sequential):
            stack.extend((module, c) for c in module.children())
    return folded


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with 4-D parameters in channels-last (NHWC) memory order (in place)."""
    return model.to(memory_format=torch.channels_last)


def optimize_network(model: nn.Module, config: OptimizeConfig | None = None) -> nn.Module:
    """A copy of ``model`` rewritten for inference per ``config``; ``model`` is not modified.

    A network in training mode is copied unchanged apart from the memory format: folding would
    silently replace batch statistics by running statistics.
    """
    cfg = config or OptimizeConfig()
    net = fold_batchnorm(model) if cfg.fold_batchnorm and not model.training else copy.deepcopy(
        model)
    return to_channels_last(net) if cfg.channels_last else net


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once).

    Why hand-written: ``os.cpu_count`` counts logical CPUs and ignores the affinity mask, and
    psutil is not a dependency. Reads /proc/cpuinfo on Linux; elsewhere the affinity count.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    logical = len(allowed) if allowed is not None else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return max(logical, 1)
    cores: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        info = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        if "processor" not in info:
            continue
        if allowed is not None and int(info["processor"]) not in allowed:
            continue
        cores.add((info.get("physical id", "0"), info.get("core id", info["processor"])))
    return max(min(len(cores), logical) if cores else logical, 1)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: physical cores) and return the number used."""
    n = physical_cores() if threads is None else int(threads)
    if n < 1:
        raise ModelError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n
