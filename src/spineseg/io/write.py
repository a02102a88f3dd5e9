"""Write a :class:`Volume` to NIfTI, NRRD or MetaImage, atomically, never over its own input."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from spineseg.errors import OutputError
from spineseg.io.atomic import atomic_path, check_output_path
from spineseg.io.read import IMAGE_EXTENSIONS, image_extension, itk_reason, quiet_itk
from spineseg.io.volume import Volume

# Compressed where the format allows it in one file; .mhd/.nhdr keep a plain .raw beside them.
_COMPRESS = {".nii.gz": True, ".nii": False, ".nrrd": True, ".mha": True,
             ".nhdr": False, ".mhd": False}
# Detached headers name their data file; ITK names it after the (temporary) header.
_DATA_LINE = {".mhd": re.compile(r"^(ElementDataFile\s*=\s*).*$", re.M),
              ".nhdr": re.compile(r"^(data file:\s*).*$", re.M)}


def _refuse_input(volume: Volume, target: Path) -> None:
    source = volume.meta.get("source")
    if source and Path(source).resolve() == target.resolve():
        raise OutputError(f"{target}: is the file this volume was read from; "
                          "write to another path")


def _as_writable(volume: Volume) -> sitk.Image:
    if volume.array.dtype == np.bool_:
        volume = volume.with_array(volume.array.astype(np.uint8))
    return volume.to_sitk()


def write_image(volume: Volume, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``volume`` in the format its extension names; returns the path written.

    ``.nii.gz``, ``.nrrd`` and ``.mha`` are compressed; ``.mhd``/``.nhdr`` write a ``.raw``
    data file beside the header. Refuses to overwrite an existing file (unless ``overwrite``) and
    always refuses the file the volume was read from (``meta["source"]``).
    """
    target = Path(path)
    ext = image_extension(target)
    if ext is None:
        raise OutputError(f"{target}: unsupported image format "
                          f"(use one of {', '.join(IMAGE_EXTENSIONS)})")
    _refuse_input(volume, target)
    check_output_path(target, overwrite)
    image = _as_writable(volume)
    if ext in _DATA_LINE:
        return _write_detached(image, target, ext, overwrite)
    with atomic_path(target, overwrite) as tmp, quiet_itk():
        try:
            sitk.WriteImage(image, str(tmp), _COMPRESS[ext])
        except RuntimeError as exc:
            raise OutputError(f"{target}: cannot write the image ({itk_reason(exc)})") from exc
    return target


def _write_detached(image: sitk.Image, target: Path, ext: str, overwrite: bool) -> Path:
    """Header + data file: the data is renamed into place first, then the header (atomic_path),
    so a reader never sees a header pointing at missing data; a failure removes both."""
    data_final = target.with_name(target.name[: -len(ext)] + ".raw")
    check_output_path(data_final, overwrite)  # the data file is an output too
    placed = False
    try:
        with atomic_path(target, overwrite) as tmp:
            data_tmp = tmp.with_name(tmp.name[: -len(ext)] + ".raw")
            try:
                with quiet_itk():
                    sitk.WriteImage(image, str(tmp), False)
                header = tmp.read_text(encoding="latin-1")
                header, n = _DATA_LINE[ext].subn(lambda m: m.group(1) + data_final.name, header)
                if n != 1:
                    raise OutputError(f"{target}: unexpected {ext} header from ITK "
                                      "(no data file line)")
                tmp.write_text(header, encoding="latin-1")
                os.replace(data_tmp, data_final)
                placed = True
            except RuntimeError as exc:
                raise OutputError(f"{target}: cannot write the image ({itk_reason(exc)})") from exc
            finally:
                with contextlib.suppress(FileNotFoundError):
                    data_tmp.unlink()
    except BaseException:
        if placed:
            with contextlib.suppress(FileNotFoundError):
                data_final.unlink()
        raise
    return target
