"""Claim an output folder for one run, and keep every output off the inputs.

A claim is an exclusive ``flock`` on ``OUTDIR/.spineseg-lock``, held for the whole run. Checking
"does the output exist?" and then writing is a race two concurrent runs both win; the lock is not:
the second run is refused at once (exit 4) instead of silently replacing the first one's files.
The kernel drops the lock when its process ends however it ends (SIGKILL included), so a dead run
never blocks the next one; the file itself is removed when the claim is released.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from spineseg.errors import OutputError

try:  # POSIX; elsewhere an O_EXCL lock file stands in, which a killed run leaves blocking
    # until it is removed by hand (see _open_exclusive)
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".spineseg-lock"

# Claims this process holds: lock file path -> thread id. A thread that already holds a folder may
# claim it again (the CLI claims before segmenting, write_case_outputs claims again); any other
# claimant, another thread included, goes through the lock and is refused.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


def _refuse(out: Path, lock: Path) -> OutputError:
    try:
        owner = lock.read_text(encoding="utf-8").strip()
    except OSError:
        owner = ""
    who = f" ({owner})" if owner else ""
    return OutputError(f"{out}: another spineseg run{who} is writing into this folder; wait for "
                       "it to finish or choose another output folder")


def _open_locked(out: Path, lock: Path) -> int:
    """Open ``lock`` and hold an exclusive lock on it; raise OutputError if someone else holds it."""
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{out}: cannot write here ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise _refuse(out, lock) from exc
        # The previous holder unlinks the file on release; if it did so between our open and our
        # flock we hold a lock on a deleted file that nobody else can see: open the new one.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise _refuse(out, lock)


def _open_exclusive(out: Path, lock: Path) -> int:  # pragma: no cover - non-POSIX fallback
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as exc:
        raise _refuse(out, lock) from exc
    except OSError as exc:
        raise OutputError(f"{out}: cannot write here ({exc.strerror})") from exc


def _made_folders(out: Path) -> list[Path]:
    """The folders ``out.mkdir(parents=True)`` would create, deepest first."""
    made = []
    for p in (out, *out.parents):
        if p.exists():
            break
        made.append(p)
    return made


@contextlib.contextmanager
def claim_output_folder(outdir: str | os.PathLike[str], lock_name: str = LOCK_NAME
                        ) -> Iterator[Path]:
    """Hold ``outdir`` for this run (creating it if needed); raise OutputError if another run does.

    ``lock_name`` lets runs that share a folder by design (the shards of one cohort) each hold
    their own claim. Folders the claim created are removed again on release if nothing was
    written into them, so a run that fails before writing leaves nothing behind.
    """
    out = Path(outdir)
    key = out.resolve() / lock_name
    me = threading.get_ident()
    with _held_guard:
        nested = _held.get(key) == me
    if nested:
        yield out
        return

    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: output path exists and is not a folder")
    made = _made_folders(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    lock = out / lock_name
    try:
        fd = _open_locked(out, lock) if fcntl is not None else _open_exclusive(out, lock)
    except OutputError:
        _remove_empty(made)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    except OSError:
        pass  # the owner note only improves the refusal message
    with _held_guard:
        _held[key] = me
    try:
        yield out
    finally:
        with _held_guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked, so no one can take a lock on the doomed file
        os.close(fd)
        _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:  # deepest first
        try:
            p.rmdir()
        except OSError:
            return


def _input_roots(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, bool]]:
    roots = []
    for src in inputs:
        p = Path(src)
        if str(p) and p.exists():
            roots.append((p.resolve(), p.is_dir()))
    return roots


def check_not_inputs(outputs: Iterable[str | os.PathLike[str]],
                     inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse any output path that is, or lies inside, an input (through symlinks and hard links).

    Checked with and without ``--overwrite``: writing (or, on overwrite, removing) such a path
    would destroy the CT being segmented, or mix outputs into a DICOM series folder.
    """
    roots = _input_roots(inputs)
    if not roots:
        return
    for out in outputs:
        o = Path(out)
        r = o.resolve()
        for root, is_dir in roots:
            clash = r == root or (is_dir and r.is_relative_to(root))
            if not clash and not is_dir and o.is_file():
                with contextlib.suppress(OSError):
                    clash = os.path.samefile(o, root)
            if clash:
                what = "folder" if is_dir else "file"
                raise OutputError(f"{o}: this output would overwrite the input {what} {root}; "
                                  "choose another output folder")
