"""``spineseg`` entry point: dispatch to subcommands, map library errors to exit codes.

Only this package prints and exits. A :class:`~spineseg.errors.SpinesegError` becomes one line
``error: <message>`` on stderr and its exit code; anything unexpected becomes a one-line internal
error (exit 1). ``--debug`` shows the traceback instead.
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

# Each module defines ``register(subparsers)`` which adds one subcommand whose parser has
# ``func(args) -> int`` set as default. A command is listed here only once it works.
COMMANDS: tuple[str, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spineseg",
        description="Fully automatic spine segmentation in CT and 3D reconstruction.",
    )
    parser.add_argument("--version", action="version", version=f"spineseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        importlib.import_module(f"spineseg.cli.{name}").register(sub)
    return parser


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    # Turn SIGTERM into KeyboardInterrupt so long jobs save their state the same way as on Ctrl-C.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if not args.debug:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return int(args.func(args) or 0)
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


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


def entry() -> None:  # pragma: no cover - exercised through the console script
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
