"""Atomic output: write to a temporary file beside the target, then rename.

A reader (or a crash) never sees a half-written file, and an existing good file is replaced only by
a complete new one. Same folder, so ``os.replace`` is a rename on one filesystem.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spineseg.errors import OutputError


def check_output_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Validate a file output path before any work is done.

    Raises :class:`OutputError` if it exists and ``overwrite`` is false, or is a directory.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{p}: output path is a directory")
    if p.exists() and not overwrite:
        raise OutputError(f"{p}: already exists (use --overwrite to replace it)")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The suffix of the target is kept (``.nii.gz`` included) so writers that dispatch on the
    extension work. On any exception the temporary file is removed and the target is untouched.
    """
    target = check_output_path(path, overwrite)
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create output folder ({exc.strerror})") from exc
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=parent)
    except OSError as exc:
        raise OutputError(f"{parent}: folder is not writable ({exc.strerror})") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and target.exists():
            raise OutputError(f"{target}: appeared while writing (use --overwrite to replace it)")
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str, overwrite: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite)
