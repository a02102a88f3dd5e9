"""The real labelled CT cases of ``../shared/data``, as every tool script lists them.

One table, so the pair writer, the evaluation and the cross-validation always agree on which
patients exist, where their files are and what kind of scan each is. ``kind`` separates the two
looks a model must handle: ``whole-body`` slices (body outline, ribs, organs, table) and
``spine-crop`` fields of view (the vertebra and paraspinal muscles only; ``sagittal`` ones were
acquired as sagittal slices, so their left-right axis is coarse).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RealCase:
    image: str  # relative to shared/data: a NIfTI file or a DICOM folder
    spine: str  # binary spine mask
    vertebrae: str  # per-vertebra label map
    kind: str  # "whole-body" or "spine-crop"
    sagittal: bool = False
    # Vertebra-shape template subject of the same person (leave it out of phantoms when held out).
    template: str | None = None


CASES: dict[str, RealCase] = {
    "ts_chest": RealCase("ts_chest_dicom", "ts_chest_dicom_ref/spine.nii.gz",
                         "ts_chest_dicom_ref/vertebrae.nii.gz", "whole-body"),
    "ts_abdomen": RealCase("ts_abdomen_3mm/ct.nii.gz", "ts_abdomen_3mm/spine.nii.gz",
                           "ts_abdomen_3mm/vertebrae.nii.gz", "whole-body"),
    "verse012": RealCase("verse012/ct.nii.gz", "verse012/spine.nii.gz",
                         "verse012/vertebrae.nii.gz", "spine-crop"),
    "verse005": RealCase("verse005/ct.nii.gz", "verse005/spine.nii.gz",
                         "verse005/vertebrae.nii.gz", "spine-crop", template="verse005"),
    "verse006": RealCase("verse006/ct.nii.gz", "verse006/spine.nii.gz",
                         "verse006/vertebrae.nii.gz", "spine-crop", sagittal=True),
    "verse007": RealCase("verse007/ct.nii.gz", "verse007/spine.nii.gz",
                         "verse007/vertebrae.nii.gz", "spine-crop", sagittal=True),
    "verse008": RealCase("verse008/ct.nii.gz", "verse008/spine.nii.gz",
                         "verse008/vertebrae.nii.gz", "spine-crop", sagittal=True),
}
