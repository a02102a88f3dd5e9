"""Mask → mesh: physical placement, orientation, smoothing/decimation budget, real data."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from spineseg.errors import GeometryError, OutputError
from spineseg.io import Volume
from spineseg.io.mesh import write_mesh
from spineseg.reconstruction import MeshConfig, mask_to_mesh, voxel_to_physical


def _ball(shape_zyx=(40, 50, 60), centre_zyx=(20, 25, 30), radius_vox=(6, 9, 12)) -> np.ndarray:
    zz, yy, xx = np.indices(shape_zyx)
    r = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre_zyx, radius_vox, strict=True))
    return (r <= 1.0).astype(np.uint8)


def test_ellipsoid_volume_and_centre_in_millimetres():
    # Anisotropic spacing chosen so the ellipsoid is a physical sphere of radius 12 mm.
    spacing = (1.0, 12 / 9, 2.0)
    origin = (-10.0, 5.0, 100.0)
    vol = Volume(_ball(), spacing, origin)
    mesh = mask_to_mesh(vol, MeshConfig(smoothing_iterations=10, max_faces=None))
    assert mesh.is_watertight
    assert mesh.volume > 0
    expected = 4 / 3 * np.pi * 12**3
    assert mesh.volume == pytest.approx(expected, rel=0.08)
    centre = voxel_to_physical(vol, np.array([[30.0, 25.0, 20.0]]))[0]
    np.testing.assert_allclose(mesh.vertices.mean(axis=0), centre, atol=0.5)


def test_direction_and_ras_flip_place_mesh_correctly():
    direction = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)  # an RAS-stored volume
    vol = Volume(_ball(), (1.0, 1.0, 1.0), (50.0, 60.0, 0.0), direction)
    lps = mask_to_mesh(vol, MeshConfig(smoothing_iterations=0, max_faces=None))
    ras = mask_to_mesh(vol, MeshConfig(space="ras", smoothing_iterations=0, max_faces=None))
    np.testing.assert_allclose(lps.vertices.mean(0), [50 - 30, 60 - 25, 20], atol=0.2)
    np.testing.assert_allclose(ras.vertices.mean(0), [-(50 - 30), -(60 - 25), 20], atol=0.2)
    assert lps.volume > 0 and ras.volume > 0  # winding repaired for mirrored grids


def test_decimation_respects_face_budget():
    vol = Volume(_ball(), (1.0, 1.0, 1.0))
    mesh = mask_to_mesh(vol, MeshConfig(max_faces=500))
    assert 0 < len(mesh.faces) <= 500
    assert np.isfinite(mesh.vertices).all()


def test_empty_mask_is_refused():
    with pytest.raises(GeometryError, match="empty"):
        mask_to_mesh(Volume(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0)))


@pytest.mark.parametrize("fmt", ["stl", "obj", "ply"])
def test_write_mesh_formats_and_no_overwrite(tmp_path, fmt):
    import trimesh

    mesh = mask_to_mesh(Volume(_ball(), (1.0, 1.0, 1.0)), MeshConfig(max_faces=300))
    path = write_mesh(mesh, tmp_path / f"spine.{fmt}")
    back = trimesh.load(path, force="mesh")
    assert len(back.faces) == len(mesh.faces)
    with pytest.raises(OutputError, match="exists"):
        write_mesh(mesh, path)
    with pytest.raises(OutputError, match="unsupported"):
        write_mesh(mesh, tmp_path / "spine.vtk")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"spine.{fmt}"]


def test_real_lumbar_mesh_spans_column_inside_scan(shared_data):
    img = sitk.ReadImage(str(shared_data / "ts_abdomen_3mm" / "spine.nii.gz"))
    vol = Volume.from_sitk(img)
    mesh = mask_to_mesh(vol)
    assert len(mesh.faces) > 1000
    # Scan bounds in physical space: transform all 8 corners of the voxel grid.
    nx, ny, nz = vol.shape_xyz
    corners = np.array([[x, y, z] for x in (-0.5, nx - 0.5) for y in (-0.5, ny - 0.5)
                        for z in (-0.5, nz - 0.5)])
    phys = voxel_to_physical(vol, corners)
    lo, hi = phys.min(0), phys.max(0)
    assert (mesh.vertices >= lo - 1e-6).all() and (mesh.vertices <= hi + 1e-6).all()
    assert np.ptp(mesh.vertices[:, 2]) > 100.0  # T11–L5: well over 100 mm cranio-caudally
