"""spineseg: fully automatic spine segmentation in CT and 3D reconstruction.

``spineseg.segment(path_or_volume, model=None, config=None)`` is the notebook entry point; it is
imported lazily so that ``import spineseg`` (and the CLI's ``--help``) stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in {"segment", "SegmentConfig", "SegmentResult"}:
        from spineseg.inference import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'spineseg' has no attribute {name!r}")
