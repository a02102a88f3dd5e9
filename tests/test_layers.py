"""The layer rules of DEVELOPERS.md, checked on the source: io needs no torch, models read no
files, inference and evaluation never import the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "spineseg"


def _imports(package: str) -> dict[str, set[str]]:
    """Every module each file of ``package`` imports (function-level imports included)."""
    out: dict[str, set[str]] = {}
    for path in sorted((SRC / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[str(path.relative_to(SRC))] = names
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("io", ("torch", "spineseg.models", "spineseg.training", "spineseg.inference")),
    ("models", ("spineseg.io", "spineseg.data", "spineseg.training", "spineseg.inference")),
    ("inference", ("spineseg.training",)),
    ("evaluation", ("spineseg.training", "spineseg.inference")),
    ("export", ("torch", "spineseg.models", "spineseg.training", "spineseg.inference")),
    # report names the pipeline's result type for annotations only (under TYPE_CHECKING)
    ("report", ("torch", "spineseg.models", "spineseg.training")),
    # vertebrae uses inference.claim's output-folder safety checks (no torch there)
    ("vertebrae", ("torch", "spineseg.models", "spineseg.training",
                   "spineseg.inference.pipeline", "spineseg.inference.predict")),
])
def test_layer_imports(package, forbidden):
    bad = {f: sorted(n for n in names if any(n == x or n.startswith(x + ".") for x in forbidden))
           for f, names in _imports(package).items()}
    offenders = {f: n for f, n in bad.items() if n}
    assert not offenders, offenders
