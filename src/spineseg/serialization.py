"""Reading and writing spineseg's torch files (model files and training checkpoints) safely.

Both kinds are a ``torch.save``'d dict of tensors and JSON-able values. They are read with
``torch.load(weights_only=True)`` only, so a file from elsewhere cannot run code on load, and every
file spineseg writes records a SHA-256 of its whole content (tensors and metadata) under
:data:`CHECKSUM_KEY`. The zip container torch writes checks no data CRC on load, so without it a
flipped bit in a weight would load and silently change the segmentation. Files written before the
checksum existed have none and are accepted (the shipped model is verified by its recorded file
SHA-256 instead).

Shared by :mod:`spineseg.inference` and :mod:`spineseg.training`, which must not import each other.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spineseg.errors import ModelError

#: Payload key holding the content checksum (``sha256-content/1:<hex>``).
CHECKSUM_KEY = "content_sha256"
_SCHEME = "sha256-content/1"
# torch.save writes a zip archive; torch's legacy format starts with a pickle protocol opcode.
_MAGICS = (b"PK\x03\x04", b"\x80")
# What torch's weights-only unpickler says when a pickle names a callable or class to run.
_CODE_MARKERS = ("GLOBAL", "allowlist", "reduce")


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` canonically: dict order, tuple/list and storage sharing do not matter."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, Mapping):
        h.update(b"D" + struct.pack("<q", len(obj)))
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L" + struct.pack("<q", len(obj)))
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"S" + struct.pack("<q", len(data)) + data)
    else:  # None, bool, int, float (repr round-trips floats, inf and nan included)
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_checksum(payload: Mapping[str, Any]) -> str:
    """Checksum of everything in ``payload`` but :data:`CHECKSUM_KEY` itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != CHECKSUM_KEY})
    return f"{_SCHEME}:{h.hexdigest()}"


def dumps(payload: Mapping[str, Any]) -> bytes:
    """``payload`` plus its content checksum, serialised with ``torch.save``."""
    buf = io.BytesIO()
    torch.save({**payload, CHECKSUM_KEY: content_checksum(payload)}, buf)
    return buf.getvalue()


def verify_checksum(payload: dict[str, Any], path: str | os.PathLike[str],
                    what: str = "model file") -> dict[str, Any]:
    """``payload`` without its checksum entry, after checking it; raises :class:`ModelError`.

    A payload without the entry (written before checksums existed) is returned unchanged.
    """
    if CHECKSUM_KEY not in payload:
        return payload
    recorded = payload[CHECKSUM_KEY]
    if not isinstance(recorded, str) or not recorded.startswith(f"{_SCHEME}:"):
        raise ModelError(f"{path}: unrecognised checksum record {str(recorded)[:40]!r}: the "
                         f"{what} is corrupt or was written by a newer spineseg")
    actual = content_checksum(payload)
    if actual != recorded:
        raise ModelError(f"{path}: checksum mismatch (recorded {recorded.split(':')[1][:12]}…, "
                         f"content {actual.split(':')[1][:12]}…): the {what} is corrupt or was "
                         "modified")
    return {k: v for k, v in payload.items() if k != CHECKSUM_KEY}


def load_weights_only(path: str | os.PathLike[str], what: str = "model file",
                      map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with every failure as one :class:`ModelError` line.

    Only a pickle that names a Python global (a class or function it would call) is reported as
    possibly running code; anything else torch cannot read, such as random bytes, a text file or
    a truncated archive, is "not a readable" file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: {what} not found")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ModelError(f"{p}: cannot open the {what} ({exc.strerror or exc})") from exc
    if not head.startswith(_MAGICS):
        kind = "empty" if not head else "neither a torch zip archive nor a pickle"
        raise ModelError(f"{p}: not a readable {what} ({kind})")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on odd pickle protocols
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if any(marker in str(exc) for marker in _CODE_MARKERS):
            raise ModelError(f"{p}: refusing to load: not a pure-weights {what} (it contains "
                             "Python objects that could run code when unpickled)") from exc
        raise ModelError(f"{p}: not a readable {what} (corrupt pickle data)") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, struct.error, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise ModelError(f"{p}: not a readable {what} ({type(exc).__name__}"
                         f"{': ' + detail if detail else ''})") from exc


CHECKPOINT_FORMAT = "spineseg-checkpoint/1"
REQUIRED_KEYS: tuple[str, ...] = (
    "format", "model_name", "model_config", "preprocessing", "state_dict", "train_config",
    "epoch", "best_metric", "best_epoch", "optimizer", "scheduler", "rng", "history",
    "software_version",
)


def _load_weights_only(p: Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with every failure as one :class:`ModelError` line, and
    the content checksum verified (and dropped) where the file records one."""
    payload = load_weights_only(p, what, map_location)
    return verify_checksum(payload, p, what) if isinstance(payload, dict) else payload


def load_checkpoint(path: str | os.PathLike[str],
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely and check its keys.

    Raises :class:`ModelError` for a missing or unreadable file, for one that holds arbitrary
    Python objects (refused by ``weights_only=True``) and for a dict without the checkpoint keys.
    """
    p = Path(path)
    payload = _load_weights_only(p, "checkpoint", map_location)
    if not isinstance(payload, dict):
        raise ModelError(f"{p}: not a spineseg checkpoint (top level is not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ModelError(f"{p}: not a spineseg training checkpoint (missing {', '.join(missing)})")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ModelError(f"{p}: unsupported checkpoint format {payload['format']!r}")
    if not isinstance(payload["state_dict"], dict) or not all(
            isinstance(v, torch.Tensor) for v in payload["state_dict"].values()):
        raise ModelError(f"{p}: state_dict is not a mapping of tensors")
    return payload
