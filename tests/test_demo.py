"""The demo runs end to end (phantom → DICOM → segment → outputs → Dice) without patient data."""

from __future__ import annotations

import pytest

from spineseg.cli.main import main
from spineseg.demo import DemoConfig, run_demo
from spineseg.errors import OutputError
from spineseg.inference.model_file import load_segmentation_model


@pytest.fixture(scope="module")
def tiny_model(tiny_model_file):
    return tiny_model_file


def test_demo_writes_everything_and_scores(tmp_path, tiny_model):
    cfg = DemoConfig(shape=(96, 96, 24), progress=False)
    res = run_demo(tmp_path / "demo", load_segmentation_model(tiny_model), cfg)
    assert (res.dicom_dir).is_dir() and len(list(res.dicom_dir.iterdir())) == 24
    assert {p.name for p in res.outputs} >= {"spine.nii.gz", "stats.json", "preview.png"}
    assert 0.0 <= res.dice <= 1.0
    assert res.input_info["modality"] == "CT"
    with pytest.raises(OutputError, match="exists"):
        run_demo(tmp_path / "demo", load_segmentation_model(tiny_model), cfg)


def test_demo_cli_prints_dice(tmp_path, tiny_model, capsys):
    rc = main(["demo", "-o", str(tmp_path / "d"), "--model", str(tiny_model), "--quiet",
               "--size", "96", "96", "24"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Dice against the phantom's truth:" in out
