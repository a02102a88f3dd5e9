"""What a new user runs first: ``python -m spineseg`` and the documented torchrun form, a resumed
training asked for fewer epochs than it has, progress bars in logs, and ``make test`` without the
real data (one line instead of one SKIPPED line per test)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spineseg.cli.main import main
from spineseg.training.trainer import train
from test_train import tiny_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, *argv], env=env or ENV, cwd=cwd, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=120)


def test_python_m_spineseg_is_the_cli() -> None:
    proc = _run("-m", "spineseg", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: spineseg") and "train" in proc.stdout
    assert _run("-m", "spineseg", "no-such-command").returncode == 2


def test_documented_torchrun_form_starts_the_cli() -> None:
    # README: `torchrun --standalone --nproc_per_node N -m spineseg train …` (tests/test_ddp.py
    # trains through torchrun; this checks the module form the README gives).
    env = {k: v for k, v in ENV.items()
           if k not in {"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    proc = _run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                "-m", "spineseg", "--help", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: spineseg" in proc.stdout
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "torchrun --standalone --nproc_per_node N -m spineseg train" in readme


def test_resume_with_fewer_epochs_is_refused_and_leaves_the_run_alone(tmp_path, capfd) -> None:
    data = write_tiny_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    train(tiny_config(data, run, epochs=2))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 3
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "completed 2 epochs" in err and "give more than 2" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # config.json included
    # As many epochs as done: nothing to train, nothing changes.
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "after 2 epoch(s)" in capfd.readouterr().out
    assert (run / "config.json").read_bytes() == before["config.json"]
    assert (run / "last.pt").read_bytes() == before["last.pt"]
    # More: one more epoch, and stderr (a file here, not a terminal) gets no progress bar.
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    captured = capfd.readouterr()
    assert "after 3 epoch(s)" in captured.out
    assert captured.err == ""
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 3


_DATA_TESTS = '''
import pytest

@pytest.fixture
def case(shared_data):
    return shared_data / "case"

def test_direct(shared_data):
    assert shared_data.is_dir()

def test_through_a_fixture(case):
    assert case

@pytest.mark.shared_data
@pytest.mark.parametrize("k", range(3))
def test_marked(k):
    pass

def test_plain():
    pass
'''


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_shared_data_one_line_or_failure_under_ci(tmp_path, ci) -> None:
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_data.py").write_text(_DATA_TESTS, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    shared_data: real data\n")
    env = {**ENV, "SPINESEG_SHARED_DATA": str(tmp_path / "absent"), "CI": ci}
    proc = _run("-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", str(tmp_path), env=env,
                cwd=tmp_path)
    out = proc.stdout
    if ci:
        assert proc.returncode == 1, out  # as before: every user of the fixture fails
        assert "CI=true but real CT data not found" in out and "4 passed, 2 errors" in out
        return
    assert proc.returncode == 0, out
    assert "SKIPPED" not in out and "1 passed, 5 deselected" in out
    lines = [line for line in out.splitlines() if "real CT data" in line]
    assert lines == [f"5 tests that need the real CT data were not run: real CT data not found "
                     f"at {tmp_path / 'absent'} (set SPINESEG_SHARED_DATA)"]
