"""DICOM series: list the series of a folder, read one safely, write a CT series.

Reading trusts neither file names nor GDCM's file order: every slice header is read, slices are
sorted by ImagePositionPatient projected on the slice normal, and mixed sizes, orientations, pixel
spacings, duplicate positions, gaps (missing slices), uneven spacing and gantry tilt are refused —
ITK would otherwise build a silently wrong grid from them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spineseg.errors import GeometryError, InputError, OutputError, ResourceError
from spineseg.io.itk_common import (
    DEFAULT_MAX_VOXELS,
    check_geometry_header,
    itk_reason,
    quiet_itk,
    volume_from_image,
)
from spineseg.io.volume import Volume

log = logging.getLogger(__name__)

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Positions may jitter by rounding in the header's decimal strings; anything beyond this is real.
_POSITION_TOL_MM = 0.01
_SPACING_REL_TOL = 0.01


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a folder (``uid`` may be empty in anonymised data)."""

    uid: str
    n_slices: int
    description: str
    files: tuple[Path, ...]
    modality: str = ""

    @property
    def label(self) -> str:
        return self.uid or "(empty UID)"


def _require_folder(folder: Path) -> None:
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (a DICOM series is read from its folder)")
    try:
        empty = not any(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror})") from exc
    if empty:
        raise InputError(f"{folder}: empty folder (expected the files of a DICOM series)")


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def list_dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """The DICOM series in ``folder`` (not recursive), most slices first."""
    path = Path(folder)
    _require_folder(path)
    with quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not uids:
            raise InputError(f"{path}: no DICOM files found (expected a folder holding a series)")
        found = []
        for uid in uids:
            files = tuple(Path(f) for f in
                          sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid))
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(files[0]))
            try:
                reader.ReadImageInformation()
                description, modality = _tag(reader, "0008|103e"), _tag(reader, "0008|0060")
            except RuntimeError:
                description, modality = "", ""
            found.append(DicomSeries(uid, len(files), description, files, modality))
    return sorted(found, key=lambda s: (-s.n_slices, s.uid))


@dataclass(frozen=True)
class _Slice:
    file: Path
    size: tuple[int, int]
    spacing: tuple[float, float]
    origin: np.ndarray
    direction: np.ndarray


def _slice_headers(series: DicomSeries) -> list[_Slice]:
    out = []
    for f in series.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{f}: unreadable DICOM slice ({itk_reason(exc)})") from exc
        size, spacing = reader.GetSize(), reader.GetSpacing()
        if len(size) == 3 and size[2] != 1:
            raise InputError(f"{f}: a multi-frame DICOM file ({size[2]} frames) is not supported; "
                             "convert it to NIfTI first")
        out.append(_Slice(f, (size[0], size[1]), (spacing[0], spacing[1]),
                          np.asarray(reader.GetOrigin()[:3], float),
                          np.asarray(reader.GetDirection(), float).reshape(len(size), len(size))))
    return out


def _most_common(values: list, what: str, folder: Path, slices: list[_Slice]) -> None:
    keys = [repr(v) for v in values]
    if len(set(keys)) > 1:
        counts = {k: keys.count(k) for k in dict.fromkeys(keys)}
        odd = next(s.file.name for s, k in zip(slices, keys, strict=True)
                   if k != max(counts, key=counts.__getitem__))
        summary = ", ".join(f"{k} ({n} files)" for k, n in counts.items())
        raise InputError(f"{folder}: DICOM slices of mixed {what}: {summary}; e.g. {odd}")


def _sorted_positions(folder: Path, slices: list[_Slice]) -> tuple[list[_Slice], float]:
    """Sort slices along the normal and return them with the (verified uniform) slice spacing."""
    if len(slices) < 2:
        raise GeometryError(f"{folder}: a single DICOM slice (2D); a 3D series is required")
    _most_common([s.size for s in slices], "size", folder, slices)
    _most_common([tuple(np.round(s.spacing, 4)) for s in slices], "pixel spacing", folder, slices)
    _most_common([tuple(np.round(s.direction[:3, :2].ravel(), 4)) for s in slices],
                 "orientation", folder, slices)
    rows = slices[0].direction[:3, :2]
    normal = np.cross(rows[:, 0], rows[:, 1])
    pos = np.array([s.origin @ normal for s in slices])
    order = np.argsort(pos, kind="stable")
    slices, pos = [slices[i] for i in order], pos[order]
    gaps = np.diff(pos)
    if np.any(gaps < _POSITION_TOL_MM):
        i = int(np.argmin(gaps))
        raise InputError(f"{folder}: two DICOM slices at the same position {pos[i]:.3f} mm "
                         f"({slices[i].file.name}, {slices[i + 1].file.name}); the folder mixes "
                         "acquisitions: choose one series or separate the files")
    step = float(np.median(gaps))
    bad = np.abs(gaps - step) > max(_POSITION_TOL_MM, _SPACING_REL_TOL * step)
    if np.any(bad):
        i = int(np.argmax(np.abs(gaps - step)))
        missing = round(gaps[i] / step) - 1
        what = (f"{missing} missing slice(s)" if missing >= 1 and abs(gaps[i] - (missing + 1) * step)
                < max(_POSITION_TOL_MM, _SPACING_REL_TOL * step) else "inconsistent slice spacing")
        raise InputError(f"{folder}: {what}: a gap of {gaps[i]:.3f} mm between positions "
                         f"{pos[i]:.3f} and {pos[i + 1]:.3f} mm where the series steps "
                         f"{step:.3f} mm ({slices[i].file.name} -> {slices[i + 1].file.name})")
    # Slices must lie on the normal through the first one; otherwise (gantry tilt) the grid shears.
    offsets = np.array([s.origin - slices[0].origin for s in slices])
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.abs(in_plane).max() > max(_POSITION_TOL_MM, 0.01 * step):
        raise GeometryError(f"{folder}: slices are not stacked along their normal (gantry tilt or "
                            "sheared series); resample the series to an orthogonal grid first")
    return slices, float((pos[-1] - pos[0]) / (len(pos) - 1))


def read_dicom_series(folder: str | os.PathLike[str], *, series_uid: str | None = None,
                      max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read one DICOM series from ``folder`` (see :func:`spineseg.io.read_image`)."""
    path = Path(folder)
    series = list_dicom_series(path)
    note = ""
    if series_uid is not None:
        chosen = next((s for s in series if s.uid == series_uid), None)
        if chosen is None:
            listing = ", ".join(f"{s.label} ({s.n_slices} slices)" for s in series)
            raise InputError(f"{path}: no DICOM series with UID {series_uid!r}; "
                             f"available: {listing}")
    else:
        chosen = series[0]
        if len(series) > 1:
            others = ", ".join(f"{s.label} ({s.n_slices} slices)" for s in series[1:])
            note = (f"{path} holds {len(series)} DICOM series; read {chosen.label} "
                    f"({chosen.n_slices} slices, the most); others: {others}; "
                    "choose one with --series UID")
            log.warning(note)
    with quiet_itk():
        slices, step = _sorted_positions(path, _slice_headers(chosen))
        nx, ny = slices[0].size
        check_geometry_header(path, (nx, ny, len(slices)),
                              (*slices[0].spacing, step), 1, max_voxels)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(s.file) for s in slices])
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot read the DICOM series ({itk_reason(exc)})") from exc
        except MemoryError as exc:
            raise ResourceError(f"{path}: not enough memory to read the series") from exc
    # The z spacing from all positions, not just the first two slices.
    image.SetSpacing((*image.GetSpacing()[:2], step))
    meta = {"source": str(path.resolve()), "format": "DICOM", "series_uid": chosen.uid,
            "modality": chosen.modality, "series_description": chosen.description,
            "n_files": str(len(slices))}
    if note:
        meta["series_note"] = note
    return volume_from_image(image, path, meta)


def _new_uid() -> str:
    # DICOM PS3.5 B.2: a UUID-derived UID under the 2.25 root needs no registered org root.
    return f"2.25.{uuid.uuid4().int}"


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return "\\".join(f"{float(v):.10g}" for v in values)


def write_dicom_series(volume: Volume, folder: str | os.PathLike[str], *, overwrite: bool = False,
                       patient_id: str = "PHANTOM",
                       series_description: str = "spineseg phantom") -> Path:
    """Write ``volume`` (HU) as an int16 CT series, one file per slice, atomically.

    Values are rounded to integers and must fit int16. DICOM cannot store a left-handed grid (the
    slice normal is row × column), so such a volume is flipped along z first: the physical image
    is the same, the voxel order along z reverses. Files go to a hidden sibling folder which is
    renamed onto ``folder`` at the end; an existing ``folder`` is replaced only with ``overwrite``
    and only if it holds nothing but ``.dcm`` files.
    """
    target = Path(folder)
    source = volume.meta.get("source")
    if source and Path(source).resolve() == target.resolve():
        raise OutputError(f"{target}: is the input the volume was read from; choose another folder")
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"{target}: exists and is not a folder")
        if not overwrite:
            raise OutputError(f"{target}: already exists (use --overwrite to replace it)")
        strays = [p.name for p in target.iterdir() if not (p.is_file() and p.suffix == ".dcm")]
        if strays:
            raise OutputError(f"{target}: holds files other than .dcm ({strays[0]}); "
                              "refusing to replace it")
    arr = np.asarray(volume.array)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise OutputError(f"{target}: the volume has NaN/inf voxels; DICOM cannot store them")
        arr = np.rint(arr)
    if arr.size and (arr.min() < -32768 or arr.max() > 32767):
        raise OutputError(f"{target}: values {arr.min()}..{arr.max()} do not fit int16 HU")
    image = volume.with_array(arr.astype(np.int16)).to_sitk()
    if np.linalg.det(volume.direction_matrix) < 0:
        image = sitk.Flip(image, [False, False, True])
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    study_uid, series_uid, frame_uid = _new_uid(), _new_uid(), _new_uid()
    common = {
        "0008|0008": "DERIVED\\SECONDARY\\AXIAL", "0008|0016": _CT_IMAGE_STORAGE,
        "0008|0020": now_date, "0008|0021": now_date, "0008|0030": now_time,
        "0008|0031": now_time, "0008|0060": "CT", "0008|103e": series_description,
        "0010|0010": patient_id, "0010|0020": patient_id, "0020|000d": study_uid,
        "0020|000e": series_uid, "0020|0052": frame_uid, "0020|0010": "1", "0020|0011": "1",
        "0020|0037": _fmt(np.concatenate([d[:, 0], d[:, 1]])),
        "0028|0030": _fmt((spacing[1], spacing[0])),  # DICOM: row spacing (y) first
        "0018|0050": f"{spacing[2]:.10g}", "0018|0088": f"{spacing[2]:.10g}",
        "0028|1052": "0", "0028|1053": "1", "0028|1054": "HU",
    }
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the output folder ({exc.strerror})") from exc
    try:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # keep our Study/Series/SOP UIDs instead of GDCM's
        for k in range(image.GetSize()[2]):
            slc = image[:, :, k]
            for key, value in common.items():
                slc.SetMetaData(key, value)
            slc.SetMetaData("0008|0018", _new_uid())
            slc.SetMetaData("0020|0013", str(k + 1))
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            slc.SetMetaData("0020|0032", _fmt(position))
            slc.SetMetaData("0020|1041", f"{np.dot(position, d[:, 2]):.10g}")
            writer.SetFileName(str(tmp / f"slice_{k:05d}.dcm"))
            try:
                writer.Execute(slc)
            except RuntimeError as exc:
                raise OutputError(f"{target}: cannot write DICOM ({itk_reason(exc)})") from exc
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.replace(target, trash / "old")
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write the series ({exc.strerror})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
