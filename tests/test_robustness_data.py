"""Robustness of data handling: prepare's settings and splits, evaluation of float masks, odd
NIfTI shapes, broken or ambiguous DICOM folders, and the CLI's behaviour on a closed pipe.

Every input is built here, tiny and synthetic; none of these tests needs the real data.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
