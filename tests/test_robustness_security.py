"""Nothing lost, untrusted files refused, large inputs refused before allocating.

- Interrupted work (Ctrl-C mid-run, a crash mid-write) leaves the previous good files and no
  temporary ones, and a re-run finishes the job, skipping what was already done.
- A model/checkpoint whose pickle would run code is refused by every command that loads one, with
  exit code 5 and no side effect; shipped weights that fail their SHA-256 are refused too.
- A data set cannot make ``prepare`` read files outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import spineseg.data.prepare as prepare_mod
import spineseg.inference.batch as batch_mod
import spineseg.inference.model_file as model_file_mod
import spineseg.inference.outputs as outputs_mod
from spineseg.cli.main import main
from spineseg.data.preprocess import Preprocessing
from spineseg.io import Volume, write_dicom_series, write_image
from spineseg.training.checkpoint import load_checkpoint, save_checkpoint
from synthetic_ct import ct_volume

OUTPUT, MODEL, RESOURCE, INTERRUPTED = 4, 5, 7, 130




def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_error(capfd: pytest.CaptureFixture[str], *needles: str) -> str:
    _, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name
            or ".partial-" in p.name]


@pytest.fixture(scope="module")
def model_file(tiny_model_file: Path) -> Path:
    return tiny_model_file


def segment_argv(src: Path, out: Path, *extra: str) -> list[str]:
    return ["segment", str(src), "-o", str(out), "--quiet", "--mesh", "none", "--no-preview",
            "--device", "cpu", *extra]


def pairs_source(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        v = ct_volume(seed=i)
        write_image(v, root / f"c{i}.nii.gz")
        write_image(v.with_array((np.asarray(v.array) > 400).astype(np.uint8)),
                    root / f"c{i}_seg.nii.gz")
    return root


# --------------------------------------------------------------------------- nothing lost


def test_prepare_interrupted_then_rerun_completes_and_skips(tmp_path, capfd, monkeypatch):
    src = pairs_source(tmp_path / "src", 3)
    out = tmp_path / "ds"
    real = prepare_mod._prepare_case
    calls: list[str] = []

    def interrupt_second(root, case, split, pp):  # Ctrl-C while the 2nd case is being prepared
        calls.append(case.case_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(root, case, split, pp)

    monkeypatch.setattr(prepare_mod, "_prepare_case", interrupt_second)
    argv = ["prepare", str(src), "-o", str(out), "--val", "c2", "--no-progress", "--spacing", "2"]
    assert main(argv) == INTERRUPTED
    one_error(capfd, "interrupted")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["cases"]) == ["c0"]  # the finished case is recorded, nothing else
    assert not temp_files(out)
    monkeypatch.setattr(prepare_mod, "_prepare_case", real)
    assert main(argv) == 0
    stdout = capfd.readouterr().out
    assert "2 prepared, 1 already done, 0 failed" in stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["cases"]) == ["c0", "c1", "c2"]
    assert not temp_files(out)


def test_batch_interrupted_then_rerun_skips_finished(model_file, tmp_path, capfd, monkeypatch):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for name in ("a", "b", "c"):
        write_image(ct_volume(seed=ord(name)), cohort / f"{name}.nii.gz")
    out = tmp_path / "out"
    real = batch_mod.segment
    seen: list[str] = []

    def interrupt_second(path, *a, **k):
        seen.append(Path(path).name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(batch_mod, "segment", interrupt_second)
    assert main(segment_argv(cohort, out, "--model", str(model_file))) == INTERRUPTED
    one_error(capfd, "interrupted")
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    assert (out / "a" / "stats.json").is_file() and not temp_files(tmp_path)
    monkeypatch.setattr(batch_mod, "segment", real)
    assert main(segment_argv(cohort, out, "--model", str(model_file))) == 0
    assert "2 segmented, 1 skipped" in capfd.readouterr().out
    assert main(segment_argv(cohort, out, "--model", str(model_file))) == 0
    assert "0 segmented, 3 skipped" in capfd.readouterr().out


def _half_then_crash(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make Path.write_bytes (used by the atomic writers) write half its data, then fail."""
    def write_half(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        raise exc

    monkeypatch.setattr(Path, "write_bytes", write_half)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(28, "No space left on device")],
                         ids=["ctrl-c", "disk-full"])
def test_checkpoint_write_interrupted_keeps_previous(tmp_path, monkeypatch, exc):
    net = torch.nn.Linear(2, 1)
    payload = {"format": "spineseg-checkpoint/1", "model_name": "toy", "model_config": {},
               "preprocessing": Preprocessing().to_dict(), "state_dict": net.state_dict(),
               "train_config": {}, "epoch": 1, "best_metric": 0.5, "best_epoch": 1,
               "optimizer": {}, "scheduler": {}, "rng": {}, "history": [],
               "software_version": "test"}
    path = save_checkpoint(tmp_path / "last.pt", payload)
    good = path.read_bytes()
    _half_then_crash(monkeypatch, exc)
    with pytest.raises(type(exc)):
        save_checkpoint(path, {**payload, "epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == good and load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_segment_output_write_interrupted_keeps_previous(model_file, tmp_path, capfd,
                                                         monkeypatch):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    assert main(segment_argv(src, out, "--model", str(model_file))) == 0
    capfd.readouterr()
    before = tree_hash(out)

    def crash_mid_write(volume, path, *a, **k):
        Path(path).write_text("half a NIfTI", encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs_mod, "write_image", crash_mid_write)
    assert main(segment_argv(src, out, "--model", str(model_file), "--overwrite")) == INTERRUPTED
    one_error(capfd, "interrupted")
    assert tree_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "out"]


# --------------------------------------------------------------------------- untrusted files


class _RunsCode:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_checkpoint(path: Path, marker: Path, model_file: Path) -> Path:
    payload = torch.load(model_file, weights_only=True)
    payload.update({"format": "spineseg-checkpoint/1", "train_config": {}, "epoch": 1,
                    "best_metric": 0.0, "best_epoch": 1, "optimizer": {}, "scheduler": {},
                    "rng": {}, "history": [_RunsCode(marker)], "software_version": "x"})
    torch.save(payload, path)
    return path


def test_code_running_checkpoint_refused_everywhere(model_file, tmp_path, capfd):
    marker = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker, model_file)
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    # segment --model
    assert main(segment_argv(src, tmp_path / "seg", "--model", str(evil))) == MODEL
    one_error(capfd, "evil.pt", "refusing to load")
    assert not (tmp_path / "seg").exists()
    # evaluate --model (the dataset is never reached)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["evaluate", "--model", str(evil), "--data", str(data), "-o",
                 str(tmp_path / "rep"), "--device", "cpu"]) == MODEL
    one_error(capfd, "evil.pt", "refusing to load")
    assert not (tmp_path / "rep").exists()
    # train --resume RUN whose last.pt is the evil file
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": str(data), "out": str(run),
                                                 "device": "cpu"}))
    shutil.copy(evil, run / "last.pt")
    before = tree_hash(run)
    assert main(["train", "--resume", str(run)]) == MODEL
    one_error(capfd, "last.pt", "refusing to load")
    assert tree_hash(run) == before
    assert not marker.exists()
    # and the evil file itself is left alone
    assert evil.is_file()


@pytest.fixture
def shipped_copy(model_file, tmp_path, monkeypatch):
    """Point the 'shipped default model' at a temporary copy with its recorded SHA-256."""
    copy = tmp_path / "weights" / "spineseg-default.pt"
    copy.parent.mkdir()
    shutil.copy(model_file, copy)
    sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    monkeypatch.setattr(model_file_mod, "default_model_path", lambda: copy)
    monkeypatch.setattr(model_file_mod, "_expected_default_sha", lambda: sha)
    return copy


def test_shipped_weights_checked_against_sha256(shipped_copy, tmp_path, capfd):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    assert main(segment_argv(src, tmp_path / "ok")) == 0  # intact copy: used
    capfd.readouterr()
    data = bytearray(shipped_copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shipped_copy.write_bytes(bytes(data))
    assert main(segment_argv(src, tmp_path / "bad")) == MODEL
    one_error(capfd, "SHA-256 mismatch", "spineseg-default.pt")
    assert not (tmp_path / "bad").exists()
    shipped_copy.unlink()
    assert main(segment_argv(src, tmp_path / "gone")) == MODEL
    one_error(capfd, "shipped default model is missing", "--model")


@pytest.mark.parametrize("kind", ["symlink_outside", "dotdot_name"])
def test_prepare_refuses_files_outside_the_source(kind, tmp_path, capfd):
    src = pairs_source(tmp_path / "src", 1)
    secret = tmp_path / "secret.nii.gz"
    write_image(ct_volume(seed=9), secret)
    if kind == "symlink_outside":
        os.symlink(secret, src / "x_seg.nii.gz")
        shutil.copy(src / "c0.nii.gz", src / "x.nii.gz")
        needle = "outside the source"
    else:
        shutil.copy(src / "c0.nii.gz", src / "a..b.nii.gz")
        shutil.copy(src / "c0_seg.nii.gz", src / "a..b_seg.nii.gz")
        needle = "'..'"
    before = tree_hash(src)
    out = tmp_path / "ds"
    assert main(["prepare", str(src), "-o", str(out), "--val", "0", "--no-progress"]) == 3
    one_error(capfd, needle)
    assert not out.exists() and tree_hash(src) == before


# --------------------------------------------------------------------------- large input


@pytest.mark.parametrize("as_dicom", [False, True], ids=["nifti", "dicom"])
def test_segment_refuses_over_max_voxels(model_file, tmp_path, capfd, as_dicom):
    vol = ct_volume()  # 8 x 32 x 32 = 8192 voxels
    src = (write_dicom_series(vol, tmp_path / "series") if as_dicom
           else write_image(vol, tmp_path / "ct.nii.gz"))
    out = tmp_path / "out"
    assert main(segment_argv(src, out, "--model", str(model_file), "--max-voxels", "8000")) \
        == RESOURCE
    line = one_error(capfd, src.name, "8,192", "8,000")
    assert "crop" in line and "max_voxels" in line.replace("-", "_")
    assert not out.exists()
    assert main(segment_argv(src, out, "--model", str(model_file), "--max-voxels", "9000")) == 0


def test_max_voxels_also_bounds_resampling(model_file, tmp_path, capfd):
    """A coarse scan grows when resampled to the model's 2 mm: the limit applies to that too."""
    vol = Volume(np.asarray(ct_volume().array), (8.0, 8.0, 3.0))  # 8192 voxels -> 16x as many
    src = write_image(vol, tmp_path / "coarse.nii.gz")
    assert main(segment_argv(src, tmp_path / "o", "--model", str(model_file),
                             "--max-voxels", "50000")) == RESOURCE
    line = one_error(capfd, "coarse.nii.gz", "--max-voxels")
    assert "crop" in line
    assert not (tmp_path / "o").exists()
