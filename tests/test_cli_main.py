"""The CLI shell itself: help lists commands, errors become one line with an exit code."""

from __future__ import annotations

import subprocess
import sys

from spineseg.cli.main import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "spineseg.cli.main", "--version"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "spineseg" in proc.stdout
