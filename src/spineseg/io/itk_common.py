"""ITK plumbing and header checks shared by the file reader (:mod:`.read`), the DICOM reader
(:mod:`.dicom`) and the writers: one-line reasons from ITK exceptions, ITK's C-level chatter kept
off the terminal, and the "one sane scalar 3D volume" check made from a header alone.
"""

from __future__ import annotations

import contextlib
import locale
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import SimpleITK as sitk

from spineseg.errors import GeometryError, ResourceError
from spineseg.io.volume import Volume

DEFAULT_MAX_VOXELS = 2**31
log = logging.getLogger(__name__)


@contextlib.contextmanager
def preserve_locale() -> Iterator[None]:
    """Undo the process-wide locale change some ITK/GDCM writers make (they set it to "C").

    A library call must not change how the caller's process decodes text: after such a write,
    ``subprocess.run(text=True)`` and ``open()`` would decode as ASCII.
    """
    saved = locale.setlocale(locale.LC_ALL, None)
    try:
        yield
    finally:
        try:
            locale.setlocale(locale.LC_ALL, saved)
        except locale.Error:  # pragma: no cover - a locale that was valid a moment ago
            pass


def itk_reason(exc: BaseException) -> str:
    """The informative last line of an ITK exception, without its source-file preamble."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Exception thrown in SimpleITK")]
    reason = lines[-1] if lines else type(exc).__name__
    for prefix in ("sitk::ERROR:", "itk::ERROR:", "ITK ERROR:"):
        if reason.startswith(prefix):
            reason = reason[len(prefix):].strip()
    if reason.startswith("Unable to determine ImageIO reader"):
        return "its content is not recognised as any supported image format"
    return reason


class NativeMessages:
    """What ITK/GDCM/MetaIO wrote to the C-level stderr while :func:`quiet_itk` was active."""

    def __init__(self) -> None:
        self._sink: IO[bytes] | None = None
        self._text = ""

    @property
    def text(self) -> str:
        if self._sink is not None and not self._sink.closed:
            self._sink.seek(0)
            self._text = self._sink.read().decode("utf-8", "replace")
        return self._text

    def first_line(self) -> str:
        return next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")


@contextlib.contextmanager
def quiet_itk() -> Iterator[NativeMessages]:
    """Keep ITK's chatter off the terminal; every condition it flags becomes one of our errors.

    ITK warnings are switched off, and file descriptor 2 is redirected for the duration because
    some readers (MetaIO, teem) write to C++ ``std::cerr`` directly, which would break the CLI's
    one-line error contract. What they wrote is kept (``.text``, also logged at DEBUG) to explain
    failures. The redirection is process-wide, so output of other threads meanwhile lands there too.
    """
    messages = NativeMessages()
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to protect
        saved = -1
    try:
        if saved >= 0:
            messages._sink = tempfile.TemporaryFile()
            sys.stderr.flush()
            os.dup2(messages._sink.fileno(), 2)
        yield messages
    finally:
        if saved >= 0:
            os.dup2(saved, 2)
            os.close(saved)
        if messages._sink is not None:
            text = messages.text.strip()
            messages._sink.close()
            if text:
                log.debug("ITK said: %s", text)
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def explain(exc: BaseException, messages: NativeMessages) -> str:
    """Best one-line reason: ITK's exception text unless it is a stale errno, else its stderr."""
    reason = itk_reason(exc)
    native = messages.first_line()
    if native and (reason.startswith("Reason:") or not reason):
        return native
    return reason


def check_geometry_header(path: Path, size: tuple[int, ...], spacing: tuple[float, ...],
                          components: int, max_voxels: int) -> None:
    """Refuse what is not one scalar 3D volume of sane size, from the header alone."""
    dim = len(size)
    shape = "x".join(str(s) for s in size)
    if dim == 2:
        raise GeometryError(f"{path}: a 2D image ({shape}); a 3D volume is required")
    if dim != 3:
        raise GeometryError(f"{path}: a {dim}D image ({shape}); a single 3D volume is required "
                            "(extract one volume first)")
    if components != 1:
        raise GeometryError(f"{path}: a {components}-component (vector/RGB) image; "
                            "a scalar 3D volume is required")
    if any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise GeometryError(f"{path}: invalid voxel spacing {tuple(float(s) for s in spacing)} "
                            "(every spacing must be > 0)")
    n = int(np.prod(size, dtype=np.float64))
    if n > max_voxels:
        raise ResourceError(f"{path}: declares {shape} = {n:,} voxels, above the limit of "
                            f"{max_voxels:,}; crop or downsample it with another tool first, or "
                            "raise the limit (--max-voxels) if the memory is really there")


def volume_from_image(image: sitk.Image, path: Path, meta: dict[str, str]) -> Volume:
    try:
        volume = Volume.from_sitk(image, meta)
    except GeometryError as exc:
        raise GeometryError(f"{path}: {exc}") from exc
    if np.issubdtype(volume.array.dtype, np.floating):
        nonfinite = int(volume.array.size - np.count_nonzero(np.isfinite(volume.array)))
        if nonfinite:
            # Kept (not replaced): whoever consumes the volume decides; `info` reports the count.
            volume.meta["nonfinite"] = str(nonfinite)
    return volume
