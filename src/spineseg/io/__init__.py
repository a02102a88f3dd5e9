"""Reading and writing CT volumes and meshes with their physical geometry. No torch here."""

from spineseg.io.atomic import atomic_path, check_output_path, write_bytes_atomic, write_text_atomic
from spineseg.io.describe import ImageInfo, describe
from spineseg.io.dicom import DicomSeries, list_dicom_series, write_dicom_series
from spineseg.io.geometry import CANONICAL, physical_bounds, reorient, resample_spacing, resample_to
from spineseg.io.read import IMAGE_EXTENSIONS, image_extension, read_image
from spineseg.io.volume import Volume
from spineseg.io.write import write_image

__all__ = [
    "CANONICAL",
    "IMAGE_EXTENSIONS",
    "DicomSeries",
    "ImageInfo",
    "Volume",
    "atomic_path",
    "check_output_path",
    "describe",
    "image_extension",
    "list_dicom_series",
    "physical_bounds",
    "read_image",
    "reorient",
    "resample_spacing",
    "resample_to",
    "write_bytes_atomic",
    "write_dicom_series",
    "write_image",
    "write_text_atomic",
]
