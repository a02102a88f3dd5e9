"""DICOM series: list the series of a folder, read one safely, write a CT series.

Reading trusts neither file names nor GDCM's file order: every slice header is read, slices are
sorted by ImagePositionPatient projected on the slice normal, and mixed sizes, orientations, pixel
spacings, duplicate positions, gaps (missing slices), uneven spacing and gantry tilt are refused —
ITK would otherwise build a silently wrong grid from them. Two acquisitions stored under one
SeriesInstanceUID whose slices overlap in position are refused too, naming how to choose one
(``UID:ACQUISITION``): interleaved, they would pass every other check as one volume.

Of several series in a folder, a CT series is read before any other modality (the model expects
Hounsfield units), then the one with the most slices; the choice and why are in ``series_note``.
"""

from __future__ import annotations

import itertools
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
    preserve_locale,
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
    #: DICOM files of the folder that carry this series' UID but that GDCM could not read as an
    #: image (no pixel data, damaged): named when the series turns out to have a gap.
    unreadable: tuple[Path, ...] = ()

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


def has_dicom_preamble(path: Path) -> bool:
    """The 128-byte preamble and "DICM" magic of a DICOM Part 10 file (any extension)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _skipped_dicom_files(folder: Path, listed: set[str]) -> dict[Path, bytes]:
    """DICOM files GDCM left out of every series, with their first MiB (to look for a UID)."""
    out = {}
    for p in sorted(folder.iterdir()):
        if p.name in listed or p.name.startswith(".") or not p.is_file():
            continue
        if has_dicom_preamble(p):
            try:
                with open(p, "rb") as f:
                    out[p] = f.read(1 << 20)
            except OSError:
                continue
    return out


def list_dicom_series(folder: str | os.PathLike[str]) -> list[DicomSeries]:
    """The DICOM series in ``folder`` (not recursive), most slices first."""
    path = Path(folder)
    _require_folder(path)
    with quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not uids:
            raise InputError(f"{path}: no DICOM files found (expected a folder holding a series)")
        by_uid = {uid: tuple(Path(f) for f in
                             sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), uid))
                  for uid in uids}
        skipped = _skipped_dicom_files(path, {f.name for fs in by_uid.values() for f in fs})
        found = []
        for uid, files in by_uid.items():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(files[0]))
            try:
                reader.ReadImageInformation()
                description, modality = _tag(reader, "0008|103e"), _tag(reader, "0008|0060")
            except RuntimeError:
                description, modality = "", ""
            unreadable = tuple(p for p, head in skipped.items() if uid and uid.encode() in head)
            found.append(DicomSeries(uid, len(files), description, files, modality, unreadable))
    return sorted(found, key=lambda s: (-s.n_slices, s.uid))


def is_dicom_series_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM series (never raises)."""
    try:
        return Path(path).is_dir() and bool(list_dicom_series(path))
    except (InputError, OSError):
        return False


@dataclass(frozen=True)
class _Slice:
    file: Path
    size: tuple[int, int]
    spacing: tuple[float, float]
    origin: np.ndarray
    direction: np.ndarray
    acquisition: str = ""


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
                          np.asarray(reader.GetDirection(), float).reshape(len(size), len(size)),
                          _tag(reader, "0020|0012")))
    return out


def _most_common(values: list, what: str, folder: Path, slices: list[_Slice]) -> None:
    keys = [repr(v) for v in values]
    if len(set(keys)) > 1:
        counts = {k: keys.count(k) for k in dict.fromkeys(keys)}
        odd = next(s.file.name for s, k in zip(slices, keys, strict=True)
                   if k != max(counts, key=counts.__getitem__))
        summary = ", ".join(f"{k} ({n} files)" for k, n in counts.items())
        raise InputError(f"{folder}: DICOM slices of mixed {what}: {summary}; e.g. {odd}")


def _normal(s: _Slice) -> np.ndarray:
    rows = s.direction[:3, :2]
    return np.cross(rows[:, 0], rows[:, 1])


def _acquisition_key(value: str) -> str:
    """AcquisitionNumber as written ("2", "02", "2.0" are one acquisition); "" when absent."""
    try:
        return str(int(float(value)))
    except ValueError:
        return value.strip()


def _acquisitions(slices: list[_Slice]) -> dict[str, list[_Slice]]:
    groups: dict[str, list[_Slice]] = {}
    for s in slices:
        groups.setdefault(_acquisition_key(s.acquisition), []).append(s)
    return dict(sorted(groups.items(), key=lambda kv: (len(kv[0]), kv[0])))


def _overlap(groups: dict[str, list[_Slice]]) -> bool:
    """Do two acquisitions of several slices each cover the same stretch (interleaved, repeated)
    or lie in different planes? One acquisition number per slice or per contiguous block (axial
    step-and-shoot scans) is one volume and does not count."""
    stacks = [g for g in groups.values() if len(g) >= 2]
    if len(stacks) < 2:
        return False
    normal = _normal(stacks[0][0])
    ranges = []
    for g in stacks:
        if not np.allclose(_normal(g[0]), normal, atol=1e-4):
            return True
        pos = [s.origin @ normal for s in g]
        ranges.append((min(pos), max(pos)))
    ranges.sort()
    return any(b[0] <= a[1] + _POSITION_TOL_MM for a, b in itertools.pairwise(ranges))


def _one_acquisition(folder: Path, series: DicomSeries, slices: list[_Slice],
                     wanted: str | None) -> list[_Slice]:
    """The slices of one acquisition: ``wanted``, or all when they form one volume."""
    groups = _acquisitions(slices)

    def listing() -> str:
        parts = []
        for key, g in groups.items():
            pos = [s.origin @ _normal(g[0]) for s in g]
            parts.append(f"{key or '(none)'}: {len(g)} slices at {min(pos):.1f}..{max(pos):.1f} mm")
        return ", ".join(parts)

    if wanted is not None:
        key = _acquisition_key(wanted)
        if key not in groups:
            raise InputError(f"{folder}: DICOM series {series.label} has no acquisition "
                             f"{wanted!r}; AcquisitionNumber {listing()}")
        return groups[key]
    if _overlap(groups):
        choices = " or ".join(f"--series {series.uid}:{k}" for k in groups if k)
        raise InputError(f"{folder}: DICOM series {series.label} holds {len(groups)} acquisitions "
                         f"that overlap in position (AcquisitionNumber {listing()}); read as one "
                         f"they would interleave into a wrong volume: choose one with {choices}, "
                         "or move each acquisition's files into a folder of its own")
    return slices


def _sorted_positions(folder: Path, slices: list[_Slice],
                      unreadable: tuple[Path, ...] = ()) -> tuple[list[_Slice], float]:
    """Sort slices along the normal and return them with the (verified uniform) slice spacing.

    ``unreadable``: files of the series GDCM could not read, named when a slice is missing."""
    if len(slices) < 2:
        raise GeometryError(f"{folder}: a single DICOM slice (2D); a 3D series is required")
    _most_common([s.size for s in slices], "size", folder, slices)
    _most_common([tuple(np.round(s.spacing, 4)) for s in slices], "pixel spacing", folder, slices)
    _most_common([tuple(np.round(s.direction[:3, :2].ravel(), 4)) for s in slices],
                 "orientation", folder, slices)
    normal = _normal(slices[0])
    pos = np.array([s.origin @ normal for s in slices])
    order = np.argsort(pos, kind="stable")
    slices, pos = [slices[i] for i in order], pos[order]
    gaps = np.diff(pos)
    if np.any(gaps < _POSITION_TOL_MM):
        i = int(np.argmin(gaps))
        raise InputError(f"{folder}: two DICOM slices at the same position {pos[i]:.3f} mm "
                         f"({slices[i].file.name}, {slices[i + 1].file.name}); the folder mixes "
                         "acquisitions or holds a copied file: choose one series or separate "
                         "the files")
    step = float(np.median(gaps))
    bad = np.abs(gaps - step) > max(_POSITION_TOL_MM, _SPACING_REL_TOL * step)
    if np.any(bad):
        i = int(np.argmax(np.abs(gaps - step)))
        missing = round(gaps[i] / step) - 1
        what = (f"{missing} missing slice(s)" if missing >= 1 and abs(gaps[i] - (missing + 1) * step)
                < max(_POSITION_TOL_MM, _SPACING_REL_TOL * step) else "inconsistent slice spacing")
        why = ""
        if unreadable:
            names = ", ".join(f.name for f in unreadable[:3])
            names += " …" if len(unreadable) > 3 else ""
            why = (f"; {len(unreadable)} file(s) of this series could not be read as a slice "
                   f"(no pixel data, or damaged): {names}")
        raise InputError(f"{folder}: {what}: a gap of {gaps[i]:.3f} mm between positions "
                         f"{pos[i]:.3f} and {pos[i + 1]:.3f} mm where the series steps "
                         f"{step:.3f} mm ({slices[i].file.name} -> {slices[i + 1].file.name})"
                         f"{why}")
    # Slices must lie on the normal through the first one; otherwise (gantry tilt) the grid shears.
    offsets = np.array([s.origin - slices[0].origin for s in slices])
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.abs(in_plane).max() > max(_POSITION_TOL_MM, 0.01 * step):
        raise GeometryError(f"{folder}: slices are not stacked along their normal (gantry tilt or "
                            "sheared series); resample the series to an orthogonal grid first")
    return slices, float((pos[-1] - pos[0]) / (len(pos) - 1))


def _choose_series(path: Path, series_uid: str | None
                   ) -> tuple[DicomSeries, str | None, str]:
    """The series (and acquisition) that ``series_uid`` names, or the default one, and the note
    saying why when the folder holds several."""
    series = list_dicom_series(path)
    if series_uid is not None:
        uid, _, rest = series_uid.partition(":")
        acquisition = rest if ":" in series_uid else None
        chosen = next((s for s in series if s.uid == uid), None)
        if chosen is None:
            listing = ", ".join(f"{s.label} ({s.n_slices} slices)" for s in series)
            raise InputError(f"{path}: no DICOM series with UID {uid!r}; "
                             f"available: {listing}")
        return chosen, acquisition, ""
    chosen, why = _default_series(series)
    note = ""
    if len(series) > 1:
        others = ", ".join(f"{s.label} ({s.n_slices} slices, {s.modality or 'no modality'})"
                           for s in series if s is not chosen)
        note = (f"{path} holds {len(series)} DICOM series; read {chosen.label} "
                f"({chosen.n_slices} slices, {why}); others: {others}; "
                "choose one with --series UID")
    return chosen, None, note


def dicom_series_files(folder: str | os.PathLike[str], *,
                       series_uid: str | None = None) -> tuple[Path, ...]:
    """The files of the series :func:`read_dicom_series` reads, in the order of its volume's
    slices: ``files[k]`` holds ``volume.array[k]``.

    What a derived object (a DICOM-SEG) needs to reference the source images slice by slice; the
    choice of series and every check are those of the reader, so both always agree.
    """
    path = Path(folder)
    chosen, acquisition, _ = _choose_series(path, series_uid)
    with quiet_itk():
        headers = _one_acquisition(path, chosen, _slice_headers(chosen), acquisition)
        slices, _ = _sorted_positions(path, headers, chosen.unreadable)
    return tuple(s.file for s in slices)


def read_dicom_series(folder: str | os.PathLike[str], *, series_uid: str | None = None,
                      max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read one DICOM series from ``folder`` (see :func:`spineseg.io.read_image`).

    ``series_uid`` chooses a series, ``"UID:N"`` acquisition N of it. Without it a CT series is
    preferred over other modalities, then the one with the most slices (``meta["series_note"]``).
    """
    path = Path(folder)
    chosen, acquisition, note = _choose_series(path, series_uid)
    if note:
        log.warning(note)
    with quiet_itk():
        headers = _one_acquisition(path, chosen, _slice_headers(chosen), acquisition)
        slices, step = _sorted_positions(path, headers, chosen.unreadable)
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
    if acquisition is not None:
        meta["acquisition"] = _acquisition_key(acquisition)
    if note:
        meta["series_note"] = note
    return volume_from_image(image, path, meta)


def _default_series(series: list[DicomSeries]) -> tuple[DicomSeries, str]:
    """CT first (the model reads Hounsfield units; a larger MR series is not its input), then
    the most slices; with why, for the note. ``series`` is ordered most slices first."""
    ct = [s for s in series if s.modality.upper() == "CT"]
    if not ct:
        return series[0], "the most; none is CT"
    if len(ct) == len(series):
        return ct[0], "the most"
    if len(ct) == 1:
        return ct[0], "the only CT series" + (", not the largest" if ct[0] is not series[0] else "")
    return ct[0], "the CT series with the most slices"


def _new_uid() -> str:
    # DICOM PS3.5 B.2: a UUID-derived UID under the 2.25 root needs no registered org root.
    return f"2.25.{uuid.uuid4().int}"


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return "\\".join(f"{float(v):.10g}" for v in values)


def write_dicom_series(volume: Volume, folder: str | os.PathLike[str], *, overwrite: bool = False,
                       patient_id: str = "PHANTOM",
                       series_description: str = "spineseg phantom") -> Path:
    """Write ``volume`` (HU) as an int16 CT series, one file per slice, atomically.

    See :func:`_write_dicom_series`; the caller's locale is left as it was (GDCM resets it).
    """
    with preserve_locale():
        return _write_dicom_series(volume, folder, overwrite=overwrite, patient_id=patient_id,
                                   series_description=series_description)


def _write_dicom_series(volume: Volume, folder: str | os.PathLike[str], *, overwrite: bool,
                        patient_id: str, series_description: str) -> Path:
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
