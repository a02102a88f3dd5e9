"""The deployable model file: weights + everything needed to use them, nothing executable.

A model file is a ``torch.save``'d dict of tensors and JSON-able values only, so it loads with
``torch.load(weights_only=True)`` — a file from the internet cannot run code on load. It records
the network (registry name + config), the preprocessing it was trained with, and the decision
threshold. Training checkpoints (``last.pt``/``best.pt``) carry the same keys plus optimiser state,
so either can be passed to ``spineseg segment --model``. The shipped default's SHA-256 is checked
against the value recorded beside it before it is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spineseg import __version__
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import ModelError
from spineseg.io.atomic import write_bytes_atomic
from spineseg.models import build_model

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
    """Load a model file or training checkpoint safely (``weights_only=True``) and validate it."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: model file not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{p}: refusing to load: not a pure-weights file "
                         "(it contains Python objects that could run code)") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{p}: not a readable model file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or any(k not in payload for k in _REQUIRED):
        raise ModelError(f"{p}: not a spineseg model file (expected keys {', '.join(_REQUIRED)})")
    return payload


def load_segmentation_model(path: str | os.PathLike[str] | None = None,
                            device: str | torch.device = "cpu") -> SegmentationModel:
    """Load ``path`` (default: the shipped model, SHA-256 verified) into eval mode on ``device``."""
    if path is None:
        p, actual = verified_default_model()
    else:
        p = Path(path)
        actual = sha256_of(p) if p.is_file() else ""
    payload = read_model_payload(p)
    try:
        network = build_model(str(payload["model_name"]), **dict(payload["model_config"]))
        state = {k: v.float() if v.is_floating_point() else v
                 for k, v in payload["state_dict"].items()}
        network.load_state_dict(state)
    except ModelError:
        raise
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:
        raise ModelError(f"{p}: weights do not match the recorded network ({exc})") from exc
    network.eval().to(device)
    meta = payload.get("meta", {})
    return SegmentationModel(
        network=network,
        model_name=str(payload["model_name"]),
        model_config=dict(payload["model_config"]),
        preprocessing=Preprocessing.from_dict(payload["preprocessing"]),
        threshold=float(payload.get("threshold", 0.5)),
        sha256=actual,
        source=str(p),
        meta=dict(meta) if isinstance(meta, dict) else {},
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
    """Write a deployable model file atomically; returns its SHA-256.

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
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    write_bytes_atomic(path, data, overwrite=overwrite)
    return hashlib.sha256(data).hexdigest()
