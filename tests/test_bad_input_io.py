"""Bad input never produces a traceback: one ``error:`` line naming the file, a documented code."""

from __future__ import annotations

import gzip
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spineseg.cli.main import main
from spineseg.errors import GeometryError, InputError, OutputError, ResourceError
from spineseg.io import IMAGE_EXTENSIONS, Volume, read_image, write_image

INPUT, RESOURCE = InputError.exit_code, ResourceError.exit_code
assert GeometryError.exit_code == INPUT == 3 and RESOURCE == 7


def _fails_cleanly(capfd, path: Path, code: int, *extra: str) -> str:
    """Run ``spineseg info`` in-process; fd-level capture also sees C++ (ITK/GDCM) chatter."""
    assert main(["info", str(path), *extra]) == code
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and str(path) in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    return lines[0]


def _nifti(path: Path, data: np.ndarray, zooms: tuple[float, ...] | None = None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4) if zooms is None else None)
    if zooms is not None:  # write pixdim raw: nibabel's set_zooms refuses values <= 0
        img.header["pixdim"][1:4] = zooms
        img.header.set_qform(None, code=0)
        img.header.set_sform(None, code=0)
    nib.save(img, path)
    if zooms is not None:  # the crafted file really holds them (nibabel fixes only on load)
        with open(path, "rb") as f:
            raw = nib.Nifti1Header.from_fileobj(f, check=False)
        np.testing.assert_array_equal(raw["pixdim"][1:4], zooms)
    return path


_MAGIC = {".nii": b"\x5c\x01\x00\x00", ".nii.gz": b"", ".nrrd": b"NRRD0004\n",
          ".nhdr": b"NRRD0004\n", ".mha": b"ObjectType = Image\nNDims = 3\n",
          ".mhd": b"ObjectType = Image\n"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ext=st.sampled_from(IMAGE_EXTENSIONS), junk=st.binary(min_size=1, max_size=2048),
       magic=st.booleans())
def test_junk_bytes_with_an_image_extension(capfd, ext, junk, magic):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"junk{ext}"
        path.write_bytes((_MAGIC[ext] if magic else b"") + junk)
        _fails_cleanly(capfd, path, INPUT)


def test_zero_byte_file(tmp_path, capfd):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    assert "empty file" in _fails_cleanly(capfd, path, INPUT)


@pytest.mark.parametrize("keep", [0.3, 0.97])
def test_truncated_nii_gz(tmp_path, capfd, keep):
    # ITK's own NIfTI reader zero-fills truncated data silently; read_image must not.
    full = _nifti(tmp_path / "full.nii.gz",
                  np.random.default_rng(0).integers(-1000, 2000, (40, 30, 20)).astype(np.int16))
    data = full.read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: int(len(data) * keep)])
    assert "truncated" in _fails_cleanly(capfd, path, INPUT)


def test_truncated_uncompressed_nii(tmp_path, capfd):
    full = _nifti(tmp_path / "full.nii", np.ones((10, 10, 10), np.int16))
    path = tmp_path / "cut.nii"
    path.write_bytes(full.read_bytes()[:-100])
    assert "truncated" in _fails_cleanly(capfd, path, INPUT)


def test_truncated_gzip_header(tmp_path, capfd):
    path = tmp_path / "tiny.nii.gz"
    path.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + bytes(100)))
    _fails_cleanly(capfd, path, INPUT)


def test_empty_folder(tmp_path, capfd):
    (tmp_path / "d").mkdir()
    assert "empty folder" in _fails_cleanly(capfd, tmp_path / "d", INPUT)


def test_folder_without_dicom(tmp_path, capfd):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image", encoding="utf-8")
    (folder / "x.dcm").write_bytes(b"\x00" * 300)
    assert "no DICOM" in _fails_cleanly(capfd, folder, INPUT)


def test_missing_path(tmp_path, capfd):
    assert "no such file" in _fails_cleanly(capfd, tmp_path / "nope.nii.gz", INPUT)


def test_unsupported_extension(tmp_path, capfd):
    path = tmp_path / "slice.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    assert "unsupported" in _fails_cleanly(capfd, path, INPUT)


def test_2d_image(tmp_path, capfd):
    path = _nifti(tmp_path / "flat.nii.gz", np.zeros((8, 9), np.int16))
    assert "2D" in _fails_cleanly(capfd, path, INPUT)
    with pytest.raises(GeometryError):
        read_image(path)


def test_4d_image(tmp_path, capfd):
    path = _nifti(tmp_path / "time.nii.gz", np.zeros((4, 5, 6, 3), np.int16))
    assert "4D" in _fails_cleanly(capfd, path, INPUT)
    with pytest.raises(GeometryError):
        read_image(path)


@pytest.mark.parametrize("zooms", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, 0.0)])
def test_spacing_not_positive(tmp_path, capfd, zooms):
    path = _nifti(tmp_path / "bad.nii", np.zeros((4, 5, 6), np.int16), zooms)
    assert "spacing" in _fails_cleanly(capfd, path, INPUT)
    with pytest.raises(GeometryError):
        read_image(path)


def test_negative_spacing_metaimage(tmp_path, capfd):
    path = tmp_path / "neg.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementSpacing = 1 -1 1\n"
                     b"ElementType = MET_SHORT\nElementDataFile = LOCAL\n" + bytes(16))
    assert "spacing" in _fails_cleanly(capfd, path, INPUT)


def test_absurd_declared_size_is_refused_before_allocating(tmp_path, capfd):
    path = tmp_path / "huge.nrrd"
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 100000 100000 100000\n"
                    "spacings: 1 1 1\nendian: little\nencoding: raw\n\n")
    start = time.perf_counter()
    line = _fails_cleanly(capfd, path, RESOURCE)
    assert time.perf_counter() - start < 5  # 2e15 bytes were never asked for
    assert "--max-voxels" in line
    with pytest.raises(ResourceError):
        read_image(path)


def test_limit_is_configurable(tmp_path):
    path = write_image(Volume(np.zeros((4, 4, 4), np.int16), (1, 1, 1)), tmp_path / "s.mha")
    with pytest.raises(ResourceError):
        read_image(path, max_voxels=63)
    assert read_image(path, max_voxels=64).array.shape == (4, 4, 4)


def test_nan_voxels_are_reported(tmp_path, capsys):
    data = np.full((6, 5, 4), -1000.0, np.float32)
    data[1:5, 1:4, 1:3] = 40.0
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    path = _nifti(tmp_path / "nan.nii.gz", data)
    assert read_image(path).meta["nonfinite"] == "3"
    assert main(["info", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["nonfinite"] == 3
    assert got["min"] == -1000.0 and got["max"] == 40.0  # statistics over finite voxels
    assert main(["info", str(path)]) == 0
    assert "3 voxels (NaN/inf)" in capsys.readouterr().out


def test_mr_like_range_is_not_ct(tmp_path, capsys):
    rng = np.random.default_rng(1)
    path = _nifti(tmp_path / "t1.nii.gz", rng.uniform(0, 800, (20, 20, 10)).astype(np.float32))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    ct_line = next(line for line in out.splitlines() if line.startswith("CT"))
    assert "no:" in ct_line and ">= 0" in ct_line
    # a z-scored MR (negative values, but no air at -1000) is not CT either
    path = _nifti(tmp_path / "z.nii.gz", rng.normal(0, 1, (20, 20, 10)).astype(np.float32))
    assert main(["info", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["looks_like_ct"] is False and "air" in got["ct_reason"]


def test_write_over_existing_keeps_old_file(tmp_path):
    vol = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), (1, 1, 1))
    target = write_image(vol, tmp_path / "x.nii.gz")
    before = target.read_bytes()
    with pytest.raises(OutputError):
        write_image(vol.with_array(vol.array * 2), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]
