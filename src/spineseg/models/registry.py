"""Build networks by name: a registry of (config dataclass, builder) pairs.

Like timm's ``create_model`` or MONAI's network factories, a decorator registers each network, so
training, inference and experiments refer to a model by a name plus a JSON-able config, and a
checkpoint can rebuild exactly the network it was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar, get_type_hints

import torch
from torch import nn

from spineseg.errors import ModelError

__all__ = [
    "ModelConfig",
    "SegmentationNet",
    "build_model",
    "config_class",
    "list_models",
    "register_model",
    "stage_widths",
]


def stage_widths(base_width: int, depth: int) -> list[int]:
    """Channels of stages 0..depth: ``base_width * 2**i``, uncapped (one policy for every net)."""
    return [base_width * 2**i for i in range(depth + 1)]


@dataclass(frozen=True)
class ModelConfig:
    """Fields every network shares; subclasses add their own switches.

    ``depth`` is the number of 2×2 down-sampling stages (4 in the paper), so input sides must be
    divisible by ``2**depth``; ``out_channels`` is 1 for the paper's single foreground logit.
    """

    in_channels: int = 1
    out_channels: int = 1
    base_width: int = 32
    depth: int = 4

    min_depth: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("in_channels", "out_channels", "base_width"):
            if getattr(self, name) < 1:
                raise ModelError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < self.min_depth:
            raise ModelError(f"depth must be >= {self.min_depth} for this network, got {self.depth}")

    def _check_types(self) -> None:
        # JSON and CLI configs arrive untyped; reject e.g. depth="4" or depth=True early and clearly.
        hints = get_type_hints(type(self))
        for f in fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            if hint is bool:
                ok = isinstance(value, bool)
            elif hint is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif hint is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif hint is str:
                ok = isinstance(value, str)
            else:
                ok = True
            if not ok:
                raise ModelError(f"config field {f.name!r} must be {hint.__name__}, "
                                 f"got {value!r} ({type(value).__name__})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``from_dict`` (or ``build_model(name, **d)``) restores it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Config from a dict; unknown keys raise :class:`ModelError` listing the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ModelError(f"unknown config key(s) {unknown} for {cls.__name__}; "
                             f"valid keys: {', '.join(valid)}")
        return cls(**dict(d))


class SegmentationNet(nn.Module):
    """Base of every registered network: holds ``config`` and checks the input shape.

    The model refuses sides not divisible by ``2**depth`` instead of padding silently: padding
    changes what the network sees at the border, so inference pads and crops explicitly.
    """

    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ModelError(f"expected input (N, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2**cfg.depth
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % factor or w % factor:
            raise ModelError(f"input size {h}x{w} is not divisible by 2**depth = {factor}; "
                             "pad the slice (inference pads and crops) or change depth")


Builder = Callable[[Any], SegmentationNet]
_B = TypeVar("_B", bound=Builder)


@dataclass(frozen=True)
class _Entry:
    config_cls: type[ModelConfig]
    builder: Builder


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, config_cls: type[ModelConfig]) -> Callable[[_B], _B]:
    """Decorator: register ``builder(config) -> SegmentationNet`` under ``name``."""

    def decorate(builder: _B) -> _B:
        if name in _REGISTRY:
            raise ModelError(f"model name {name!r} registered twice")
        _REGISTRY[name] = _Entry(config_cls, builder)
        return builder

    return decorate


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid choices: "
                         f"{', '.join(list_models())}") from None


def config_class(name: str) -> type[ModelConfig]:
    """The config dataclass of model ``name``."""
    return _entry(name).config_cls


def build_model(name: str, **config: Any) -> SegmentationNet:
    """Build model ``name`` from config keywords (defaults for those left out).

    ``build_model(name, **model.config.to_dict())`` rebuilds an identical architecture.
    """
    entry = _entry(name)
    cfg = entry.config_cls.from_dict(config)
    model = entry.builder(cfg)
    if model.config != cfg:  # a builder must keep the config it was given, for checkpoints
        raise ModelError(f"builder of {name!r} did not keep its config")
    return model
