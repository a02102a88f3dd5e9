"""The in-memory image: voxels plus the physical grid they live on.

Conventions (ITK's, so SimpleITK, 3D Slicer and DICOM agree):
- ``array`` is in numpy order ``(z, y, x)``, exactly what ``SimpleITK.GetArrayFromImage`` gives;
- ``spacing`` and ``origin`` are ``(x, y, z)`` in millimetres, physical space is LPS;
- ``direction`` is the 3×3 direction-cosine matrix, row-major, 9 floats; column *i* is the
  physical direction of voxel axis *i*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from spineseg.errors import GeometryError

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Volume:
    """A 3D image with its geometry. Cheap to copy; the array is shared unless replaced."""

    array: np.ndarray
    spacing: Vec3
    origin: Vec3 = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError(f"expected a 3D image, got {self.array.ndim} dimensions")
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise GeometryError(f"invalid voxel spacing {tuple(self.spacing)} (must be > 0)")
        if len(self.direction) != 9 or abs(abs(np.linalg.det(self.direction_matrix)) - 1) > 1e-3:
            raise GeometryError("invalid direction matrix (not orthonormal)")

    def __repr__(self) -> str:
        # The dataclass default would print every voxel (megabytes in a notebook cell).
        z, y, x = self.array.shape
        spacing = ", ".join(f"{s:.6g}" for s in self.spacing)
        return (f"Volume(array (z, y, x)=({z}, {y}, {x}) {self.array.dtype}, "
                f"spacing (x, y, z)=({spacing}) mm, orientation {self.orientation})")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def orientation(self) -> str:
        """Three-letter orientation code in ITK/DICOM convention, e.g. ``"LPS"`` for identity."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    def with_array(self, array: np.ndarray) -> Volume:
        """Same grid, new voxels (e.g. a mask for this image)."""
        if array.shape != self.array.shape:
            raise GeometryError(f"array shape {array.shape} does not match grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction, dict(self.meta))

    def same_grid(self, other: Volume, tol: float = 1e-4) -> bool:
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(tuple(float(s) for s in self.spacing))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(d) for d in self.direction))
        return img

    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: dict[str, str] | None = None) -> Volume:
        if image.GetDimension() != 3:
            raise GeometryError(f"expected a 3D image, got {image.GetDimension()} dimensions")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise GeometryError("expected a scalar image, got a multi-component (vector/RGB) image")
        return cls(
            sitk.GetArrayFromImage(image),
            tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            tuple(float(d) for d in image.GetDirection()),
            dict(meta or {}),
        )
