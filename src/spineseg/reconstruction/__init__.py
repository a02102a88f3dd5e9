"""3D reconstruction: binary spine mask → surface mesh a surgeon can open."""

from spineseg.reconstruction.mesh import (
    MeshConfig,
    mask_to_mesh,
    physical_to_voxel,
    voxel_to_physical,
)

__all__ = ["MeshConfig", "mask_to_mesh", "physical_to_voxel", "voxel_to_physical"]
