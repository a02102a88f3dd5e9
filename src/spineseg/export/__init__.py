"""The mask in the formats clinics and viewers read natively, beside ``spine.nii.gz``.

``nifti`` (``spine.nii.gz``) is always written: batch re-runs, ``stats.json`` and the cohort
report rest on it, and it is the reference the other formats are checked against. ``dicom-seg``
(``spine.seg.dcm``, only for a DICOM series input) and ``seg-nrrd`` (``spine.seg.nrrd``) are added
on request. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from spineseg.errors import InputError

OUTPUT_TYPES = ("nifti", "dicom-seg", "seg-nrrd")
#: The file each output type writes into a case folder.
OUTPUT_FILES = {"nifti": "spine.nii.gz", "dicom-seg": "spine.seg.dcm",
                "seg-nrrd": "spine.seg.nrrd"}


def parse_output_types(values: Iterable[str]) -> tuple[str, ...]:
    """Output types from repeated and/or comma-separated values, in :data:`OUTPUT_TYPES` order,
    ``nifti`` always included."""
    wanted = {"nifti"}
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in OUTPUT_TYPES:
                raise InputError(f"unknown output type {part.strip()!r} "
                                 f"(use {', '.join(OUTPUT_TYPES)})")
            wanted.add(name)
    return tuple(t for t in OUTPUT_TYPES if t in wanted)


def check_output_types(types: Iterable[str], sources: Iterable[Path | None]) -> None:
    """Refuse, before any work, a DICOM-SEG for an input that is not a DICOM series: the object
    references the source images, so without them there is nothing to attach it to."""
    if "dicom-seg" not in set(types):
        return
    from spineseg.io.dicom import is_dicom_series_folder

    not_dicom = [s for s in sources if s is None or not is_dicom_series_folder(s)]
    if not_dicom:
        more = f" (and {len(not_dicom) - 1} more)" if len(not_dicom) > 1 else ""
        raise InputError(f"{not_dicom[0] or 'the input'}: --output-type dicom-seg needs a DICOM "
                         f"series as input, this is not one{more}; leave dicom-seg out for it")
