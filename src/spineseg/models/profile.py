"""Size and cost of the networks: parameters, GFLOPs of one slice, CPU latency.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, transposed
convolutions and matmuls, counted as 2 FLOPs per multiply-add; batch norm, activations, pooling
and attention pooling are not counted), so the numbers are comparable across networks but are a
lower bound of the arithmetic done.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spineseg.errors import ModelError
from spineseg.models.registry import build_model, list_models

__all__ = ["ModelProfile", "count_parameters", "profile_model", "profile_models"]


@dataclass(frozen=True)
class ModelProfile:
    """Cost of one network on one ``1×in_channels×size×size`` slice."""

    name: str
    parameters: int
    gflops: float
    latency_ms: float
    size: int
    threads: int
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def _latency_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if i >= warmup:  # the first runs pay for allocation and kernel selection
                times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))


def profile_model(name: str, size: int = 512, repeats: int = 3, warmup: int = 1,
                  **config: Any) -> ModelProfile:
    """Profile model ``name`` (built with ``config``) on one slice of ``size × size`` on CPU."""
    if size < 1 or repeats < 1 or warmup < 0:
        raise ModelError(f"need size >= 1, repeats >= 1, warmup >= 0; got {size}, {repeats}, "
                         f"{warmup}")
    model = build_model(name, **config).eval()
    x = torch.zeros(1, model.config.in_channels, size, size)
    model.check_input(x)  # a clear error before any timing
    return ModelProfile(
        name=name,
        parameters=count_parameters(model),
        gflops=_flops(model, x) / 1e9,
        latency_ms=_latency_ms(model, x, repeats, warmup),
        size=size,
        threads=torch.get_num_threads(),
        config=model.config.to_dict(),
    )


def profile_models(names: Sequence[str] | None = None, size: int = 512, repeats: int = 3,
                   warmup: int = 1, **config: Any) -> list[ModelProfile]:
    """Profile several registered models (all by default) with the same shared config."""
    return [profile_model(n, size, repeats, warmup, **config)
            for n in (list_models() if names is None else names)]
