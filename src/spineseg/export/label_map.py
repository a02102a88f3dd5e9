"""A multilabel NIfTI whose label names travel with it.

NIfTI-1 has no standard place for label names: its registered header extensions (``ecode``) are
for DICOM, AFNI, CIFTI, tool-specific XML and the like, and no viewer reads a label table from
one. What the header does standardise is written: ``intent_code`` NIFTI_INTENT_LABEL (1002, "the
values are indices into a label table") with a short ``intent_name``, ``aux_file`` (NIfTI-1's
"auxiliary file name") naming the colour table beside the image, and a ``descrip`` that says so.
The names and colours themselves go into that colour table in 3D Slicer's text format
(``# Color table file``, then ``value name R G B A`` per line, 0–255), which Slicer loads as a
colour node and ITK-SNAP, FreeSurfer-style readers and a one-line parser can read too.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

from spineseg.errors import InputError, OutputError
from spineseg.export.terminology import LabelSegment
from spineseg.io import Volume, write_image
from spineseg.io.atomic import atomic_path

#: NIFTI_INTENT_LABEL of nifti1.h: voxel values are indices into a label table.
NIFTI_INTENT_LABEL = 1002
_SIZEOF_HDR_1 = 348
# Byte offsets of the NIfTI-1 header fields (nifti1.h).
_INTENT_CODE, _DESCRIP, _AUX_FILE, _INTENT_NAME = 68, 148, 228, 328


def _field(text: str, size: int) -> bytes:
    raw = text.encode("ascii", "replace")[: size - 1]
    return raw + b"\0" * (size - len(raw))


def label_header_fields(header: bytes, intent_name: str, aux_file: str,
                        description: str) -> bytes:
    """``header`` (the first 348 bytes of a NIfTI-1 file) marked as a label map."""
    if len(header) < _SIZEOF_HDR_1:
        raise OutputError("not a NIfTI-1 header (too short)")
    for order in ("<", ">"):
        if struct.unpack(order + "i", header[:4])[0] == _SIZEOF_HDR_1:
            break
    else:
        raise OutputError("not a NIfTI-1 header (sizeof_hdr is not 348)")
    out = bytearray(header)
    out[_INTENT_CODE:_INTENT_CODE + 2] = struct.pack(order + "h", NIFTI_INTENT_LABEL)
    out[_DESCRIP:_DESCRIP + 80] = _field(description, 80)
    out[_AUX_FILE:_AUX_FILE + 24] = _field(aux_file, 24)
    out[_INTENT_NAME:_INTENT_NAME + 16] = _field(intent_name, 16)
    return bytes(out)


def write_label_nifti(labels: Volume, path: str | os.PathLike[str], *, colour_table: str,
                      intent_name: str = "labels", overwrite: bool = False) -> Path:
    """Write ``labels`` as ``.nii.gz`` with the label intent and ``colour_table`` (a file name
    beside it) in the header. ITK writes the image uncompressed (it keeps none of these fields),
    the header is marked, and the file compressed once into place."""
    target = Path(path)
    if not target.name.endswith(".nii.gz"):
        raise OutputError(f"{target}: a label NIfTI is written as .nii.gz")
    description = f"label map; names and colours in {colour_table}"
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmpdir:
        plain = write_image(labels, Path(tmpdir) / "labels.nii", overwrite=True)
        with atomic_path(target, overwrite) as tmp, open(plain, "rb") as src:
            header = label_header_fields(src.read(_SIZEOF_HDR_1), intent_name, colour_table,
                                         description)
            with gzip.open(tmp, "wb", compresslevel=6) as dst:
                dst.write(header)
                shutil.copyfileobj(src, dst, 1 << 20)
    return target


def colour_table_text(segments: Sequence[LabelSegment], name: str = "labels.ctbl") -> str:
    """3D Slicer's colour table text: a header, background 0, then ``value name R G B A``."""
    lines = [f"# Color table file {name}",
             f"# {len(segments) + 1} values"]
    lines.append("0 Background 0 0 0 0")
    for seg in sorted(segments, key=lambda s: s.value):
        name = seg.term.label.replace(" ", "_")  # the format separates fields by spaces
        r, g, b = seg.term.color_rgb
        lines.append(f"{seg.value} {name} {r} {g} {b} 255")
    return "\n".join(lines) + "\n"


def read_colour_table(path: str | os.PathLike[str]) -> dict[int, tuple[str, tuple[int, ...]]]:
    """Label value → (name, RGBA) from a colour table in that format (``#`` lines skipped)."""
    table: dict[int, tuple[str, tuple[int, ...]]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            table[int(parts[0])] = (parts[1], tuple(int(v) for v in parts[2:6]))
        except (ValueError, IndexError) as exc:
            raise InputError(f"{path}: not a colour table line: {line!r}") from exc
    return table
