"""spineseg: fully automatic spine segmentation in CT and 3D reconstruction."""

__version__ = "0.1.0"
