"""What the segment *is*, in codes DICOM viewers and 3D Slicer understand.

One place for the codes, so the DICOM-SEG and the ``.seg.nrrd`` describe the spine identically.
The codes are those of the DICOM standard's context groups (as pydicom ships them): category
"Anatomical Structure" (CID 7150, SCT 91723000) and type "Spine" (CID 7151, SCT 421060004, the
SNOMED CT concept "Structure of vertebral column"): the whole column, C1–L5, which is what the
binary mask holds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """One coded concept: (coding scheme, value, meaning)."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class SegmentTerm:
    """A segment's label, display colour (RGB 0–255) and coded category and type."""

    label: str
    color_rgb: tuple[int, int, int]
    category: Code
    type: Code


SPINE = SegmentTerm(
    label="spine",
    # 3D Slicer's colour for bone, so the segment looks as a user expects it to.
    color_rgb=(241, 214, 145),
    category=Code("SCT", "91723000", "Anatomical Structure"),
    type=Code("SCT", "421060004", "Spine"),
)
