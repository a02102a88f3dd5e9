"""``spineseg info`` prints the right facts for every real image we have."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spineseg.cli.main import main


def _fields(out: str) -> dict[str, str]:
    return dict(_split(line) for line in out.splitlines())


def _split(line: str) -> tuple[str, str]:
    key, _, value = line.partition("  ")
    return key.strip(), value.strip()


def test_info_on_dicom_series(shared_data, capsys):
    assert main(["info", str(shared_data / "ts_chest_dicom")]) == 0
    f = _fields(capsys.readouterr().out)
    assert f["shape (x,y,z)"] == "512 x 512 x 20"
    assert f["spacing (mm)"] == "0.9766 x 0.9766 x 2.0000"
    assert f["orientation"] == "LPS"
    assert f["origin (mm, LPS)"] == "(-249.51, -437.51, -804.50)"
    assert f["format"] == "DICOM"
    assert f["CT"].startswith("yes")
    assert f["non-finite"].startswith("0 ")


def _nifti_files(shared_data: Path) -> list[Path]:
    return sorted(shared_data.rglob("*.nii.gz"))


def test_info_on_every_nifti(shared_data, capsys):
    files = _nifti_files(shared_data)
    assert len(files) >= 8
    for path in files:
        assert main(["info", str(path), "--json"]) == 0, path
        got = json.loads(capsys.readouterr().out)
        img = nib.load(path)  # independent reader: nibabel, RAS affine
        assert got["shape"] == list(img.shape[:3]), path
        np.testing.assert_allclose(got["spacing"], img.header.get_zooms()[:3], rtol=1e-5)
        assert got["orientation"] == "".join(nib.aff2axcodes(img.affine)), path
        np.testing.assert_allclose(got["origin"], img.affine[:3, 3] * [-1, -1, 1], atol=1e-3)
        data = np.asanyarray(img.dataobj)
        assert got["min"] == pytest.approx(float(data.min()))
        assert got["max"] == pytest.approx(float(data.max()))
        is_mask = "spine" in path.name or "vert" in path.name
        assert got["looks_like_ct"] is (not is_mask), (path, got["ct_reason"])
        assert got["nonfinite"] == 0


def test_info_text_block_is_aligned(shared_data, capsys):
    assert main(["info", str(shared_data / "verse012" / "ct.nii.gz")]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {len(line) - len(line[line.index("  "):].lstrip()) for line in lines}
    assert len(starts) == 1  # every value starts in the same column
    assert any(line.startswith("CT") and "yes" in line for line in lines)


def test_info_json_via_console_script(shared_data):
    exe = Path(sys.executable).with_name("spineseg")
    proc = subprocess.run([str(exe), "info", str(shared_data / "ts_chest_dicom"), "--json"],
                          capture_output=True, encoding="utf-8", errors="replace", check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["shape"] == [512, 512, 20]
    np.testing.assert_allclose(got["spacing"], [0.9765625, 0.9765625, 2.0], atol=1e-6)
    assert got["modality"] == "CT" and got["looks_like_ct"] is True
    assert proc.stderr == ""


def _tissue_crop(rng: np.random.Generator) -> np.ndarray:
    """A spine-protocol field of view: muscle, fat and a bright vertebra, no air at all."""
    arr = rng.normal(40.0, 20.0, (20, 64, 64))
    arr[:, :, :12] = rng.normal(-100.0, 20.0, (20, 64, 12))  # subcutaneous / paraspinal fat
    arr[:, 20:44, 20:44] = rng.normal(600.0, 150.0, (20, 24, 24))  # vertebral body
    return arr


def test_ct_verdict_accepts_a_tissue_only_crop():
    from spineseg.io.describe import ct_verdict

    ok, reason = ct_verdict(_tissue_crop(np.random.default_rng(0)))
    assert ok, reason
    assert "no air" in reason and "fat" in reason


def test_ct_verdict_refuses_tissue_like_images_that_are_not_hu():
    from spineseg.io.describe import ct_verdict

    crop = _tissue_crop(np.random.default_rng(1))
    zscored = (crop - crop.mean()) / crop.std()  # intensity-normalised: no HU layout left
    assert not ct_verdict(zscored)[0]
    no_bone = np.clip(crop, None, 200.0)  # a soft-tissue phantom without bone
    assert not ct_verdict(no_bone)[0]
    no_fat = np.where(crop < 0, 40.0, crop)
    assert not ct_verdict(no_fat)[0]
