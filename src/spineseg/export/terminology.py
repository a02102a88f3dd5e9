"""What the segment *is*, in codes DICOM viewers and 3D Slicer understand.

One place for the codes, so the DICOM-SEG and the ``.seg.nrrd`` describe the spine identically.
The codes are those of the DICOM standard's context groups (as pydicom ships them): category
"Anatomical Structure" (CID 7150, SCT 91723000) and type "Spine" (CID 7151, SCT 421060004, the
SNOMED CT concept "Structure of vertebral column"): the whole column, C1–L5, which is what the
binary mask holds. A named vertebra (C1–L5) gets its own CID 7151 type ("L1 vertebra", SCT
66794005, …) read from pydicom's copy of the table, so no code is typed in by hand; levels the
table has no entry for (L6, T13, and unnamed vertebrae numbered from the top) get the generic
"Vertebra" (SCT 51282000), their name staying in the segment label.
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


@dataclass(frozen=True)
class LabelSegment:
    """One segment of a label map: the voxel value it holds and what it is."""

    value: int
    term: SegmentTerm


SPINE = SegmentTerm(
    label="spine",
    # 3D Slicer's colour for bone, so the segment looks as a user expects it to.
    color_rgb=(241, 214, 145),
    category=Code("SCT", "91723000", "Anatomical Structure"),
    type=Code("SCT", "421060004", "Spine"),
)


def _code(code: object) -> Code:
    return Code(code.scheme_designator, code.value, code.meaning)  # type: ignore[attr-defined]


def vertebra_term(name: str, color_rgb: tuple[int, int, int]) -> SegmentTerm:
    """The segment term of one vertebra: its own CID 7151 code where the standard has one (C1–L5),
    the generic vertebra code otherwise; ``name`` (``"L1"``, ``"L6"``, ``"V2"``) is the label."""
    from pydicom.sr.codedict import codes

    table = codes.cid7151
    own = getattr(table, f"{name}Vertebra", None) if name.isalnum() else None
    return SegmentTerm(label=name, color_rgb=color_rgb, category=SPINE.category,
                       type=_code(own if own is not None else table.Vertebra))
