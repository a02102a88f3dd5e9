"""Write surface meshes (STL, OBJ, PLY) atomically. No torch here."""

from __future__ import annotations

import os
from pathlib import Path

import trimesh

from spineseg.errors import OutputError
from spineseg.io.atomic import atomic_path

MESH_FORMATS = ("stl", "obj", "ply")


def write_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike[str], *,
               overwrite: bool = False) -> Path:
    """Write ``mesh`` in the format its extension names (binary STL/PLY, text OBJ)."""
    target = Path(path)
    fmt = target.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise OutputError(f"{target}: unsupported mesh format {fmt!r} (use one of {', '.join(MESH_FORMATS)})")
    with atomic_path(target, overwrite) as tmp:
        mesh.export(tmp, file_type=fmt)
    return target
