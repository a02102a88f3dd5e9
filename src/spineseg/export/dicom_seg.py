"""The mask as a DICOM Segmentation (DICOM-SEG) object that PACS viewers and 3D Slicer load over
the source series.

highdicom builds the object: references to every source image (SOP Instance UIDs), the source's
Frame of Reference, patient and study, bit-packed binary frames. What it needs from us is the
source images in the order of the mask's slices, and the mask in their pixel grid: the mask of
``spineseg segment`` shares the series' grid exactly (``files[k]`` holds ``mask.array[k]``, rows
and columns as stored), and that is checked against every slice's own position and orientation
before anything is written, so a mask can never be attached to the wrong pixels.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spineseg import __version__
from spineseg.errors import InputError, OutputError
from spineseg.export.terminology import SPINE, LabelSegment, SegmentTerm
from spineseg.io import Volume, atomic_path
from spineseg.io.dicom import dicom_series_files

log = logging.getLogger(__name__)
#: Millimetres by which a slice's ImagePositionPatient may differ from the mask grid's position of
#: that slice (decimal-string rounding in headers; real misplacement is a slice or more).
POSITION_TOL_MM = 0.05


@dataclass(frozen=True)
class DicomSegInfo:
    """What identifies the algorithm in the object (DICOM's Algorithm Identification)."""

    model_sha256: str = ""
    model_name: str = ""
    series_description: str = "spineseg spine"


def _read_headers(files: Sequence[Path]) -> list:
    import pydicom

    try:
        return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as exc:  # pydicom raises several types for damaged files
        raise InputError(f"{files[0].parent}: cannot read the DICOM headers ({exc})") from exc


def _derived_uid(*parts: str) -> str:
    # DICOM PS3.5 B.2: a UID under 2.25 from 128 bits of a hash; the same inputs give the same
    # UID, so re-running on one series names its study and series alike.
    digest = hashlib.sha256("\\".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _complete_identifiers(datasets: Sequence, folder: Path) -> None:
    """Fill identifiers anonymisation left empty, in the in-memory headers only (files are never
    touched). SOP Class and Instance UIDs come from each file's meta header, which by PS3.10
    holds the same values; an empty Study or Series Instance UID gets one derived from the
    series' SOP Instance UIDs, said in a warning, since a viewer cannot then attach the
    segmentation to the series by UID (only by its images)."""
    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        for own, stored in (("SOPClassUID", "MediaStorageSOPClassUID"),
                            ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(own, "") or "") and meta is not None and meta.get(stored):
                setattr(ds, own, meta.get(stored))
            if not str(ds.get(own, "") or ""):
                raise InputError(f"{ds.filename}: no {own} in the file; a DICOM-SEG cannot "
                                 "reference an image without it")
    instances = [str(ds.SOPInstanceUID) for ds in datasets]
    made = []
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        if all(str(ds.get(key, "") or "") for ds in datasets):
            continue
        uid = _derived_uid(key, *instances)
        for ds in datasets:
            if not str(ds.get(key, "") or ""):
                setattr(ds, key, uid)
        made.append(f"{key} {uid}")
    if made:
        log.warning("%s: the series' headers lack identifiers (anonymised?); the DICOM-SEG uses "
                    "%s, so viewers match it to the images by their SOP Instance UIDs only",
                    folder, ", ".join(made))


def _check_grid(mask: Volume, datasets: Sequence, folder: Path) -> None:
    """Refuse a mask whose slices are not those of the series, position by position."""
    if len(datasets) != mask.array.shape[0]:
        raise OutputError(f"{folder}: the series has {len(datasets)} slices, the mask "
                          f"{mask.array.shape[0]}; it was not segmented from this series")
    d = mask.direction_matrix
    for k, ds in enumerate(datasets):
        rows, cols = int(ds.Rows), int(ds.Columns)
        if (rows, cols) != mask.array.shape[1:]:
            raise OutputError(f"{folder}: slice {k} is {rows}x{cols} pixels, the mask "
                              f"{mask.array.shape[1]}x{mask.array.shape[2]}")
        expected = np.asarray(mask.origin) + d[:, 2] * mask.spacing[2] * k
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if (np.abs(position - expected).max() > POSITION_TOL_MM
                or not np.allclose(orientation, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4)):
            raise OutputError(f"{folder}: slice {k} ({Path(ds.filename).name}) does not lie where "
                              "the mask's slice does; the mask is not on this series' grid")


def write_dicom_seg(mask: Volume, series_folder: str | os.PathLike[str],
                    path: str | os.PathLike[str], *, series_uid: str | None = None,
                    info: DicomSegInfo | None = None, term: SegmentTerm = SPINE,
                    overwrite: bool = False) -> Path:
    """Write ``mask`` (the grid of the DICOM series in ``series_folder``) as a binary DICOM-SEG.

    ``series_uid`` chooses the series as for reading (``"UID"`` or ``"UID:ACQUISITION"``).
    Raises :class:`InputError` when the source cannot be read, :class:`OutputError` when the
    mask is not on its grid or the file cannot be written.
    """
    binary = mask.with_array((np.asarray(mask.array) > 0).astype(np.uint8))
    return write_dicom_seg_labels(binary, series_folder, path, [LabelSegment(1, term)],
                                  series_uid=series_uid, info=info, overwrite=overwrite)


def write_dicom_seg_labels(labels: Volume, series_folder: str | os.PathLike[str],
                           path: str | os.PathLike[str], segments: Sequence[LabelSegment], *,
                           series_uid: str | None = None, info: DicomSegInfo | None = None,
                           overwrite: bool = False) -> Path:
    """Write a label map (the series' grid) as a DICOM-SEG with one segment per entry.

    DICOM numbers segments 1, 2, … without gaps, so ``segments[i]`` becomes segment ``i + 1``
    whatever its voxel value (VerSe ids are not contiguous); the value is kept in the segment's
    tracking id. Voxels of values not listed are left out. Errors as :func:`write_dicom_seg`.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    folder = Path(series_folder)
    info = info or DicomSegInfo()
    files = dicom_series_files(folder, series_uid=series_uid)
    datasets = _read_headers(files)
    _check_grid(labels, datasets, folder)
    _complete_identifiers(datasets, folder)
    parameters = {k: v for k, v in (("model_sha256", info.model_sha256),
                                    ("model_name", info.model_name)) if v}
    algorithm = hd.AlgorithmIdentificationSequence(
        name="spineseg", version=__version__, family=codes.cid7162.ArtificialIntelligence,
        parameters=parameters or None)
    values = np.asarray(labels.array)
    numbers = np.zeros(values.shape, np.uint16)
    descriptions = []
    for number, seg in enumerate(segments, start=1):
        numbers[values == seg.value] = number
        term = seg.term
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=term.label,
            segmented_property_category=hd.sr.CodedConcept(
                term.category.value, term.category.scheme, term.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(
                term.type.value, term.type.scheme, term.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=term.label if len(segments) == 1 else f"{term.label} (label {seg.value})",
            display_color=hd.color.CIELabColor.from_rgb(*term.color_rgb)))
    if not descriptions:
        raise OutputError(f"{path}: no segments to write")
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=numbers,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="spineseg", manufacturer_model_name="spineseg",
            software_versions=__version__, device_serial_number="none",
            series_description=info.series_description,
            # An empty mask still becomes a valid object a viewer opens (with empty frames),
            # rather than an error: "no spine found" is a result too.
            omit_empty_frames=bool(numbers.any()))
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{folder}: cannot build a DICOM-SEG for this series ({exc})") from exc
    with atomic_path(path, overwrite) as tmp:
        seg.save_as(tmp)
    return Path(path)
