"""Robustness of the CLI: every bad input, through every command it reaches, fails cleanly.

"Cleanly" is the contract of docs/errors.md: the documented exit code, exactly one ``error:``
line on stderr naming the file (or option) and the problem, no traceback, nothing partial left in
the output location, the input untouched, and in batch mode the other cases still processed.
Everything is synthetic and tiny (a random-weight network, 8x32x32 volumes), so these tests check
behaviour on failure, not accuracy, and need neither the shipped model nor the real data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spineseg.cli.main import main
from spineseg.io import Volume, write_dicom_series, write_image
from spineseg.io.itk_common import preserve_locale
from synthetic_ct import ct_volume

INPUT, OUTPUT, MODEL, DATA, RESOURCE, PARTIAL = 3, 4, 5, 6, 7, 8


# --------------------------------------------------------------------------- helpers




def ct_mask(vol: Volume) -> Volume:
    return vol.with_array((np.asarray(vol.array) > 400).astype(np.uint8))


def tree_hash(path: Path) -> str:
    """Hash of a file, or of every name and byte below a folder (to prove an input unchanged)."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def run_cli(capfd: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, list[str]]:
    """Run ``spineseg`` in-process; fd-level capture also sees C++ (ITK/GDCM) chatter."""
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    return rc, out, [ln for ln in err.splitlines() if ln.strip()]


def assert_one_error(err: list[str], *needles: str) -> str:
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def assert_no_debris(out: Path) -> None:
    """Nothing at (or, if it pre-existed, half-written inside) the output location."""
    siblings = [p.name for p in out.parent.iterdir()] if out.parent.is_dir() else []
    assert not [n for n in siblings if n.startswith(f".{out.name}.")], siblings
    if out.is_dir():
        hidden = [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
        assert not hidden, hidden


def nifti_raw(path: Path, data: np.ndarray, zooms=(2.0, 2.0, 3.0)) -> Path:
    """Write a NIfTI whose pixdim is stored as given (nibabel refuses to *set* values <= 0)."""
    img = nib.Nifti1Image(data, None)
    img.header["pixdim"][1:1 + len(zooms)] = zooms
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    nib.save(img, path)
    return path


def absurd_header(path: Path) -> Path:
    """A NIfTI header that declares 4000^3 voxels but holds a few bytes."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_data_dtype(np.int16)
    hdr["pixdim"][1:4] = 1.0
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    return path


def _dicom_slices(folder: Path, sizes: list[int], zs: list[float]) -> Path:
    """Hand-made CT series with one UID (what a broken export can produce)."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, (n, z) in enumerate(zip(sizes, zs, strict=True)):
        img = sitk.GetImageFromArray(np.asarray(ct_volume((1, n, n)).array[0]))
        img.SetSpacing((2.0, 2.0))
        for key, value in {"0020|000e": "2.25.77", "0020|000d": "2.25.78", "0008|0060": "CT",
                           "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"2.25.79{k}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{z}",
                           "0020|0013": str(k + 1)}.items():
            img.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"im{k}.dcm"))
        with preserve_locale():  # GDCM's writer sets the process locale to "C"
            writer.Execute(img)
    return folder


# bad input kind -> builder(tmp folder) -> path of the bad input
def _junk(d: Path) -> Path:
    p = d / "junk.nii.gz"
    p.write_bytes(b"\x1f\x8b this is a spreadsheet, not a CT " * 20)
    return p


def _empty(d: Path) -> Path:
    p = d / "empty.nii.gz"
    p.write_bytes(b"")
    return p


def _truncated(d: Path) -> Path:
    good = write_image(ct_volume(), d / "whole.nii.gz")
    p = d / "trunc.nii.gz"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    return p


def _flat2d(d: Path) -> Path:
    return nifti_raw(d / "flat.nii.gz", np.asarray(ct_volume().array[0]), (2.0, 2.0))


def _four_d(d: Path) -> Path:
    arr = np.stack([np.asarray(ct_volume().array)] * 2, axis=-1)
    return nifti_raw(d / "four.nii.gz", arr, (2.0, 2.0, 3.0, 1.0))


def _spacing_zero(d: Path) -> Path:
    return nifti_raw(d / "zero.nii.gz", np.asarray(ct_volume().array).T, (0.0, 2.0, 3.0))


def _spacing_negative(d: Path) -> Path:
    p = d / "neg.mha"
    write_image(ct_volume(), p)
    text = p.read_bytes().replace(b"ElementSpacing = 2 2 3", b"ElementSpacing = 2 -2 3")
    assert b"-2" in text
    p.write_bytes(text)
    return p


def _nan(d: Path) -> Path:
    arr = np.asarray(ct_volume().array, dtype=np.float32)
    arr[3, 10:12, 10:12] = np.nan
    arr[4, 0, 0] = np.inf
    return write_image(Volume(arr, (2.0, 2.0, 3.0)), d / "nan.nii.gz")


def _constant(d: Path) -> Path:
    return write_image(Volume(np.full((8, 32, 32), -1000, np.int16), (2.0, 2.0, 3.0)),
                       d / "constant.nii.gz")


def _absurd(d: Path) -> Path:
    return absurd_header(d / "huge.nii.gz")


def _empty_dir(d: Path) -> Path:
    p = d / "emptydir"
    p.mkdir()
    return p


def _no_dicom(d: Path) -> Path:
    p = d / "notes"
    p.mkdir()
    (p / "readme.txt").write_text("no images here\n", encoding="utf-8")
    (p / "scan.dcm").write_bytes(b"not dicom either" * 30)
    return p


def _dicom_mixed(d: Path) -> Path:
    return _dicom_slices(d / "mixed", [32, 32, 24, 32], [0, 3, 6, 9])


def _dicom_missing(d: Path) -> Path:
    folder = write_dicom_series(ct_volume(), d / "gap")
    sorted(folder.iterdir())[3].unlink()
    return folder


BAD: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    # kind: (builder, exit code for a reader, a word the message must contain)
    "junk": (_junk, INPUT, "not a readable"),
    "empty_file": (_empty, INPUT, "empty file"),
    "truncated": (_truncated, INPUT, "truncated"),
    "2d": (_flat2d, INPUT, "2D"),
    "4d": (_four_d, INPUT, "4D"),
    "spacing_zero": (_spacing_zero, INPUT, "spacing"),
    "spacing_negative": (_spacing_negative, INPUT, "spacing"),
    "nan": (_nan, INPUT, "NaN"),
    "constant": (_constant, INPUT, "every voxel"),
    "absurd_size": (_absurd, RESOURCE, "limit"),
    "empty_dir": (_empty_dir, INPUT, "empty folder"),
    "no_dicom": (_no_dicom, INPUT, "DICOM"),
    "dicom_mixed_size": (_dicom_mixed, INPUT, "mixed size"),
    "dicom_missing_slice": (_dicom_missing, INPUT, "missing slice"),
}
FILE_KINDS = [k for k in BAD if k not in ("empty_dir", "no_dicom", "dicom_mixed_size",
                                          "dicom_missing_slice")]


@pytest.fixture
def cli_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``main``'s logging.basicConfig reach stderr as in a real run (pytest's log capture
    otherwise owns the root logger and warnings never reach the captured stream)."""
    monkeypatch.setattr(logging.root, "handlers", [])  # restored, with pytest's, afterwards
    basic = logging.basicConfig
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: basic(**kw, force=True))


@pytest.fixture(scope="module")
def model_file(tiny_model_file: Path) -> Path:
    return tiny_model_file


def segment_argv(src: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["segment", str(src), "-o", str(out), "--model", str(model), "--quiet", "--mesh",
            "none", "--no-preview", "--device", "cpu", *extra]


# --------------------------------------------------------------------------- the bad-input matrix


@pytest.mark.parametrize("kind", list(BAD))
def test_segment_bad_input(kind, model_file, tmp_path, capfd):
    build, code, word = BAD[kind]
    src = build(tmp_path)
    before = tree_hash(src)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capfd, segment_argv(src, out, model_file))
    assert rc == code, err
    assert_one_error(err, src.name, word)
    assert stdout == ""
    assert not out.exists()
    assert_no_debris(out)
    assert tree_hash(src) == before


@pytest.mark.parametrize("kind", ["dicom_mixed_size", "dicom_missing_slice", "constant", "nan"])
def test_info_bad_or_odd_input(kind, tmp_path, capfd):
    build, code, word = BAD[kind]
    src = build(tmp_path)
    rc, stdout, err = run_cli(capfd, ["info", src])
    if kind in ("constant", "nan"):  # info describes what segment refuses
        assert rc == 0 and err == []
        facts = dict(ln.split(None, 1) for ln in stdout.splitlines() if " " in ln.strip())
        if kind == "nan":
            assert facts["non-finite"].startswith("5 voxels")  # 4 NaN + 1 inf
        else:
            assert facts["CT"].startswith("no: constant image")
    else:
        assert rc == code
        assert_one_error(err, src.name, word)


def _pairs_source(root: Path, bad_kind: str | None) -> Path:
    """A ``pairs`` source: one good case and one whose image is bad (or whose mask misfits)."""
    root.mkdir()
    good = ct_volume()
    write_image(good, root / "good.nii.gz")
    write_image(ct_mask(good), root / "good_seg.nii.gz")
    if bad_kind == "mask_no_overlap":
        write_image(good, root / "bad.nii.gz")
        far = Volume(np.asarray(ct_mask(good).array), good.spacing, (500.0, 500.0, 500.0))
        write_image(far, root / "bad_seg.nii.gz")
    elif bad_kind == "mask_other_grid":  # different geometry that overlaps: must work
        write_image(good, root / "bad.nii.gz")
        other = ct_volume((4, 64, 64), (1.0, 1.0, 6.0))
        write_image(ct_mask(other), root / "bad_seg.nii.gz")
    elif bad_kind is not None:
        made = BAD[bad_kind][0](root)
        ext = ".mha" if made.name.endswith(".mha") else ".nii.gz"
        made.rename(root / f"bad{ext}")
        write_image(ct_mask(good), root / f"bad_seg{ext}")
    return root


PREPARE_KINDS = ["junk", "empty_file", "truncated", "2d", "4d", "spacing_zero", "nan",
                 "absurd_size", "mask_no_overlap"]


@pytest.mark.parametrize("kind", PREPARE_KINDS)
def test_prepare_bad_case_is_reported_and_others_prepared(kind, tmp_path, capfd):
    src = _pairs_source(tmp_path / "src", kind)
    before = tree_hash(src)
    out = tmp_path / "ds"
    rc, stdout, err = run_cli(capfd, ["prepare", src, "-o", out, "--val", "0", "--no-progress",
                                      "--spacing", "2"])
    assert rc == PARTIAL, err
    assert "1 prepared, 0 already done, 1 failed" in stdout
    *per_case, last = err
    assert per_case and all(ln.startswith("failed: bad:") for ln in per_case), err
    assert last.startswith("error: 1 of 2 cases failed") and "bad" in last
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(manifest["cases"]) == ["good"]
    assert not (out / "cases" / "bad").exists() or not any((out / "cases" / "bad").iterdir())
    assert_no_debris(out)
    assert tree_hash(src) == before


def test_prepare_mask_on_another_grid_is_aligned(tmp_path, capfd):
    src = _pairs_source(tmp_path / "src", "mask_other_grid")
    rc, _, err = run_cli(capfd, ["prepare", src, "-o", tmp_path / "ds", "--val", "0",
                                 "--no-progress", "--spacing", "2"])
    assert rc == 0, err
    mask = np.load(tmp_path / "ds" / "cases" / "bad" / "mask.npy")
    assert mask.any()


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "no_layout"])
def test_prepare_bad_source_folder(kind, tmp_path, capfd):
    src = tmp_path / "src"
    if kind != "missing":
        src.mkdir()
    if kind == "no_layout":
        (src / "notes.txt").write_text("hello", encoding="utf-8")
    out = tmp_path / "ds"
    rc, _, err = run_cli(capfd, ["prepare", src, "-o", out, "--no-progress"])
    assert rc == (INPUT if kind == "missing" else DATA)
    assert_one_error(err, str(src))
    assert not out.exists()


EVALUATE_KINDS = ["junk", "empty_file", "truncated", "2d", "4d", "spacing_zero",
                  "absurd_size", "no_overlap"]


@pytest.mark.parametrize("kind", EVALUATE_KINDS)
def test_evaluate_bad_prediction(kind, tmp_path, capfd):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    vol = ct_volume()
    write_image(ct_mask(vol), ref / "case.nii.gz")
    if kind == "no_overlap":
        bad = write_image(Volume(np.asarray(ct_mask(vol).array), vol.spacing, (900.0, 0.0, 0.0)),
                          pred / "case.nii.gz")
        word, code = "do not overlap", INPUT
    else:
        build, code, word = BAD[kind]
        made = build(tmp_path)
        bad = made.rename(pred / ("case.mha" if made.suffix == ".mha" else "case.nii.gz"))
    before = tree_hash(tmp_path / "pred"), tree_hash(ref)
    out = tmp_path / "report"
    rc, stdout, err = run_cli(capfd, ["evaluate", "--pred", pred, "--ref", ref, "-o", out])
    assert rc == code, err
    line = assert_one_error(err, word)
    assert bad.name in line or kind == "no_overlap"
    if kind == "no_overlap":
        assert "case" in line  # names the case, not only two bounding boxes
    assert not out.exists() and stdout == ""
    assert (tree_hash(tmp_path / "pred"), tree_hash(ref)) == before


def test_evaluate_other_grid_overlapping_is_aligned(tmp_path, capfd):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    vol = ct_volume()
    write_image(ct_mask(vol), ref / "case.nii.gz")
    fine = ct_volume((8, 64, 64), (1.0, 1.0, 3.0))
    write_image(ct_mask(fine), pred / "case.nrrd")
    rc, stdout, err = run_cli(capfd, ["evaluate", "--pred", pred, "--ref", ref,
                                      "-o", tmp_path / "r"])
    assert rc == 0, err
    assert stdout.startswith("1 case(s): DSC")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text(encoding="utf-8"))
    assert summary["pooled"]["dsc"] > 0.8


def _tiny_dataset(root: Path) -> Path:
    """A prepared dataset (via the CLI) of three synthetic cases: train, train, val."""
    src = root / "src"
    src.mkdir(parents=True)
    for i in range(3):
        v = ct_volume(seed=i)
        write_image(v, src / f"c{i}.nii.gz")
        write_image(ct_mask(v), src / f"c{i}_seg.nii.gz")
    assert main(["prepare", str(src), "-o", str(root / "ds"), "--val", "c2", "--no-progress",
                 "--spacing", "2"]) == 0
    return root / "ds"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_dataset(tmp_path_factory.mktemp("dataset"))


TRAIN = ["--model", "unet", "--width", "4", "--depth", "2", "--epochs", "1", "--batch-size", "2",
         "--patch", "16", "--max-steps-per-epoch", "1", "--device", "cpu", "--no-augment"]


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "junk_manifest", "empty_manifest",
                                  "truncated_array"])
def test_train_bad_dataset(kind, dataset, tmp_path, capfd):
    data = tmp_path / "data"
    if kind != "missing":
        data.mkdir()
    if kind == "junk_manifest":
        (data / "manifest.json").write_text("{ this is not json", encoding="utf-8")
    elif kind == "empty_manifest":
        (data / "manifest.json").write_bytes(b"")
    elif kind == "truncated_array":
        shutil.rmtree(data)
        shutil.copytree(dataset, data)
        arr = data / "cases" / "c0" / "image.npy"
        arr.write_bytes(arr.read_bytes()[:200])
    before = tree_hash(data)
    run = tmp_path / "run"
    rc, _, err = run_cli(capfd, ["train", "--data", data, "-o", run, *TRAIN])
    assert rc == DATA, err
    assert_one_error(err, str(data))
    assert tree_hash(data) == before
    assert not (run / "last.pt").exists() and not (run / "best.pt").exists()
    assert_no_debris(run)


# --------------------------------------------------------------------------- outputs


def test_unwritable_output_is_refused_before_any_work(model_file, tmp_path, capfd, monkeypatch):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file", encoding="utf-8")
    import spineseg.inference.pipeline as pipeline

    def no_work(*a, **k):  # refusing must not need the (expensive) segmentation
        raise AssertionError("segmentation ran although the output cannot be written")

    monkeypatch.setattr(pipeline, "predict_probabilities", no_work)
    rc, _, err = run_cli(capfd, segment_argv(src, blocker / "out", model_file))
    assert rc == OUTPUT
    assert_one_error(err, "file.txt")
    assert blocker.read_text(encoding="utf-8") == "a regular file"
    # the same for the other commands that write
    rc, _, err = run_cli(capfd, ["evaluate", "--pred", tmp_path, "--ref", tmp_path,
                                 "-o", blocker / "rep"])
    assert rc == OUTPUT
    assert_one_error(err, "file.txt")
    mk = tmp_path / "m"
    mk.mkdir()
    write_image(ct_volume(), mk / "a.nii.gz")
    write_image(ct_mask(ct_volume()), mk / "a_seg.nii.gz")
    rc, _, err = run_cli(capfd, ["prepare", mk, "-o", blocker / "ds", "--no-progress",
                                 "--val", "0"])
    assert rc == OUTPUT
    assert_one_error(err, "file.txt")


def test_train_unwritable_output(dataset, tmp_path, capfd):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x", encoding="utf-8")
    rc, _, err = run_cli(capfd, ["train", "--data", dataset, "-o", blocker / "run", *TRAIN])
    assert rc == OUTPUT, err
    assert_one_error(err, "file.txt")


def test_output_equal_to_input_folder(model_file, tmp_path, capfd):
    dicom = write_dicom_series(ct_volume(), tmp_path / "series")
    before = tree_hash(dicom)
    rc, _, err = run_cli(capfd, segment_argv(dicom, dicom, model_file))
    assert rc == OUTPUT
    assert_one_error(err, "input folder")
    rc, _, err = run_cli(capfd, segment_argv(dicom, dicom / "sub", model_file))
    assert rc == OUTPUT
    assert_one_error(err, "input folder")
    assert tree_hash(dicom) == before
    # a batch folder, and prepare into its own source
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    write_image(ct_volume(), cohort / "a.nii.gz")
    write_image(ct_mask(ct_volume()), cohort / "a_seg.nii.gz")
    before = tree_hash(cohort)
    rc, _, err = run_cli(capfd, segment_argv(cohort, cohort / "out", model_file))
    assert rc == OUTPUT
    assert_one_error(err, "input folder")
    rc, _, err = run_cli(capfd, ["prepare", cohort, "-o", cohort / "ds", "--no-progress",
                                 "--val", "0"])
    assert rc == OUTPUT
    assert_one_error(err, "inside its source")
    assert tree_hash(cohort) == before


def test_train_output_equal_to_dataset_is_refused(dataset, tmp_path, capfd):
    before = tree_hash(dataset)
    rc, _, err = run_cli(capfd, ["train", "--data", dataset, "-o", dataset, *TRAIN])
    assert rc == OUTPUT, err
    assert_one_error(err, str(dataset))
    assert tree_hash(dataset) == before


def test_existing_output_without_overwrite(model_file, tmp_path, capfd):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file))
    assert rc == 0, err
    before = tree_hash(out)
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file))
    assert rc == OUTPUT
    assert_one_error(err, "already exists", "--overwrite")
    assert tree_hash(out) == before
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file, "--overwrite"))
    assert rc == 0, err


# --------------------------------------------------------------------------- DICOM series choice


def test_two_dicom_series_larger_chosen_and_recorded(model_file, tmp_path, capfd, cli_logging):
    big = write_dicom_series(ct_volume((8, 32, 32)), tmp_path / "big")
    small = write_dicom_series(ct_volume((5, 32, 32), origin=(0.0, 0.0, 100.0)), tmp_path / "small")
    both = tmp_path / "both"
    both.mkdir()
    for f in [*big.iterdir(), *small.iterdir()]:
        shutil.copy(f, both / f"{f.parent.name}_{f.name}")
    small_uid = sitk.ReadImage(str(next(small.iterdir()))).GetMetaData("0020|000e").strip()
    before = tree_hash(both)
    rc, _, err = run_cli(capfd, segment_argv(both, tmp_path / "o1", model_file))
    assert rc == 0, err
    assert any("2 DICOM series" in ln for ln in err)  # a warning, not an error
    stats = json.loads((tmp_path / "o1" / "stats.json").read_text(encoding="utf-8"))
    assert stats["input"]["shape_xyz"] == [32, 32, 8]
    assert "2 DICOM series" in stats["input"]["series_note"] and small_uid in \
        stats["input"]["series_note"]
    rc, _, err = run_cli(capfd, segment_argv(both, tmp_path / "o2", model_file,
                                             "--series", small_uid))
    assert rc == 0, err
    stats = json.loads((tmp_path / "o2" / "stats.json").read_text(encoding="utf-8"))
    assert stats["input"]["shape_xyz"] == [32, 32, 5]
    assert stats["input"]["series_uid"] == small_uid
    rc, _, err = run_cli(capfd, segment_argv(both, tmp_path / "o3", model_file,
                                             "--series", "1.2.3"))
    assert rc == INPUT
    assert_one_error(err, "1.2.3", small_uid)
    assert not (tmp_path / "o3").exists()
    assert tree_hash(both) == before


def test_mr_like_range_warns_but_runs(model_file, tmp_path, capfd, cli_logging):
    arr = (np.asarray(ct_volume().array, np.float32) + 1000.0) / 4.0  # 0..~420: no air
    src = write_image(Volume(arr.astype(np.int16), (2.0, 2.0, 3.0)), tmp_path / "mr.nii.gz")
    rc, stdout, err = run_cli(capfd, segment_argv(src, tmp_path / "o", model_file))
    assert rc == 0, err
    assert len(err) == 1 and "no air" in err[0] and not err[0].startswith("error")
    assert "may not be a CT" in err[0]
    assert (tmp_path / "o" / "stats.json").is_file() and "spine:" in stdout


# --------------------------------------------------------------------------- batch mode


def test_batch_processes_good_cases_despite_bad_ones(model_file, tmp_path, capfd):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    write_image(ct_volume(), cohort / "a_good.nii.gz")
    bad = {"b_junk": _junk, "c_nan": _nan, "d_constant": _constant, "e_gap": _dicom_missing,
           "f_flat": _flat2d}
    for name, build in bad.items():
        made = build(tmp_path)
        made.rename(cohort / (name + ("" if made.is_dir() else ".nii.gz")))
    write_image(ct_volume(seed=3), cohort / "z_good.nrrd")
    before = tree_hash(cohort)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == PARTIAL, err
    *per_case, last = err
    assert sorted(ln.split(":")[1].strip() for ln in per_case) == sorted(bad)
    assert all(ln.startswith("failed: ") for ln in per_case)
    assert last.startswith("error: 5 of 7 cases failed") and "summary.csv" in last
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "report.html", "summary.csv",
                                                        "z_good"]
    assert_no_debris(out)
    rows = (out / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert sum(",failed," in r for r in rows) == 5 and sum(",done," in r for r in rows) == 2
    assert tree_hash(cohort) == before
    # re-running skips the finished cases and retries the failed ones
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == PARTIAL
    assert "0 segmented" not in stdout  # the summary line is only printed on success
    rows = (out / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert sum(",skipped," in r for r in rows) == 2


# --------------------------------------------------------------------------- generated junk


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dims=st.lists(st.integers(-2, 9), min_size=8, max_size=8),
       pixdim=st.lists(st.sampled_from([0.0, -1.0, 1.0, 2.5, float("nan"), float("inf"), 1e-9]),
                       min_size=3, max_size=3),
       datatype=st.sampled_from([0, 2, 4, 8, 16, 64, 128, 255, 2304]),
       vox_offset=st.sampled_from([0.0, 352.0, 1e9, -4.0]),
       body=st.binary(max_size=600))
def test_generated_nifti_headers_fail_cleanly_in_segment(model_file, tmp_path_factory, capfd,
                                                         dims, pixdim, datatype, vox_offset, body):
    d = tmp_path_factory.mktemp("gen")
    hdr = bytearray(nib.Nifti1Header().binaryblock)
    hdr[40:56] = np.asarray(dims, "<i2").tobytes()
    hdr[70:72] = np.asarray([datatype], "<i2").tobytes()
    hdr[80:92] = np.asarray(pixdim, "<f4").tobytes()
    hdr[108:112] = np.asarray([vox_offset], "<f4").tobytes()
    src = d / "gen.nii"
    src.write_bytes(bytes(hdr) + b"\0" * 4 + body)
    out = d / "out"
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file, "--max-voxels", "20000"))
    assert rc in (0, INPUT, RESOURCE), err
    if rc:
        assert_one_error(err, src.name)
        assert not out.exists()
