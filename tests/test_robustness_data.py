"""Robustness of data handling: prepare's settings and splits, evaluation of float masks, odd
NIfTI shapes, broken or ambiguous DICOM folders, and the CLI's behaviour on a closed pipe.

Every input is built here, tiny and synthetic; none of these tests needs the real data.
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from spineseg.cli.main import main
from spineseg.data.prepare import PrepareConfig, prepare_dataset, split_patients
from spineseg.errors import DataError, InputError, PartialFailure
from spineseg.io import Volume, read_image, write_dicom_series, write_image
from spineseg.io.itk_common import preserve_locale
from synthetic_ct import ct_volume

SRC = Path(__file__).resolve().parents[1] / "src" / "spineseg"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


# --------------------------------------------------------------------------- io layering


def test_dicom_reader_does_not_import_the_file_reader() -> None:
    """read.py dispatches folders to dicom.py; dicom.py must not import read.py back."""
    assert "spineseg.io.read" not in _imported_modules(SRC / "io" / "dicom.py")
    assert "spineseg.io.dicom" in _imported_modules(SRC / "io" / "read.py")
    code = ("import spineseg.io.dicom as d, spineseg.io.read as r; "
            "print(r.read_dicom_series is d.read_dicom_series)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


# --------------------------------------------------------------------------- NIfTI shapes


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_5d_nifti_with_singleton_axes_reads_as_3d(tmp_path: Path, dtype: type) -> None:
    """(x, y, z, 1, 1) is one volume whatever its data type (int16 was read, float32 refused)."""
    data = np.arange(6 * 7 * 5, dtype=dtype).reshape(6, 7, 5, 1, 1)
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "five.nii.gz")
    vol = read_image(tmp_path / "five.nii.gz")
    assert vol.shape_xyz == (6, 7, 5)
    np.testing.assert_allclose(vol.spacing, (2.0, 3.0, 4.0))
    assert vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array, data[..., 0, 0].T)  # (x,y,z) -> (z,y,x)
    # LPS from RAS: x and y flipped, so compare through nibabel's own orientation handling.
    assert vol.orientation == "RAS"


# --------------------------------------------------------------------------- DICOM folders


def _write_slices(folder: Path, zs: list[float], *, uid: str = "2.25.11", modality: str = "CT",
                  acquisitions: list[str] | None = None, prefix: str = "",
                  size: int = 8) -> list[Path]:
    """Hand-made axial slices (one file each) at positions ``zs``, with an AcquisitionNumber each
    when given; the value of a slice is its position, so its order can be checked."""
    folder.mkdir(exist_ok=True)
    sop = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k, z in enumerate(zs):
        img = sitk.GetImageFromArray(np.full((size, size), int(z * 10), np.int16))
        img.SetSpacing((1.0, 1.0))
        tags = {"0020|000e": uid, "0020|000d": "2.25.2", "0008|0060": modality,
                "0008|0016": sop, "0008|0018": f"{uid}.{k + 1}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": f"0\\0\\{z}", "0020|0013": str(k + 1)}
        if acquisitions is not None:
            tags["0020|0012"] = acquisitions[k]
        for key, value in tags.items():
            img.SetMetaData(key, value)
        files.append(folder / f"{prefix}{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        with preserve_locale():  # GDCM's writer sets the process locale to "C"
            writer.Execute(img)
    return files


def _strip_pixel_data(path: Path) -> None:
    """Cut a file before its (7FE0,0010) Pixel Data element: a valid header, no image."""
    data = path.read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")
    assert at > 132
    path.write_bytes(data[:at])


def test_slice_without_pixel_data_is_named(tmp_path: Path) -> None:
    folder = write_dicom_series(ct_volume((6, 16, 16)), tmp_path / "s")
    victim = sorted(folder.iterdir())[2]
    _strip_pixel_data(victim)
    with pytest.raises(InputError, match="1 missing slice") as info:
        read_image(folder)
    assert victim.name in str(info.value) and "no pixel data" in str(info.value)
    # A slice that is merely absent still reads as a gap, with no file to blame.
    victim.unlink()
    with pytest.raises(InputError, match="1 missing slice") as info:
        read_image(folder)
    assert "pixel data" not in str(info.value)


def test_two_acquisitions_in_one_series_are_refused_naming_the_choice(tmp_path: Path,
                                                                      capfd) -> None:
    """Interleaved positions (acquisition 1 at even mm, 2 at odd mm) pass every geometry check
    as one series with a 1 mm step; AcquisitionNumber tells them apart."""
    zs = [0, 2, 4, 6, 1, 3, 5, 7]
    folder = tmp_path / "s"
    _write_slices(folder, zs, acquisitions=["1"] * 4 + ["2"] * 4)
    with pytest.raises(InputError, match="2 acquisitions") as info:
        read_image(folder)
    msg = str(info.value)
    assert "--series 2.25.11:1" in msg and "--series 2.25.11:2" in msg
    second = read_image(folder, series_uid="2.25.11:2")
    assert second.shape_xyz[2] == 4 and second.spacing[2] == pytest.approx(2.0)
    np.testing.assert_array_equal(second.array[:, 0, 0], [10, 30, 50, 70])
    assert second.meta["acquisition"] == "2" and second.meta["series_uid"] == "2.25.11"
    with pytest.raises(InputError, match="no acquisition '3'"):
        read_image(folder, series_uid="2.25.11:3")
    # Through the CLI: exit 3, one line naming the choice.
    assert main(["info", str(folder)]) == 3
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "--series 2.25.11:1" in err
    assert main(["info", str(folder), "--series", "2.25.11:1"]) == 0
    # A repeated acquisition at the same positions is named the same way, not as a duplicate.
    repeat = tmp_path / "r"
    _write_slices(repeat, [0, 1, 2, 0, 1, 2], acquisitions=["1"] * 3 + ["2"] * 3)
    with pytest.raises(InputError, match="2 acquisitions"):
        read_image(repeat)


def test_one_acquisition_number_per_slice_or_block_is_one_volume(tmp_path: Path) -> None:
    """Axial step-and-shoot scans number each rotation: contiguous blocks are one volume."""
    per_slice = tmp_path / "a"
    _write_slices(per_slice, [0, 1, 2, 3, 4, 5], acquisitions=[str(k) for k in range(1, 7)])
    assert read_image(per_slice).shape_xyz[2] == 6
    blocks = tmp_path / "b"
    _write_slices(blocks, [0, 1, 2, 3, 4, 5], acquisitions=["1"] * 3 + ["2"] * 3)
    assert read_image(blocks).shape_xyz[2] == 6


def test_ct_series_preferred_over_a_larger_mr_series(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    _write_slices(folder, [0, 1, 2, 3], uid="2.25.40", prefix="ct")
    _write_slices(folder, [float(z) for z in range(10)], uid="2.25.50", modality="MR",
                  prefix="mr")
    vol = read_image(folder)
    assert vol.meta["series_uid"] == "2.25.40" and vol.meta["modality"] == "CT"
    note = vol.meta["series_note"]
    assert "the only CT series" in note and "2.25.50 (10 slices, MR)" in note
    assert read_image(folder, series_uid="2.25.50").meta["modality"] == "MR"


# --------------------------------------------------------------------------- evaluate


def test_evaluate_counts_nan_voxels_of_a_float_prediction_as_background(tmp_path: Path,
                                                                        caplog) -> None:
    from spineseg.evaluation.evaluate import evaluate_masks

    ref = np.zeros((4, 8, 8), np.uint8)
    ref[1:3, 2:6, 2:6] = 1
    pred = ref.astype(np.float32)
    pred[:, 0, :] = np.nan  # a NaN border (e.g. a resampling that filled outside with NaN)
    for name, arr in (("ref", ref), ("pred", pred)):
        (tmp_path / name).mkdir()
        write_image(Volume(arr, (1.0, 1.0, 2.0)), tmp_path / name / "c1.nii.gz")
    with caplog.at_level(logging.WARNING):
        result = evaluate_masks(tmp_path / "pred", tmp_path / "ref")
    assert result.cases[0].dice == 1.0 and result.cases[0].precision == 1.0
    assert any("32 voxels are NaN" in r.getMessage() and "c1.nii.gz" in r.getMessage()
               for r in caplog.records)


# --------------------------------------------------------------------------- info and the CLI


def test_closed_stdout_pipe_ends_quietly(tmp_path: Path) -> None:
    """``spineseg info --json | head``: the reader goes away, no error and no traceback."""
    write_image(ct_volume(), tmp_path / "ct.nii.gz")
    proc = subprocess.Popen([sys.executable, "-m", "spineseg.cli.main", "info", "--json",
                             str(tmp_path / "ct.nii.gz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode("utf-8", "replace")
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_info_says_the_origin_is_lps(tmp_path: Path, capsys) -> None:
    write_image(ct_volume(origin=(-5.0, 7.0, 11.0)), tmp_path / "ct.nii.gz")
    assert main(["info", str(tmp_path / "ct.nii.gz")]) == 0
    rows = dict(line.split("  ", 1) for line in capsys.readouterr().out.splitlines())
    assert rows["origin (mm, LPS)"].strip() == "(-5.00, 7.00, 11.00)"
    assert main(["info", "--json", str(tmp_path / "ct.nii.gz")]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["space"] == "LPS" and facts["origin"] == [-5.0, 7.0, 11.0]


# --------------------------------------------------------------------------- prepare


def _pairs_source(folder: Path, names: list[str], broken: tuple[str, ...] = ()) -> Path:
    """A ``pairs`` source: ``<case>.nii.gz`` + ``<case>_seg.nii.gz``; ``broken`` cases get an
    unreadable image."""
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        vol = ct_volume((4, 16, 16), seed=i)
        mask = vol.with_array((vol.array > 400).astype(np.uint8))
        write_image(mask, folder / f"{name}_seg.nii.gz")
        if name in broken:
            (folder / f"{name}.nii.gz").write_bytes(b"\x1f\x8b not gzip")
        else:
            write_image(vol, folder / f"{name}.nii.gz")
    return folder


@pytest.mark.parametrize("spacing", ["0", "nan", "-1", "inf"])
def test_prepare_refuses_a_bad_spacing_before_writing(tmp_path: Path, capfd,
                                                      spacing: str) -> None:
    src = _pairs_source(tmp_path / "src", ["a", "b"])
    out = tmp_path / "ds"
    rc = main(["prepare", str(src), "-o", str(out), "--val", "0", "--no-progress",
               "--spacing", spacing])
    err = capfd.readouterr().err
    assert rc == 3, err
    assert err.count("\n") == 1 and "--spacing" in err and "failed" not in err
    assert not out.exists()


def test_test_count_takes_real_patients_first() -> None:
    """The README's ``--val 0.2 --test 2`` on 2 real + 4 phantom patients: the test split is
    the two patients and validation still gets a phantom, whatever the seed."""
    kinds = {"r1": "real", "r2": "real"} | {f"p{i}": "phantom" for i in range(4)}
    for seed in range(8):
        s = split_patients(kinds, "0.2", "2", seed=seed)
        assert sorted(p for p, v in s.items() if v == "test") == ["r1", "r2"], seed
        assert [kinds[p] for p, v in s.items() if v == "val"] == ["phantom"], seed
    # Validation counts stay in shuffled order (real patients are not drained from training).
    vals = {tuple(sorted(p for p, v in split_patients(kinds, "2", "0", seed=k).items()
                         if v == "val")) for k in range(8)}
    assert any(all(p.startswith("p") for p in v) for v in vals)


def test_fraction_that_rounds_to_none_still_takes_one_patient() -> None:
    two = {"a": "real", "b": "real"}
    s = split_patients(two, "0.2", "0", seed=0)
    assert sorted(s.values()) == ["train", "val"]
    # ... but never the last one training needs: then the split stays empty.
    assert list(split_patients({"a": "real"}, "0.2", "0", seed=0).values()) == ["train"]
    mixed = {"r1": "real", "p1": "phantom", "p2": "phantom"}
    s = split_patients(mixed, "0.1", "0", seed=0)
    assert sum(v == "val" for v in s.values()) == 1
    assert next(p for p, v in s.items() if v == "val").startswith("p")  # the larger kind


def test_empty_validation_split_after_a_failed_case_is_warned(tmp_path: Path, caplog) -> None:
    src = _pairs_source(tmp_path / "src", ["a", "b", "c"], broken=("b",))
    with caplog.at_level(logging.WARNING), pytest.raises(PartialFailure) as info:
        prepare_dataset([src], tmp_path / "ds", PrepareConfig(val="b", test="0"))
    result = info.value.result  # type: ignore[attr-defined]
    assert result.splits["val"] == [] and "b" in result.failed
    assert len(result.warnings) == 1
    assert "val split is empty" in result.warnings[0] and "b failed" in result.warnings[0]
    assert any("val split is empty" in r.getMessage() for r in caplog.records)


def test_dataset_from_before_the_split_rule_resumes_unless_a_patient_moves(tmp_path: Path
                                                                           ) -> None:
    src = _pairs_source(tmp_path / "src", ["a", "b", "c"])
    out = tmp_path / "ds"
    cfg = PrepareConfig(val="1", test="0", seed=1)
    first = prepare_dataset([src], out, cfg)
    manifest_file = out / "manifest.json"
    data = json.loads(manifest_file.read_text(encoding="utf-8"))
    assert data["config"].pop("split_rule") == 2
    manifest_file.write_text(json.dumps(data), encoding="utf-8")
    again = prepare_dataset([src], out, cfg)
    assert again.prepared == [] and sorted(again.skipped) == sorted(first.prepared)
    assert json.loads(manifest_file.read_text(encoding="utf-8"))["config"]["split_rule"] == 2
    # An older rule that had put another patient in validation: refused, not silently re-split.
    (val_case,) = again.splits["val"]
    other = again.splits["train"][0]
    data = json.loads(manifest_file.read_text(encoding="utf-8"))
    del data["config"]["split_rule"]
    data["cases"][val_case]["split"], data["cases"][other]["split"] = "train", "val"
    data["splits"]["val"], data["splits"]["train"] = [other], sorted(
        [c for c in data["splits"]["train"] if c != other] + [val_case])
    manifest_file.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="earlier spineseg whose split rule"):
        prepare_dataset([src], out, cfg)
