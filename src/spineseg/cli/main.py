"""``spineseg`` entry point: dispatch to subcommands, map library errors to exit codes.

Only this package prints and exits. A :class:`~spineseg.errors.SpinesegError` becomes one line
``error: <message>`` on stderr and its exit code; anything unexpected becomes a one-line internal
error (exit 1). ``--debug`` shows the traceback instead. A reader that closes the pipe early
(``spineseg info --json | head``) ends the command quietly with exit 141 (128 + SIGPIPE), as it
would end a shell tool.

stderr carries only spineseg's own messages (``WARNING: …``, one line each): Python warnings
from dependencies (matplotlib's missing glyphs for a non-Latin file name, numpy's
RuntimeWarnings, torch's notes) and other libraries' log records are dropped, unless ``--debug``
shows them through logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence

from spineseg import __version__
from spineseg.errors import EXIT_INTERRUPTED, SpinesegError

EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool stopped by SIGPIPE

# name -> one-line purpose, in the order ``--help`` lists them. Each ``spineseg.cli.<name>`` module
# defines ``register(subparsers)`` adding its parser with ``func(args) -> int`` as default. Only the
# module of the command being run is imported, so ``spineseg --help`` and light commands do not pay
# for importing torch and MONAI (seconds on a laptop). tests/test_cli_main.py checks that every
# module registers under its name. A command is listed here only once it works.
COMMANDS: dict[str, str] = {
    "segment": "segment the spine in a CT (file, DICOM folder or cohort)",
    "vertebrae": "split a spine mask into named vertebrae with volume, HU and heights",
    "info": "show an image's grid, orientation, intensity range and whether it looks like CT",
    "stats": "voxel count, volume, bounding box, mean/median HU and flags of an existing mask",
    "demo": "segment a synthetic CT (DICOM) end to end and print its Dice",
    "phantom": "generate synthetic spine CT cases (image + vertebra mask pairs)",
    "prepare": "prepare a training dataset from image/mask folders",
    "train": "train a segmentation network on a prepared dataset",
    "evaluate": "Dice, IoU, HD95, ASD, sensitivity, precision of predictions",
    "models": "list the networks: parameters, GFLOPs and CPU latency for one slice",
    "experiment": "reproduce the paper's tables and figures on a prepared dataset",
    "benchmark": "time the pipeline against peer networks",
}


class _SingleParser:
    """Stands in for argparse's subparsers object while a module registers its command: the
    parser already exists, so ``--help`` can list every command without importing its module."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.registered: list[str] = []

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        self.registered.append(name)
        if kwargs.get("description"):
            self.parser.description = str(kwargs["description"])
        return self.parser


def _selected_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in COMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI parser; only the command named in ``argv`` imports its module (all if None)."""
    parser = argparse.ArgumentParser(
        prog="spineseg",
        description="Fully automatic spine segmentation in CT and 3D reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"spineseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    selected = _selected_command(argv) if argv is not None else None
    for name, purpose in COMMANDS.items():
        cmd = sub.add_parser(name, help=purpose, description=purpose)
        if argv is None or name == selected:
            importlib.import_module(f"spineseg.cli.{name}").register(_SingleParser(cmd))
    return parser


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    # Turn SIGTERM into KeyboardInterrupt so long jobs save their state the same way as on Ctrl-C.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = logging.StreamHandler()  # stderr
    if not args.debug:
        handler.addFilter(_own_records)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s: %(message)s", handlers=[handler])
    with warnings.catch_warnings():  # the filters below end with the command
        return _run(args)


def _own_records(record: logging.LogRecord) -> bool:
    return record.name == "spineseg" or record.name.startswith("spineseg.")


def _run(args: argparse.Namespace) -> int:
    # Warnings are logged (logger "py.warnings"), so --debug shows them in the log's format; the
    # interpreter reads PYTHONWARNINGS only at start-up, so filtering happens here.
    logging.captureWarnings(True)
    if not args.debug:
        warnings.simplefilter("ignore")
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except SpinesegError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last line of defence: never a raw traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
              "(rerun with --debug and report it)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.captureWarnings(False)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is still buffered cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def entry() -> None:  # pragma: no cover - exercised through the console script
    if "--debug" not in sys.argv[1:]:
        # Not for this process (main() filters its warnings): for spawned child processes,
        # which read it when they start.
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
