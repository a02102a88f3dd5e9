"""Read a CT volume (NIfTI, NRRD, MetaImage or a DICOM series folder) with its geometry.

Every failure a user can cause (missing, empty, corrupt, truncated, 2D/4D, bad spacing, absurdly
large) becomes a one-line :mod:`spineseg.errors` exception naming the file, raised *before* the
voxels are allocated wherever the header alone tells.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import sys
import tempfile
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import IO

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from spineseg.errors import GeometryError, InputError, ResourceError
from spineseg.io.volume import Volume

#: File extensions :func:`read_image` and :func:`~spineseg.io.write.write_image` understand.
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_FORMAT_NAMES = {".nii.gz": "NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD",
                 ".mha": "MetaImage", ".mhd": "MetaImage"}
DEFAULT_MAX_VOXELS = 2**31
log = logging.getLogger(__name__)


def image_extension(path: str | os.PathLike[str]) -> str | None:
    """The supported extension of ``path`` (``".nii.gz"`` counts as one), lower case, or None."""
    name = Path(path).name.lower()
    return next((ext for ext in IMAGE_EXTENSIONS if name.endswith(ext)), None)


def itk_reason(exc: BaseException) -> str:
    """The informative last line of an ITK exception, without its source-file preamble."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")]
    reason = lines[-1] if lines else type(exc).__name__
    for prefix in ("sitk::ERROR:", "itk::ERROR:", "ITK ERROR:"):
        if reason.startswith(prefix):
            reason = reason[len(prefix):].strip()
    if reason.startswith("Unable to determine ImageIO reader"):
        return "its content is not recognised as any supported image format"
    return reason


class NativeMessages:
    """What ITK/GDCM/MetaIO wrote to the C-level stderr while :func:`quiet_itk` was active."""

    def __init__(self) -> None:
        self._sink: IO[bytes] | None = None
        self._text = ""

    @property
    def text(self) -> str:
        if self._sink is not None and not self._sink.closed:
            self._sink.seek(0)
            self._text = self._sink.read().decode("utf-8", "replace")
        return self._text

    def first_line(self) -> str:
        return next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")


@contextlib.contextmanager
def quiet_itk() -> Iterator[NativeMessages]:
    """Keep ITK's chatter off the terminal; every condition it flags becomes one of our errors.

    ITK warnings are switched off, and file descriptor 2 is redirected for the duration because
    some readers (MetaIO, teem) write to C++ ``std::cerr`` directly, which would break the CLI's
    one-line error contract. What they wrote is kept (``.text``, also logged at DEBUG) to explain
    failures. The redirection is process-wide, so output of other threads meanwhile lands there too.
    """
    messages = NativeMessages()
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to protect
        saved = -1
    try:
        if saved >= 0:
            messages._sink = tempfile.TemporaryFile()
            sys.stderr.flush()
            os.dup2(messages._sink.fileno(), 2)
        yield messages
    finally:
        if saved >= 0:
            os.dup2(saved, 2)
            os.close(saved)
        if messages._sink is not None:
            text = messages.text.strip()
            messages._sink.close()
            if text:
                log.debug("ITK said: %s", text)
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def explain(exc: BaseException, messages: NativeMessages) -> str:
    """Best one-line reason: ITK's exception text unless it is a stale errno, else its stderr."""
    reason = itk_reason(exc)
    native = messages.first_line()
    if native and (reason.startswith("Reason:") or not reason):
        return native
    return reason


def check_geometry_header(path: Path, size: tuple[int, ...], spacing: tuple[float, ...],
                          components: int, max_voxels: int) -> None:
    """Refuse what is not one scalar 3D volume of sane size, from the header alone."""
    dim = len(size)
    shape = "x".join(str(s) for s in size)
    if dim == 2:
        raise GeometryError(f"{path}: a 2D image ({shape}); a 3D volume is required")
    if dim != 3:
        raise GeometryError(f"{path}: a {dim}D image ({shape}); a single 3D volume is required "
                            "(extract one volume first)")
    if components != 1:
        raise GeometryError(f"{path}: a {components}-component (vector/RGB) image; "
                            "a scalar 3D volume is required")
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise GeometryError(f"{path}: invalid voxel spacing {tuple(float(s) for s in spacing)} "
                            "(every spacing must be > 0)")
    n = int(np.prod(size, dtype=np.float64))
    if n > max_voxels:
        raise ResourceError(f"{path}: declares {shape} = {n:,} voxels, above the limit of "
                            f"{max_voxels:,}; crop or downsample it with another tool first, or "
                            "raise the limit (--max-voxels) if the memory is really there")


def volume_from_image(image: sitk.Image, path: Path, meta: dict[str, str]) -> Volume:
    try:
        volume = Volume.from_sitk(image, meta)
    except GeometryError as exc:
        raise GeometryError(f"{path}: {exc}") from exc
    if np.issubdtype(volume.array.dtype, np.floating):
        nonfinite = int(volume.array.size - np.count_nonzero(np.isfinite(volume.array)))
        if nonfinite:
            # Kept (not replaced): whoever consumes the volume decides; `info` reports the count.
            volume.meta["nonfinite"] = str(nonfinite)
    return volume


def _check_nifti(path: Path, compressed: bool) -> nib.Nifti1Header:
    """Checks ITK's NIfTI reader skips: it turns pixdim <= 0 into 1 and zero-fills truncated data.

    The raw header is parsed with nibabel *without* its fixes; the data length is verified
    against the header (for .nii.gz by streaming the gzip members once, which also checks CRCs).
    """
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a readable NIfTI file ({exc})") from exc
    header_cls = nib.Nifti2Header if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") \
        else nib.Nifti1Header
    try:
        header = header_cls.from_fileobj(BytesIO(raw), check=False)
    except Exception as exc:  # nibabel raises several types for junk headers
        raise InputError(f"{path}: not a readable NIfTI header ({exc})") from exc
    ndim = int(header["dim"][0])
    pixdim = [float(p) for p in header["pixdim"][1:min(ndim, 3) + 1]]
    if any(not np.isfinite(p) or p <= 0 for p in pixdim):
        raise GeometryError(f"{path}: invalid voxel spacing {tuple(pixdim)} in the NIfTI header "
                            "(pixdim must be > 0)")
    dims = [int(d) for d in header["dim"][1:ndim + 1]]
    itemsize = header.get_data_dtype().itemsize
    needed = int(header["vox_offset"]) + int(np.prod(dims, dtype=np.int64)) * itemsize
    if compressed:
        got = 0
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    got += len(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"{path}: truncated or corrupt gzip data ({exc})") from exc
    else:
        got = path.stat().st_size
    if got < needed:
        raise InputError(f"{path}: truncated: the header declares {needed:,} bytes of data, "
                         f"the file holds {got:,}")
    return header


def _nifti_float_image(path: Path, reader: sitk.ImageFileReader) -> sitk.Image:
    """Float NIfTI voxels via nibabel: ITK's NIfTI reader silently turns NaN/inf into 0, which
    would hide a broken export; the geometry still comes from ITK (its qform/sform rules)."""
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt data
        raise InputError(f"{path}: cannot read the image data ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # nibabel (i,j,k) -> (z,y,x)
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image


def read_image(path: str | os.PathLike[str], *, series_uid: str | None = None,
               max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a 3D image file or a DICOM series folder into a :class:`Volume`.

    ``meta`` carries ``source`` (resolved path) and ``format``; DICOM adds ``series_uid``,
    ``modality``, ``series_description`` and, when the folder held several series,
    ``series_note``. Float images with NaN/inf voxels are kept, with ``meta["nonfinite"]`` (the
    count, as a string). Images declaring more than ``max_voxels`` voxels raise
    :class:`ResourceError` before anything is allocated.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        from spineseg.io.dicom import read_dicom_series

        return read_dicom_series(p, series_uid=series_uid, max_voxels=max_voxels)
    if series_uid is not None:
        raise InputError(f"{p}: a series UID can only be chosen for a DICOM folder")
    ext = image_extension(p)
    if ext is None:
        if p.suffix.lower() in (".dcm", ".ima", "") or _has_dicom_magic(p):
            raise InputError(f"{p}: a single DICOM file; pass the folder holding the series")
        raise InputError(f"{p}: unsupported image format {p.suffix!r} "
                         f"(use one of {', '.join(IMAGE_EXTENSIONS)} or a DICOM folder)")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes)")
    fmt = _FORMAT_NAMES[ext]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    with quiet_itk() as said:
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{p}: not a readable {fmt} image ({explain(exc, said)})") from exc
        check_geometry_header(p, tuple(reader.GetSize()), tuple(reader.GetSpacing()),
                              reader.GetNumberOfComponents(), max_voxels)
        header = _check_nifti(p, compressed=ext == ".nii.gz") if fmt == "NIfTI" else None
        try:
            if header is not None and header.get_data_dtype().kind == "f":
                image = _nifti_float_image(p, reader)
            else:
                image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{p}: cannot read the image data, the file is truncated or corrupt "
                             f"({explain(exc, said)})") from exc
        except MemoryError as exc:
            raise ResourceError(f"{p}: not enough memory to read the image") from exc
    return volume_from_image(image, p, {"source": str(p.resolve()), "format": fmt})


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False
