"""Real vertebra shapes packaged with spineseg (VerSe masks, CC BY-SA 4.0; see shape_templates/).

Each template is one vertebra, straightened into its own upright LPS frame (z = column tangent,
y = posterior, x = patient left) on an isotropic grid, as built by
``tools/build_shape_templates.py``. The phantom generator places them along a curved column.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np

from spineseg.errors import DataError

TEMPLATE_FILE = "vertebrae.npz"
FORMAT = "spineseg-vertebra-templates/1"
LEVEL_NAMES: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
)


@dataclass(frozen=True)
class VertebraTemplate:
    """One real vertebra. Coordinates are ``(z, y, x)`` millimetres inside ``mask``'s grid."""

    level: int  # VerSe id: 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5
    name: str
    source: str  # VerSe subject it came from
    mask: np.ndarray  # bool (z, y, x), read-only
    spacing_mm: float
    centroid: np.ndarray
    body_center: np.ndarray  # centre of the vertebral body (C1: centre of the ring)
    body_size: np.ndarray  # body height (SI), depth (AP), width (LR) in mm
    tp_left: np.ndarray  # tip of the left transverse process
    tp_right: np.ndarray


def level_name(level: int) -> str:
    """VerSe id (1-24) to its name, e.g. 20 -> ``"L1"``."""
    if not 1 <= level <= len(LEVEL_NAMES):
        raise DataError(f"vertebra level id {level} outside 1-{len(LEVEL_NAMES)}")
    return LEVEL_NAMES[level - 1]


@functools.lru_cache(maxsize=1)
def load_templates() -> dict[str, tuple[VertebraTemplate, ...]]:
    """All packaged templates grouped by level name (``"C1"`` … ``"L5"``), cached per process.

    Every level has at least one template; which source subjects contribute is recorded in each
    template's ``source``.
    """
    try:
        ref = resources.files("spineseg.data").joinpath("shape_templates", TEMPLATE_FILE)
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise DataError(f"packaged vertebra templates unreadable: {exc}") from exc
    if str(data.get("format")) != FORMAT:
        raise DataError(f"packaged vertebra templates have format {data.get('format')!r}")
    spacing = float(data["spacing_mm"])
    out: dict[str, list[VertebraTemplate]] = {name: [] for name in LEVEL_NAMES}
    for i, level in enumerate(data["level"]):
        shape = tuple(int(s) for s in data["shape"][i])
        bits = data["bits"][data["offset"][i]: data["offset"][i + 1]]
        mask = np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)
        mask.setflags(write=False)
        tpl = VertebraTemplate(
            level=int(level),
            name=str(data["name"][i]),
            source=str(data["source"][i]),
            mask=mask,
            spacing_mm=spacing,
            centroid=data["centroid"][i].astype(float),
            body_center=data["body_center"][i].astype(float),
            body_size=data["body_size"][i].astype(float),
            tp_left=data["tp_left"][i].astype(float),
            tp_right=data["tp_right"][i].astype(float),
        )
        out[tpl.name].append(tpl)
    missing = [name for name, lst in out.items() if not lst]
    if missing:
        raise DataError(f"packaged vertebra templates lack levels {missing}")
    return {name: tuple(lst) for name, lst in out.items()}
