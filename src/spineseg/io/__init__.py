"""Reading and writing CT volumes and meshes with their physical geometry. No torch here."""

from spineseg.io.atomic import atomic_path, check_output_path, write_bytes_atomic, write_text_atomic
from spineseg.io.volume import Volume

__all__ = ["Volume", "atomic_path", "check_output_path", "write_bytes_atomic", "write_text_atomic"]
