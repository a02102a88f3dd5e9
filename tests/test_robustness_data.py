"""Robustness of data handling: prepare's settings and splits, evaluation of float masks, odd
NIfTI shapes, broken or ambiguous DICOM folders, and the CLI's behaviour on a closed pipe.

Every input is built here, tiny and synthetic; none of these tests needs the real data.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spineseg.io import read_image

SRC = Path(__file__).resolve().parents[1] / "src" / "spineseg"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


# --------------------------------------------------------------------------- io layering


def test_dicom_reader_does_not_import_the_file_reader() -> None:
    """read.py dispatches folders to dicom.py; dicom.py must not import read.py back."""
    assert "spineseg.io.read" not in _imported_modules(SRC / "io" / "dicom.py")
    assert "spineseg.io.dicom" in _imported_modules(SRC / "io" / "read.py")
    code = ("import spineseg.io.dicom as d, spineseg.io.read as r; "
            "print(r.read_dicom_series is d.read_dicom_series)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# --------------------------------------------------------------------------- NIfTI shapes


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_5d_nifti_with_singleton_axes_reads_as_3d(tmp_path: Path, dtype: type) -> None:
    """(x, y, z, 1, 1) is one volume whatever its data type (int16 was read, float32 refused)."""
    data = np.arange(6 * 7 * 5, dtype=dtype).reshape(6, 7, 5, 1, 1)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "five.nii.gz")
    vol = read_image(tmp_path / "five.nii.gz")
    assert vol.shape_xyz == (6, 7, 5)
    np.testing.assert_allclose(vol.spacing, (2.0, 3.0, 4.0))
    assert vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array, data[..., 0, 0].T)  # (x,y,z) -> (z,y,x)
    # LPS from RAS: x and y flipped, so compare through nibabel's own orientation handling.
    assert vol.orientation == "RAS"
