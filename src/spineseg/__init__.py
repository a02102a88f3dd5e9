"""spineseg: fully automatic spine segmentation in CT and 3D reconstruction.

``spineseg.segment(image, model=None, config=None, progress=None)`` is the notebook entry point
(``image``: a path, a DICOM folder, a :class:`Volume`, a SimpleITK or a nibabel image);
``spineseg.mask_statistics(ct, mask)`` measures an existing mask and
``spineseg.label_vertebrae(ct, mask)`` names and measures its vertebrae. The
public names are imported on first use, so ``import spineseg`` (and the CLI's ``--help``) stays
fast.
"""

__version__ = "0.1.0"

__all__ = ["SegmentConfig", "SegmentResult", "VertebraeResult", "Volume", "label_vertebrae",
           "mask_statistics", "segment"]

# public name -> the module that defines it
_LAZY = {
    "segment": "spineseg.inference.api",
    "mask_statistics": "spineseg.inference.api",
    "SegmentResult": "spineseg.inference.api",
    "SegmentConfig": "spineseg.inference.pipeline",
    "Volume": "spineseg.io.volume",
    "label_vertebrae": "spineseg.vertebrae.analysis",
    "VertebraeResult": "spineseg.vertebrae.analysis",
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'spineseg' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
