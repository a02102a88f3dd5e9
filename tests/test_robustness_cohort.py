"""Robustness of cohort runs and of the output folder: what one run leaves for the next.

Every case fails alone whatever its exception; no output ever lands on an input; one output folder
is written by one run at a time; no case is dropped by a name collision; a finished case is
skipped only when nothing that shapes it changed; ``--overwrite`` replaces a whole output set and
nothing else. Tiny synthetic volumes and a random-weight network: behaviour, not accuracy.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from conftest import write_tiny_model
from spineseg.errors import OutputError
from spineseg.inference.claim import LOCK_NAME, claim_output_folder
from spineseg.inference.preview import save_preview
from spineseg.io import write_dicom_series, write_image
from synthetic_ct import ct_volume
from test_robustness_cli import (
    assert_no_debris,
    assert_one_error,
    ct_mask,
    run_cli,
    segment_argv,
    tree_hash,
)

INPUT, OUTPUT, PARTIAL = 3, 4, 8
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tiny_model_file: Path) -> Path:
    return tiny_model_file


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (other weights, so another SHA-256)."""
    return write_tiny_model(tmp_path_factory.mktemp("model2") / "other.pt", seed=1)


def summary_rows(out: Path, name: str = "summary.csv") -> dict[str, dict[str, str]]:
    with open(out / name, encoding="utf-8", newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


def stats_of(case_out: Path) -> dict:
    return json.loads((case_out / "stats.json").read_text(encoding="utf-8"))


def case_hashes(out: Path) -> dict[str, str]:
    return {p.name: tree_hash(p) for p in out.iterdir() if p.is_dir()}


def make_cohort(root: Path, names: list[str]) -> Path:
    root.mkdir()
    for k, name in enumerate(names):
        write_image(ct_volume(seed=k), root / f"{name}.nii.gz")
    return root


# --------------------------------------------------------------------------- 1: any failure


def test_any_case_exception_is_that_cases_failure(model_file, tmp_path, capfd, monkeypatch):
    cohort = make_cohort(tmp_path / "cohort", ["a_good", "b_type", "c_memory", "z_good"])
    import spineseg.inference.batch as batch

    real = batch.segment

    def flaky(source, *args, **kwargs):
        name = Path(source).name
        if name.startswith("b_"):
            raise TypeError("unexpected None")
        if name.startswith("c_"):
            raise MemoryError
        return real(source, *args, **kwargs)

    monkeypatch.setattr(batch, "segment", flaky)
    out = tmp_path / "out"
    rc, _, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == PARTIAL, err
    *per_case, last = err
    assert per_case == ["failed: b_type: internal error: TypeError: unexpected None",
                        "failed: c_memory: out of memory (MemoryError)"]
    assert last.startswith("error: 2 of 4 cases failed") and "summary.csv" in last
    rows = summary_rows(out)
    assert {c: r["status"] for c, r in rows.items()} == {
        "a_good": "done", "b_type": "failed", "c_memory": "failed", "z_good": "done"}
    assert "TypeError" in rows["b_type"]["message"]
    assert "MemoryError" in rows["c_memory"]["message"]
    assert (out / "z_good" / "stats.json").is_file()
    assert_no_debris(out)


def test_single_slice_scan_is_segmented_without_depth_panels(model_file, tmp_path, capfd):
    one = ct_volume((1, 40, 40))
    # a mask that changes along the single row of the coronal/sagittal planes: matplotlib's
    # contour refuses such a 1xN plane (TypeError)
    save_preview(one, ct_mask(one), None, tmp_path / "one.png")
    two = ct_volume((2, 40, 40))
    save_preview(two, ct_mask(two), None, tmp_path / "two.png")
    width = {k: mpimg.imread(tmp_path / f"{k}.png").shape[1] for k in ("one", "two")}
    assert width["one"] < width["two"] / 2  # axial only: no one-pixel-high depth panels

    src = write_image(one, tmp_path / "one.nii.gz")
    out = tmp_path / "out"
    rc, _, err = run_cli(capfd, ["segment", src, "-o", out, "--model", model_file, "--quiet",
                                 "--device", "cpu"])
    assert rc == 0, err
    assert (out / "preview.png").is_file() and stats_of(out)["slices_total"] == 1


# --------------------------------------------------------------------------- 2: never the input


def test_no_output_resolves_to_an_input(model_file, tmp_path, capfd):
    # a CT named like an output, segmented into its own folder
    d = tmp_path / "d"
    d.mkdir()
    src = write_image(ct_volume(), d / "spine.nii.gz")
    before = tree_hash(d)
    for extra in ([], ["--overwrite"]):
        rc, _, err = run_cli(capfd, segment_argv(src, d, model_file, *extra))
        assert rc == OUTPUT, err
        assert_one_error(err, "input file", "spine.nii.gz")
        assert tree_hash(d) == before
    # an output name in -o that is a symbolic link to the input
    ct = write_image(ct_volume(seed=1), tmp_path / "ct.nii.gz")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "spine.nii.gz").symlink_to(ct)
    ct_hash = tree_hash(ct)
    rc, _, err = run_cli(capfd, segment_argv(ct, linked, model_file, "--overwrite"))
    assert rc == OUTPUT, err
    assert_one_error(err, "input file")
    assert tree_hash(ct) == ct_hash and (linked / "spine.nii.gz").is_symlink()
    # an output name linked to a file inside the input DICOM folder
    dicom = write_dicom_series(ct_volume(seed=2), tmp_path / "series")
    dicom_hash = tree_hash(dicom)
    o2 = tmp_path / "o2"
    o2.mkdir()
    (o2 / "stats.json").symlink_to(sorted(dicom.iterdir())[0])
    rc, _, err = run_cli(capfd, segment_argv(dicom, o2, model_file, "--overwrite"))
    assert rc == OUTPUT, err
    assert_one_error(err, "input folder")
    # -o a link to the DICOM folder itself
    link = tmp_path / "link"
    link.symlink_to(dicom, target_is_directory=True)
    rc, _, err = run_cli(capfd, segment_argv(dicom, link, model_file, "--overwrite"))
    assert rc == OUTPUT, err
    assert_one_error(err, "input folder")
    assert tree_hash(dicom) == dicom_hash
    # a cohort whose case output folder is a link back into the cohort
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    write_dicom_series(ct_volume(seed=3), cohort / "a")
    write_image(ct_volume(seed=4), cohort / "b.nii.gz")
    cohort_hash = tree_hash(cohort)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(cohort / "a", target_is_directory=True)
    for extra in ([], ["--overwrite"]):
        rc, _, err = run_cli(capfd, segment_argv(cohort, out, model_file, *extra))
        assert rc == OUTPUT, err
        assert_one_error(err, "input folder")
        assert tree_hash(cohort) == cohort_hash
    assert sorted(p.name for p in out.iterdir()) == ["a"]


# --------------------------------------------------------------------------- 3: one run per folder

_HOLD = """import sys
from spineseg.inference.claim import claim_output_folder
with claim_output_folder(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_into_a_claimed_folder_is_refused(model_file, tmp_path, capfd):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    cohort = make_cohort(tmp_path / "cohort", ["a"])
    out, bout = tmp_path / "out", tmp_path / "bout"
    holders = [subprocess.Popen([sys.executable, "-c", _HOLD, str(o)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for o in (out, bout)]
    try:
        for h in holders:
            assert h.stdout.readline().strip() == "held"
        rc, _, err = run_cli(capfd, segment_argv(src, out, model_file))
        assert rc == OUTPUT, err
        assert_one_error(err, str(out), "another spineseg run", f"pid {holders[0].pid}")
        rc, _, err = run_cli(capfd, segment_argv(cohort, bout, model_file, "--overwrite"))
        assert rc == OUTPUT, err
        assert_one_error(err, "another spineseg run")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
        assert sorted(p.name for p in bout.iterdir()) == [LOCK_NAME]
    finally:
        for h in holders:
            h.kill()  # SIGKILL: the lock file stays behind, its lock goes with the process
            h.wait()
    assert (out / LOCK_NAME).exists()
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file))
    assert rc == 0, err
    rc, _, err = run_cli(capfd, segment_argv(cohort, bout, model_file))
    assert rc == 0, err
    assert not (out / LOCK_NAME).exists() and not (bout / LOCK_NAME).exists()
    assert_no_debris(out)


def test_claim_is_exclusive_between_threads_and_reentrant_in_one(tmp_path):
    out = tmp_path / "new" / "out"
    refused: list[OutputError] = []

    def other() -> None:
        try:
            with claim_output_folder(out):
                pass
        except OutputError as exc:
            refused.append(exc)

    with claim_output_folder(out):
        with claim_output_folder(out):  # the same thread: nested claims are one claim
            pass
        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=30)
        assert len(refused) == 1 and "another spineseg run" in str(refused[0])
        assert (out / LOCK_NAME).exists()
    assert not (tmp_path / "new").exists()  # made by the claim, nothing written: removed


# --------------------------------------------------------------------------- 4: case names


def test_case_name_collisions_keep_every_case(model_file, tmp_path, capfd):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    write_dicom_series(ct_volume(seed=1), cohort / "dup")
    write_image(ct_volume(seed=2), cohort / "dup.nii.gz")
    write_image(ct_volume(seed=3), cohort / "dup.nrrd")
    write_image(ct_volume(seed=4), cohort / "summary.csv.nii.gz")
    write_image(ct_volume(seed=5), cohort / "solo.mha")
    write_image(ct_volume(seed=6), cohort / "report.html.nii.gz")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == 0, err
    assert "6 segmented" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "dup", "dup_nii_gz", "dup_nrrd", "report.html", "report_html_nii_gz", "solo",
        "summary.csv", "summary_csv_nii_gz"]
    expected = {"dup": "dup", "dup_nii_gz": "dup.nii.gz", "dup_nrrd": "dup.nrrd",
                "solo": "solo.mha", "summary_csv_nii_gz": "summary.csv.nii.gz",
                "report_html_nii_gz": "report.html.nii.gz"}
    for case, source in expected.items():
        assert Path(stats_of(out / case)["input"]["source"]).name == source
    assert {c: r["status"] for c, r in summary_rows(out).items()} == dict.fromkeys(expected, "done")
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == 0, err
    assert "0 segmented, 6 skipped" in stdout


# --------------------------------------------------------------------------- 5: re-runs


def test_rerun_skips_only_cases_made_the_same_way(model_file, other_model_file, tmp_path, capfd):
    cohort = make_cohort(tmp_path / "cohort", ["a", "b"])
    out = tmp_path / "out"
    rc, _, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == 0, err
    first = summary_rows(out)
    settings = stats_of(out / "a")["settings"]
    assert settings["predict"]["mirror"] is False and settings["outputs"]["mesh_format"] is None
    assert settings["model_sha256"] == stats_of(out / "a")["model"]["sha256"]
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == 0, err
    assert "0 segmented, 2 skipped" in stdout
    again = summary_rows(out)
    assert {c: r["status"] for c, r in again.items()} == {"a": "skipped", "b": "skipped"}
    for case in ("a", "b"):  # the skipped cases keep their figures in the summary
        assert again[case]["spine_volume_ml"] == first[case]["spine_volume_ml"] != ""
    before = case_hashes(out)
    for extra, option in [(["--tta"], "--tta"), (["--mesh", "stl"], "--mesh"),
                          (["--probabilities"], "--probabilities"),
                          (["--no-postprocess"], "--no-postprocess"),
                          (["--full-slice"], "--full-slice"),
                          (["--precision", "float32"], "--precision"),
                          (["--model", other_model_file], "--model")]:
        rc, _, err = run_cli(capfd, segment_argv(cohort, out, model_file, *extra))
        assert rc == OUTPUT, (extra, err)
        assert_one_error(err, "other settings", option, "--overwrite")
        assert case_hashes(out) == before
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file, "--tta", "--overwrite"))
    assert rc == 0, err
    assert "2 segmented" in stdout
    assert stats_of(out / "b")["settings"]["predict"]["mirror"] is True
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file, "--tta"))
    assert rc == 0 and "2 skipped" in stdout, err
    # the same case name made from another input is not "already done"
    (cohort / "a.nii.gz").rename(cohort / "a.nrrd.tmp")
    write_image(ct_volume(seed=9), cohort / "a.nrrd")
    (cohort / "a.nrrd.tmp").unlink()
    rc, _, err = run_cli(capfd, segment_argv(cohort, out, model_file, "--tta"))
    assert rc == OUTPUT, err
    assert_one_error(err, "the input", "a.nii.gz")


# --------------------------------------------------------------------------- 6: --overwrite


def test_overwrite_replaces_the_output_set_as_a_whole(model_file, tmp_path, capfd):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    rc, _, err = run_cli(capfd, ["segment", src, "-o", out, "--model", model_file, "--quiet",
                                 "--device", "cpu", "--probabilities", "--max-faces", "500"])
    assert rc == 0, err
    first = ["preview.png", "spine.nii.gz", "spine.stl", "spine_prob.nii.gz", "stats.json"]
    assert sorted(p.name for p in out.iterdir()) == first
    assert stats_of(out)["outputs"] == first
    (out / "notes.txt").write_text("the user's own file\n", encoding="utf-8")
    (out / "spine.ply").write_bytes(b"a mesh spineseg did not write")
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file, "--mesh", "obj",
                                             "--max-faces", "500", "--overwrite"))
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt", "spine.nii.gz", "spine.obj", "spine.ply", "stats.json"]
    assert stats_of(out)["outputs"] == ["spine.nii.gz", "spine.obj", "stats.json"]
    assert (out / "spine.ply").read_bytes() == b"a mesh spineseg did not write"
    assert_no_debris(out)


def test_an_interrupted_replacement_is_finished_by_the_next_run(model_file, tmp_path, capfd):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file, "--probabilities"))
    assert rc == 0, err
    # what a kill between the renames leaves: the "being replaced" record and a mixed set
    (out / "stats.json").write_text(json.dumps(
        {"incomplete": True, "outputs": ["spine.nii.gz", "spine_prob.nii.gz", "stats.json"]}),
        encoding="utf-8")
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file))  # no --overwrite needed
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["spine.nii.gz", "stats.json"]


# --------------------------------------------------------------------------- 12: layouts


def test_totalsegmentator_layout_beside_dicom_and_flat_files(model_file, tmp_path, capfd):
    cohort = tmp_path / "cohort"
    (cohort / "s01").mkdir(parents=True)
    write_image(ct_volume(seed=1), cohort / "s01" / "ct.nii.gz")
    write_image(ct_mask(ct_volume(seed=1)), cohort / "s01" / "spine.nii.gz")  # beside it: a mask
    (cohort / "s02").mkdir()
    write_image(ct_volume(seed=2), cohort / "s02" / "scan.nrrd")
    write_dicom_series(ct_volume(seed=3), cohort / "s03")
    write_image(ct_volume(seed=4), cohort / "flat.nii.gz")
    before = tree_hash(cohort)
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == 0, err
    assert "4 segmented" in stdout
    sources = {c: Path(r["source"]).relative_to(cohort).as_posix()
               for c, r in summary_rows(out).items()}
    assert sources == {"flat": "flat.nii.gz", "s01": "s01/ct.nii.gz", "s02": "s02/scan.nrrd",
                       "s03": "s03"}
    assert stats_of(out / "s01")["input"]["source"].endswith("s01/ct.nii.gz")
    assert tree_hash(cohort) == before
    # a case folder of several images, none of them ct.*: that case fails, saying why
    (cohort / "s04").mkdir()
    write_image(ct_volume(seed=5), cohort / "s04" / "a.nii.gz")
    write_image(ct_volume(seed=6), cohort / "s04" / "b.nii.gz")
    rc, _, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == PARTIAL, err
    assert err[0].startswith("failed: s04: ") and "2 images" in err[0] and "ct." in err[0]
    assert {c: r["status"] for c, r in summary_rows(out).items()} == {
        "flat": "skipped", "s01": "skipped", "s02": "skipped", "s03": "skipped", "s04": "failed"}


# --------------------------------------------------------------------------- small ones


def test_stale_staging_folders_are_cleaned(model_file, tmp_path, capfd):
    src = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    stale = tmp_path / ".out.partial-k1ll3d"  # what a SIGKILL while writing leaves
    stale.mkdir()
    (stale / "spine.nii.gz").write_bytes(b"half a mask")
    past = time.time() - 3600
    os.utime(stale, (past, past))
    others = [tmp_path / ".other.partial-abc", tmp_path / ".out.partial-x.partial-abc"]
    for p in others:  # staging of other outputs is not this run's to clean
        p.mkdir()
        os.utime(p, (past, past))
    rc, _, err = run_cli(capfd, segment_argv(src, out, model_file))
    assert rc == 0, err
    assert not stale.exists()
    assert all(p.exists() for p in others)
    # in a cohort output the same, per case
    cohort = make_cohort(tmp_path / "cohort", ["a"])
    bout = tmp_path / "bout"
    bout.mkdir()
    (bout / ".a.partial-k1ll3d").mkdir()
    os.utime(bout / ".a.partial-k1ll3d", (past, past))
    rc, _, err = run_cli(capfd, segment_argv(cohort, bout, model_file))
    assert rc == 0, err
    assert_no_debris(bout)
    assert sorted(p.name for p in bout.iterdir()) == ["a", "report.html", "summary.csv"]


def test_summary_ends_with_a_newline_and_no_bar_precedes_errors(model_file, tmp_path, capfd):
    cohort = make_cohort(tmp_path / "cohort", ["a"])
    out = tmp_path / "out"
    rc, _, err = run_cli(capfd, segment_argv(cohort, out, model_file))
    assert rc == 0, err
    text = (out / "summary.csv").read_bytes().decode("utf-8")
    assert text.endswith("\n") and "\r" not in text and text.count("\n") == 2
    # progress bars on (no --quiet): a refused run prints its one error line and nothing else
    loud = [a for a in segment_argv(cohort, out, model_file) if a != "--quiet"]
    rc, _, err = run_cli(capfd, [*loud, "--shard", "3/2"])
    assert rc == INPUT
    assert_one_error(err, "shard")
    rc, _, err = run_cli(capfd, [*loud, "--tta"])
    assert rc == OUTPUT
    assert_one_error(err, "--tta")


def test_readme_documents_cohort_outputs():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "summary-shard" in text and "ct.nii.gz" in text and "dup_nii_gz" in text
    errors = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    assert "another spineseg run" in errors and "other settings" in errors


def test_masks_are_not_changed_by_cohort_bookkeeping(model_file, tmp_path, capfd):
    """The cohort path writes exactly what a single-case run writes for the same CT."""
    cohort = make_cohort(tmp_path / "cohort", ["a"])
    rc, _, err = run_cli(capfd, segment_argv(cohort, tmp_path / "b", model_file))
    assert rc == 0, err
    rc, _, err = run_cli(capfd, segment_argv(cohort / "a.nii.gz", tmp_path / "s", model_file))
    assert rc == 0, err
    from spineseg.io import read_image

    np.testing.assert_array_equal(read_image(tmp_path / "b" / "a" / "spine.nii.gz").array,
                                  read_image(tmp_path / "s" / "spine.nii.gz").array)


def test_no_progress_bars_when_stderr_is_not_a_terminal(model_file, tmp_path, capfd):
    """Without --quiet, a cohort written to a log holds its result lines, not bar redraws."""
    cohort = make_cohort(tmp_path / "cohort", ["a", "b"])
    loud = [a for a in segment_argv(cohort, tmp_path / "out", model_file) if a != "--quiet"]
    rc, _, err = run_cli(capfd, loud)
    assert rc == 0, err
    joined = "\n".join(err)
    assert "\r" not in joined and "\x1b[" not in joined
    assert not any(line.startswith(("cases", "slices")) for line in err), err
