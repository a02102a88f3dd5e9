"""The CLI shell itself: help lists commands, errors become one line with an exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spineseg.cli.main import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_every_command_module_registers_its_own_name():
    import argparse
    import importlib

    from spineseg.cli.main import _SingleParser

    for name in COMMANDS:
        shim = _SingleParser(argparse.ArgumentParser())
        importlib.import_module(f"spineseg.cli.{name}").register(shim)
        assert shim.registered == [name]
        assert shim.parser.get_default("func") is not None


def test_help_does_not_import_torch():
    code = ("import sys; from spineseg.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported for --help'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace",
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "spineseg.cli.main", "--version"],
                          capture_output=True, encoding="utf-8", errors="replace", check=False)
    assert proc.returncode == 0
    assert "spineseg" in proc.stdout


def test_atomic_write_leaves_no_temp_and_normal_permissions(tmp_path):
    import os

    import pytest

    from spineseg.errors import OutputError
    from spineseg.io import atomic_path, write_text_atomic

    umask = os.umask(0)
    os.umask(umask)
    path = write_text_atomic(tmp_path / "a.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(OutputError, match="exists"):
        write_text_atomic(path, "x")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert path.read_text(encoding="utf-8") == "{}"


@pytest.mark.parametrize("name", ["segment", "benchmark"])
def test_precision_choices_are_the_librarys(name):
    """The CLIs spell the choices out so that --help needs no torch; they must stay the
    library's own list."""
    import argparse
    import importlib

    from spineseg.cli.main import _SingleParser
    from spineseg.inference.predict import PRECISIONS

    shim = _SingleParser(argparse.ArgumentParser())
    importlib.import_module(f"spineseg.cli.{name}").register(shim)
    action = next(a for a in shim.parser._actions if "--precision" in a.option_strings)
    assert tuple(action.choices) == PRECISIONS
