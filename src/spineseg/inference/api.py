"""What ``spineseg.segment`` adds to the pipeline for notebook users.

Input: a path, a :class:`~spineseg.io.Volume`, a SimpleITK image or a nibabel image (any other
object is an :class:`~spineseg.errors.InputError` that names the accepted kinds). Output: the
pipeline's result with ``save(outdir)`` (the files ``spineseg segment`` writes) and
``to_nibabel()`` / ``to_sitk()`` for the mask. nibabel's affine maps ``(i, j, k)`` voxel indices
to RAS millimetres; a Volume is ITK's ``(z, y, x)`` array in LPS, so both conversions flip the
first two physical axes and transpose the array, and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from spineseg.errors import InputError
from spineseg.inference import pipeline
from spineseg.inference.model_file import SegmentationModel
from spineseg.inference.pipeline import SegmentConfig
from spineseg.io import Volume

_RAS_LPS = np.diag([-1.0, -1.0, 1.0])  # its own inverse: RAS <-> LPS

Source = str | os.PathLike[str] | Volume | sitk.Image | nib.spatialimages.SpatialImage


def volume_from_nibabel(image: nib.spatialimages.SpatialImage) -> Volume:
    """A nibabel image as a Volume on the same physical grid (its voxels, not a resampling)."""
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1) as NIfTI often stores 3D
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"expected a 3D nibabel image, got shape {tuple(image.shape)}")
    affine = np.asarray(image.affine, dtype=float)
    linear = _RAS_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise InputError(f"nibabel image has a degenerate affine (voxel sizes {spacing})")
    meta = {"format": "nibabel"}
    filename = image.get_filename() if hasattr(image, "get_filename") else None
    if filename:
        meta["source"] = str(Path(filename).resolve())
    return Volume(np.ascontiguousarray(data.T), tuple(float(s) for s in spacing),
                  tuple(float(o) for o in _RAS_LPS @ affine[:3, 3]),
                  tuple(float(d) for d in (linear / spacing).ravel()), meta)


def volume_to_nibabel(volume: Volume) -> nib.Nifti1Image:
    """A Volume as a NIfTI-1 image with the affine ITK would write for it (qform = sform)."""
    affine = np.eye(4)
    affine[:3, :3] = _RAS_LPS @ (volume.direction_matrix * np.asarray(volume.spacing))
    affine[:3, 3] = _RAS_LPS @ np.asarray(volume.origin, dtype=float)
    image = nib.Nifti1Image(np.asarray(volume.array).T, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return image


def as_input(source: Any) -> str | os.PathLike[str] | Volume:
    """What the pipeline reads: paths and Volumes as they are, in-memory images converted."""
    if isinstance(source, (str, os.PathLike, Volume)):
        return source
    if isinstance(source, sitk.Image):
        return Volume.from_sitk(source)
    if isinstance(source, nib.spatialimages.SpatialImage):
        return volume_from_nibabel(source)
    hint = (" (an array has no geometry: wrap it as spineseg.Volume(array_zyx, spacing_xyz))"
            if isinstance(source, np.ndarray) else "")
    raise InputError(f"cannot segment a {type(source).__module__}.{type(source).__name__}: "
                     "pass a file or DICOM folder path, a spineseg.Volume, a SimpleITK image or "
                     f"a nibabel image{hint}")


class SegmentResult(pipeline.SegmentResult):
    """The pipeline's result, plus saving and conversions of ``mask`` (uint8, the input grid)."""

    def save(self, outdir: str | os.PathLike[str], *, mesh_format: str | None = "stl",
             preview: bool = True, probabilities: bool | None = None,
             overwrite: bool = False, output_types: Sequence[str] = ("nifti",)) -> list[Path]:
        """Write the files ``spineseg segment`` writes into ``outdir``; returns their paths.

        ``probabilities`` defaults to whether the result holds them
        (``SegmentConfig(keep_probabilities=True)``). ``output_types`` adds mask formats to
        ``spine.nii.gz`` (``"dicom-seg"`` for a DICOM series input, ``"seg-nrrd"``), as
        ``--output-type`` does. Existing outputs are replaced only with ``overwrite=True``.
        """
        from spineseg.export import parse_output_types
        from spineseg.inference.outputs import OutputConfig, write_case_outputs

        if probabilities is None:
            probabilities = self.probabilities is not None
        elif probabilities and self.probabilities is None:
            raise InputError("this result holds no probabilities; segment with "
                             "SegmentConfig(keep_probabilities=True) to save them")
        return write_case_outputs(self, outdir, OutputConfig(
            mesh_format=mesh_format, probabilities=probabilities, preview=preview,
            overwrite=overwrite, output_types=parse_output_types(output_types)))

    def to_nibabel(self) -> nib.Nifti1Image:
        """The mask as a nibabel NIfTI image (RAS affine, the input's grid)."""
        return volume_to_nibabel(self.mask)

    def to_sitk(self) -> sitk.Image:
        """The mask as a SimpleITK image (the input's spacing, origin and direction)."""
        return self.mask.to_sitk()

    def __repr__(self) -> str:
        faces = len(self.mesh.faces) if self.mesh is not None else 0
        return (f"SegmentResult(mask={self.mask!r}, spine_volume_ml="
                f"{self.stats.get('spine_volume_ml')}, mesh_faces={faces})")


def mask_statistics(ct: str | os.PathLike[str], mask: str | os.PathLike[str]) -> dict[str, Any]:
    """Voxel count, volume, bounding box, mean and median HU and quality flags of an existing
    ``mask`` over ``ct`` (what ``spineseg stats`` prints); the mask is resampled onto the CT's
    grid through physical space (nearest neighbour) when the grids differ."""
    from spineseg.report.statistics import compute_statistics

    return compute_statistics(ct, mask)


def segment(source: Source, model: SegmentationModel | str | os.PathLike[str] | None = None,
            config: SegmentConfig | None = None, *, progress: bool | None = None
            ) -> SegmentResult:
    """Segment the spine in a CT: a path (file or DICOM folder), a :class:`Volume`, a SimpleITK
    image or a nibabel image.

    ``model``: a loaded model, a model file, or ``None`` for the shipped default.
    ``progress=False`` hides the slice progress bar (``None`` keeps ``config``'s setting).
    Raises :class:`~spineseg.errors.SpinesegError` subclasses on bad input.
    """
    cfg = config or SegmentConfig()
    if progress is not None:
        cfg = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict,
                                                                   progress=progress))
    result = pipeline.segment(as_input(source), model, cfg)
    return SegmentResult(**{f.name: getattr(result, f.name)
                            for f in dataclasses.fields(result)})
