"""Read a CT volume (NIfTI, NRRD, MetaImage or a DICOM series folder) with its geometry.

Every failure a user can cause (missing, empty, corrupt, truncated, 2D/4D, bad spacing, absurdly
large) becomes a one-line :mod:`spineseg.errors` exception naming the file, raised *before* the
voxels are allocated wherever the header alone tells.
"""

from __future__ import annotations

import gzip
import os
import zlib
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from spineseg.errors import GeometryError, InputError, ResourceError
from spineseg.io.dicom import has_dicom_preamble, read_dicom_series
from spineseg.io.itk_common import (  # re-exported: callers import them from here
    DEFAULT_MAX_VOXELS,
    check_geometry_header,
    explain,
    itk_reason,
    quiet_itk,
    volume_from_image,
)
from spineseg.io.volume import Volume

__all__ = ["DEFAULT_MAX_VOXELS", "IMAGE_EXTENSIONS", "check_geometry_header", "image_extension",
           "itk_reason", "quiet_itk", "read_image", "volume_from_image"]

#: File extensions :func:`read_image` and :func:`~spineseg.io.write.write_image` understand.
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_FORMAT_NAMES = {".nii.gz": "NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD",
                 ".mha": "MetaImage", ".mhd": "MetaImage"}


def image_extension(path: str | os.PathLike[str]) -> str | None:
    """The supported extension of ``path`` (``".nii.gz"`` counts as one), lower case, or None."""
    name = Path(path).name.lower()
    return next((ext for ext in IMAGE_EXTENSIONS if name.endswith(ext)), None)


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
    # ITK reads (x, y, z, 1, ...) as 3D (it drops trailing length-1 axes); so must this path.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.shape != tuple(reader.GetSize()):
        raise GeometryError(f"{path}: image data of shape {data.shape} where the header declares "
                            f"{tuple(reader.GetSize())}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # nibabel (i,j,k) -> (z,y,x)
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image


def read_image(path: str | os.PathLike[str], *, series_uid: str | None = None,
               max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a 3D image file or a DICOM series folder into a :class:`Volume`.

    ``series_uid`` chooses the DICOM series of a folder holding several (``"UID:N"``: acquisition
    N of a series holding several acquisitions; see :mod:`spineseg.io.dicom`).
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
        return read_dicom_series(p, series_uid=series_uid, max_voxels=max_voxels)
    if series_uid is not None:
        raise InputError(f"{p}: a series UID can only be chosen for a DICOM folder")
    ext = image_extension(p)
    if ext is None:
        if p.suffix.lower() in (".dcm", ".ima", "") or has_dicom_preamble(p):
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
