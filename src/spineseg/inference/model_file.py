"""The deployable model file: weights + everything needed to use them, nothing executable.

A model file is a ``torch.save``'d dict of tensors and JSON-able values only, so it loads with
``torch.load(weights_only=True)`` — a file from the internet cannot run code on load. It records
the network (registry name + config), the preprocessing it was trained with, and the decision
threshold. Training checkpoints (``last.pt``/``best.pt``) carry the same keys plus optimiser state,
so either can be passed to ``spineseg segment --model``. The shipped default's SHA-256 is checked
against the value recorded beside it before it is used; every file spineseg writes also records a
checksum of its content, checked on every load (:mod:`spineseg.serialization`).

A file is checked completely before any network is built: a hand-made file can declare a network
of any size beside a few bytes of weights, so the declared config is first matched, tensor by
tensor, against the stored weights' shapes on a network built on torch's ``meta`` device (no
memory), and only then built for real.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spineseg import __version__
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import ModelError, SpinesegError
from spineseg.io.atomic import write_bytes_atomic
from spineseg.models import build_model, config_class, stage_widths
from spineseg.models.padding import training_patch_size
from spineseg.models.registry import ModelConfig
from spineseg.serialization import dumps, load_weights_only, verify_checksum

MODEL_FORMAT = "spineseg-model/1"
DEFAULT_MODEL_NAME = "spineseg-default.pt"
_REQUIRED = ("model_name", "model_config", "preprocessing", "state_dict")


@dataclass
class SegmentationModel:
    """A ready-to-run network with the preprocessing and threshold it expects."""

    network: nn.Module
    model_name: str
    model_config: dict[str, Any]
    preprocessing: Preprocessing
    threshold: float = 0.5
    sha256: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # The least input side the network is run on: its training patch (0: not recorded).
    min_input: int = 0

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (2**depth for every registered network)."""
        return 2 ** int(self.model_config.get("depth", 4))


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_model_path() -> Path:
    return Path(str(resources.files("spineseg") / "weights" / DEFAULT_MODEL_NAME))


def _expected_default_sha() -> str | None:
    record = Path(str(resources.files("spineseg") / "weights" / "spineseg-default.json"))
    if not record.is_file():
        return None
    return str(json.loads(record.read_text(encoding="utf-8"))["sha256"])


def verified_default_model() -> tuple[Path, str]:
    """Path and SHA-256 of the shipped model file, after checking it against its record."""
    p = default_model_path()
    expected = _expected_default_sha()
    if not p.is_file() or expected is None:
        raise ModelError("the shipped default model is missing from this installation; "
                         "pass --model PATH to a model trained with `spineseg train`")
    actual = sha256_of(p)
    if actual != expected:
        raise ModelError(f"{p}: SHA-256 mismatch (expected {expected[:12]}…, got "
                         f"{actual[:12]}…): the shipped weights are corrupt or were modified")
    return p, actual


def read_model_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a model file or training checkpoint safely (``weights_only=True``), check its keys
    and its content checksum (where it records one); the payload is returned without it."""
    p = Path(path)
    payload = load_weights_only(p, "model file")
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        raise ModelError(f"{p}: not a spineseg model file (expected keys {', '.join(_REQUIRED)})")
    return verify_checksum(payload, p, "model file")


def _preprocessing(record: Any, p: Path) -> Preprocessing:
    if not isinstance(record, dict):
        raise ModelError(f"{p}: the preprocessing record is not a mapping")
    try:
        pre = Preprocessing.from_dict(record)
    except KeyError as exc:
        raise ModelError(f"{p}: the preprocessing record lacks {exc}") from exc
    except (TypeError, ValueError, SpinesegError) as exc:
        raise ModelError(f"{p}: invalid preprocessing record ({exc})") from exc
    values = [*pre.spacing_xy, pre.hu_min, pre.hu_max, pre.context_mm]
    if len(pre.spacing_xy) != 2 or not all(math.isfinite(v) for v in values) or min(
            pre.spacing_xy) <= 0 or pre.hu_max <= pre.hu_min:
        raise ModelError(f"{p}: invalid preprocessing record (spacing_xy {list(pre.spacing_xy)}, "
                         f"HU window {pre.hu_min:g}..{pre.hu_max:g})")
    return pre


def _threshold(value: Any, p: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ModelError(f"{p}: invalid decision threshold {str(value)[:40]!r} (a probability "
                         "strictly between 0 and 1)")
    return float(value)


def _config(name: Any, config: Any, p: Path) -> ModelConfig:
    if not isinstance(name, str) or not isinstance(config, dict):
        raise ModelError(f"{p}: model_name must be a string and model_config a mapping")
    try:
        return config_class(name).from_dict(config)
    except ModelError as exc:
        raise ModelError(f"{p}: {exc}") from exc
    except TypeError as exc:
        raise ModelError(f"{p}: invalid model_config ({exc})") from exc


def _state_dict(state: Any, p: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state:
        kind = "empty" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ModelError(f"{p}: state_dict must be a non-empty mapping of tensors, got {kind}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{p}: state_dict holds {len(bad)} entries that are not named tensors "
                         f"(e.g. {str(bad[0])[:60]!r})")
    return state


def _check_size(cfg: ModelConfig, state: dict[str, torch.Tensor], p: Path) -> None:
    """Refuse a config whose network could not be built from these weights, cheaply.

    Every registered network's deepest stage has ``base_width * 2**depth`` channels and each
    stage or repeated unit holds tensors, so no field may exceed what the stored tensors show;
    this bounds the meta-device build that then checks every shape.
    """
    largest = max((int(d) for t in state.values() for d in t.shape), default=0)
    depth = int(cfg.depth)
    deepest = stage_widths(cfg.base_width, depth)[-1] if depth <= largest.bit_length() else None
    over = [f"{n}={getattr(cfg, n)}" for n in ("in_channels", "out_channels", "base_width")
            if getattr(cfg, n) > largest]
    over += [f"{n}={getattr(cfg, n)}" for n in ("depth", "units_per_stage", "scales")
             if getattr(cfg, n, 0) > len(state)]
    if deepest is None or deepest > largest:
        over.append(f"deepest stage width base_width*2**depth={cfg.base_width}*2**{depth}")
    if over:
        raise ModelError(f"{p}: the recorded network ({', '.join(over)}) is larger than the "
                         f"stored weights allow ({len(state)} tensors, no dimension above "
                         f"{largest}); the file is damaged or hand-edited")


def _match_weights(name: str, cfg: ModelConfig, state: dict[str, torch.Tensor], p: Path) -> None:
    """Compare names, shapes and kinds of the stored tensors with the network ``cfg`` builds.

    The network is built on the ``meta`` device: parameters without storage, so a mismatch is
    found before any memory is spent on the real network.
    """
    try:
        with torch.device("meta"):
            skeleton = build_model(name, **cfg.to_dict())
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(f"{p}: cannot build the recorded network ({exc})") from exc
    expected = skeleton.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}")
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(
        expected[k].shape)]
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} of another shape, e.g. {k!r} stored "
                        f"{tuple(state[k].shape)}, network {tuple(expected[k].shape)}")
    kinds = [k for k in expected if k in state and (
        state[k].is_floating_point() != expected[k].is_floating_point()
        or state[k].is_complex() or state[k].dtype == torch.bool)]
    if kinds:
        k = kinds[0]
        problems.append(f"{len(kinds)} of the wrong type, e.g. {k!r} is {state[k].dtype}, "
                        f"network {expected[k].dtype}")
    if problems:
        raise ModelError(f"{p}: weights do not match the recorded network "
                         f"({'; '.join(problems)})")


def load_segmentation_model(path: str | os.PathLike[str] | None = None,
                            device: str | torch.device = "cpu") -> SegmentationModel:
    """Load ``path`` (default: the shipped model, SHA-256 verified) into eval mode on ``device``.

    Every defect of the file is a :class:`ModelError` naming it, raised before the network is
    built: unreadable or unsafe content, a checksum mismatch, a missing or invalid
    preprocessing record or threshold, a network other than one foreground logit fed the
    preprocessing's channels, or weights that do not fit the recorded network.
    """
    if path is None:
        p, actual = verified_default_model()
    else:
        p = Path(path)
        actual = sha256_of(p) if p.is_file() else ""
    payload = read_model_payload(p)
    pre = _preprocessing(payload["preprocessing"], p)
    threshold = _threshold(payload.get("threshold", 0.5), p)
    cfg = _config(payload["model_name"], payload["model_config"], p)
    if cfg.out_channels != 1:
        raise ModelError(f"{p}: the network has {cfg.out_channels} output channels; "
                         "segmentation needs a model with one (the spine's logit)")
    if cfg.in_channels != pre.channels:
        raise ModelError(f"{p}: the network reads {cfg.in_channels} input channel(s) but its "
                         f"preprocessing feeds {pre.channels} (the slice and "
                         f"{pre.context_slices} context plane(s) on each side)")
    state = _state_dict(payload["state_dict"], p)
    name = str(payload["model_name"])
    _check_size(cfg, state, p)
    _match_weights(name, cfg, state, p)
    try:
        network = build_model(name, **cfg.to_dict())
        network.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in state.items()})
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:
        raise ModelError(f"{p}: weights do not match the recorded network ({exc})") from exc
    network.eval().to(device)
    meta = payload.get("meta", {})
    meta = dict(meta) if isinstance(meta, dict) else {}
    # A shipped file records its training config in meta, a training checkpoint at the top.
    min_input = training_patch_size(meta.get("train_config", payload.get("train_config")))
    return SegmentationModel(
        network=network,
        model_name=name,
        model_config=dict(payload["model_config"]),
        preprocessing=pre,
        threshold=threshold,
        sha256=actual,
        source=str(p),
        meta=meta,
        min_input=min_input,
    )


def save_segmentation_model(
    path: str | os.PathLike[str],
    *,
    model_name: str,
    model_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    preprocessing: Preprocessing,
    threshold: float = 0.5,
    meta: dict[str, Any] | None = None,
    half: bool = True,
    overwrite: bool = False,
) -> str:
    """Write a deployable model file atomically, with its content checksum; returns the file's
    SHA-256 (what ``tools/ship_model.py`` records for the shipped default).

    ``half=True`` stores floating-point weights as float16 (half the size; they are cast back to
    float32 on load, and the Dice change this causes is measured in the model card).
    """
    tensors = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
               for k, v in state_dict.items()}
    payload = {
        "format": MODEL_FORMAT,
        "model_name": model_name,
        "model_config": json.loads(json.dumps(model_config)),
        "preprocessing": preprocessing.to_dict(),
        "threshold": float(threshold),
        "state_dict": tensors,
        "meta": json.loads(json.dumps({"spineseg_version": __version__, **(meta or {})})),
    }
    data = dumps(payload)
    write_bytes_atomic(path, data, overwrite=overwrite)
    return hashlib.sha256(data).hexdigest()
