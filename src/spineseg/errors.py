"""One exception hierarchy for the whole library.

The library raises these; only :mod:`spineseg.cli` turns them into ``error: <one line>`` and an
exit code. Each class carries its exit code so the mapping lives in one place (see docs/errors.md).
"""

from __future__ import annotations


class SpinesegError(Exception):
    """Base class: an expected failure with a message a user can act on."""

    exit_code: int = 1


class InputError(SpinesegError):
    """An input file or folder is missing, unreadable, corrupt or not a usable image."""

    exit_code = 3


class GeometryError(InputError):
    """Image geometry is invalid (spacing <= 0, wrong dimension) or image and mask do not overlap."""


class OutputError(SpinesegError):
    """An output cannot be written: it exists (without --overwrite), is the input, or is unwritable."""

    exit_code = 4


class ModelError(SpinesegError):
    """A model name, config or checkpoint is invalid, unsafe or fails its checksum."""

    exit_code = 5


class DataError(SpinesegError):
    """A dataset is malformed, a layout is not recognised, or a split is impossible."""

    exit_code = 6


class ResourceError(SpinesegError):
    """The input would exceed a configured memory/size limit; refused before allocating."""

    exit_code = 7


class PartialFailure(SpinesegError):
    """A batch finished but some items failed; the others were still processed."""

    exit_code = 8


EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM, after saving what can be saved
