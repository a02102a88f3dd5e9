"""Binary mask → surface mesh in physical millimetres.

Marching cubes (scikit-image) runs in voxel-index space; vertices are then mapped through the
image's spacing, direction and origin, so the mesh lies exactly over the CT in any viewer that
shares the coordinate system. STL/OBJ carry no coordinate system: 3D Slicer assumes LPS for them,
which is ITK's physical space, hence the default. ``space="ras"`` flips x and y for tools that
assume RAS (e.g. nibabel/FreeSurfer users).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import trimesh
from skimage import measure

from spineseg.errors import GeometryError
from spineseg.io.volume import Volume


@dataclass(frozen=True)
class MeshConfig:
    """How a mask becomes a mesh.

    ``smoothing_iterations`` of Taubin smoothing remove the voxel staircase without the
    shrinkage plain Laplacian smoothing causes; ``max_faces`` keeps files small enough to open
    on a laptop (quadric decimation preserves shape far better than marching-cubes step sizes).
    """

    space: Literal["lps", "ras"] = "lps"
    smoothing_iterations: int = 10
    max_faces: int | None = 200_000
    level: float = 0.5


def voxel_to_physical(volume: Volume, ijk_xyz: np.ndarray) -> np.ndarray:
    """Map continuous voxel indices ``(N, 3)`` in (x, y, z) order to LPS millimetres."""
    d = volume.direction_matrix
    scaled = ijk_xyz * np.asarray(volume.spacing, dtype=float)
    return scaled @ d.T + np.asarray(volume.origin, dtype=float)


def physical_to_voxel(volume: Volume, points: np.ndarray) -> np.ndarray:
    """Inverse of :func:`voxel_to_physical`: LPS millimetres to continuous (x, y, z) indices."""
    d = volume.direction_matrix
    rel = np.asarray(points, dtype=float) - np.asarray(volume.origin, dtype=float)
    return (rel @ np.linalg.inv(d).T) / np.asarray(volume.spacing, dtype=float)


def _clamp_to_field_of_view(volume: Volume, points: np.ndarray) -> np.ndarray:
    # Where the column leaves the scan, the surface is capped on the grid's outer face; smoothing
    # may push that cap a fraction of a voxel outside. Nothing was imaged there, so clamp back.
    idx = physical_to_voxel(volume, points)
    upper = np.asarray(volume.shape_xyz, dtype=float) - 0.5
    return voxel_to_physical(volume, np.clip(idx, -0.5, upper))


def mask_to_mesh(mask: Volume, config: MeshConfig | None = None) -> trimesh.Trimesh:
    """Extract the surface of ``mask > 0`` as a closed, consistently oriented mesh.

    The mask is zero-padded by one voxel so structures touching the border still close.
    Raises :class:`GeometryError` when the mask is empty (there is nothing to reconstruct).
    """
    cfg = config or MeshConfig()
    binary = np.asarray(mask.array) > 0
    if not binary.any():
        raise GeometryError("mask is empty: no surface to reconstruct")
    padded = np.pad(binary, 1).astype(np.float32)
    verts_zyx, faces, _normals, _values = measure.marching_cubes(padded, level=cfg.level)
    verts_xyz = verts_zyx[:, ::-1] - 1.0  # undo the padding offset; (z,y,x) -> (x,y,z)
    mesh = trimesh.Trimesh(vertices=voxel_to_physical(mask, verts_xyz), faces=faces, process=True)
    if cfg.smoothing_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, iterations=cfg.smoothing_iterations)
    if cfg.max_faces is not None and len(mesh.faces) > cfg.max_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=int(cfg.max_faces))
    verts = _clamp_to_field_of_view(mask, mesh.vertices)
    if cfg.space == "ras":
        verts = verts * np.array([-1.0, -1.0, 1.0])
    mesh = trimesh.Trimesh(vertices=verts, faces=mesh.faces, process=False)
    # A mirrored grid (det(direction) < 0, or the RAS flip) turns the winding inside out;
    # make normals point outwards whatever the geometry.
    mesh.fix_normals()
    if mesh.is_volume and mesh.volume < 0:
        mesh.invert()
    if not np.isfinite(mesh.vertices).all():
        raise GeometryError("mesh has non-finite vertices (invalid image geometry)")
    return mesh
