"""Training checkpoints: tensors and JSON-able metadata only, loaded with ``weights_only=True``.

A ``.pt`` file is a pickle; an ordinary ``torch.load`` of a file from elsewhere can execute
arbitrary code. Everything saved here is a tensor, number, string, list or dict (random-number
states included, converted to tensors/lists), so :func:`load_checkpoint` can insist on
``weights_only=True`` and refuse anything else. Every checkpoint records a checksum of its
content, verified on load (:mod:`spineseg.serialization`), so a damaged file is refused instead of
resuming from corrupt weights.

The keys ``model_name``, ``model_config``, ``preprocessing``, ``threshold`` and ``state_dict``
are the same as in a deployable model file (``spineseg.inference.model_file``), so ``best.pt``
can be passed to ``spineseg segment --model`` directly.
"""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spineseg import __version__
from spineseg.errors import ModelError
from spineseg.io import write_bytes_atomic

# The checkpoint reader lives beside the weights-only loader so evaluation can read a run's
# checkpoints without importing the trainer; re-exported here for the trainer's callers.
from spineseg.serialization import (  # noqa: F401
    CHECKPOINT_FORMAT,
    REQUIRED_KEYS,
    _load_weights_only,
    dumps,
    load_checkpoint,
)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and plain lists."""
    # The legacy global numpy RNG is what third-party code draws from; it is saved, not used.
    np_state = np.random.get_state()  # noqa: NPY002
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": list(py_state[1])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
              float(n["cached_gaussian"]))
    np.random.set_state(legacy)  # noqa: NPY002
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"]), None))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (replacing an older checkpoint of the same name).

    The payload is checked to be loadable with ``weights_only=True`` *before* it is written, so a
    file that :func:`load_checkpoint` would refuse can never be produced.
    """
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ModelError(f"checkpoint payload lacks {', '.join(missing)}")
    data = dumps(payload)
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"checkpoint payload holds a non-tensor object ({exc})") from exc
    return write_bytes_atomic(path, data, overwrite=True)


def load_initial_weights(path: str | os.PathLike[str]) -> tuple[
        str, dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """``(model_name, model_config, state_dict, preprocessing)`` of a checkpoint or model file,
    for fine-tuning (``preprocessing`` is ``{}`` where the file has none).

    Both kinds of file share these keys, so a run's ``best.pt`` and the shipped fp16 model can seed
    a new run. Loaded with ``weights_only=True``; tensors come back in float32 so the optimiser
    never sees half-precision master weights.
    """
    p = Path(path)
    payload = _load_weights_only(p, "initial weights")
    keys = ("model_name", "model_config", "state_dict")
    if not isinstance(payload, dict) or any(k not in payload for k in keys) or not isinstance(
            payload["state_dict"], dict) or not isinstance(payload["model_config"], dict):
        raise ModelError(f"{p}: not a spineseg checkpoint or model file "
                         f"(expected keys {', '.join(keys)})")
    state = {str(k): (v.float() if v.is_floating_point() else v)
             for k, v in payload["state_dict"].items() if isinstance(v, torch.Tensor)}
    pre = payload.get("preprocessing")
    return (str(payload["model_name"]), dict(payload["model_config"]), state,
            dict(pre) if isinstance(pre, dict) else {})


def software_version() -> str:
    return f"spineseg {__version__}, torch {torch.__version__}"


def average_checkpoints(paths: list[str | os.PathLike[str]]) -> dict[str, Any]:
    """The last checkpoint of ``paths`` with its weights replaced by the mean over all of them.

    Averaging the weights of a run's last epochs (Izmailov et al.'s SWA, without a learning-rate
    change) removes much of the epoch-to-epoch noise that a small, noisy validation set cannot
    choose between. BatchNorm running statistics are averaged like the weights (an approximation
    SWA would refine by a pass over the data); integer buffers come from the last file. Every
    file must be the same network with the same preprocessing.
    """
    if not paths:
        raise ModelError("no checkpoints to average")
    payloads = [load_checkpoint(p) for p in paths]
    last = payloads[-1]
    for p, other in zip(paths, payloads, strict=True):
        for key in ("model_name", "model_config", "preprocessing"):
            if other[key] != last[key]:
                raise ModelError(f"{p}: {key} differs from {paths[-1]}'s; cannot average")
        if other["state_dict"].keys() != last["state_dict"].keys():
            raise ModelError(f"{p}: different parameters from {paths[-1]}'s; cannot average")
    state = {}
    for k, v in last["state_dict"].items():
        if v.is_floating_point():
            state[k] = torch.stack([o["state_dict"][k].float() for o in payloads]).mean(0).to(
                v.dtype)
        else:
            state[k] = v
    return {**last, "state_dict": state,
            "averaged_epochs": [int(o["epoch"]) for o in payloads]}
