"""The demo runs end to end (phantom → DICOM → segment → outputs → Dice) without patient data."""

from __future__ import annotations

import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.preprocess import Preprocessing
from spineseg.demo import DemoConfig, run_demo
from spineseg.errors import OutputError
from spineseg.inference.model_file import load_segmentation_model, save_segmentation_model
from spineseg.models import build_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2)
    path = tmp_path_factory.mktemp("m") / "tiny.pt"
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(), preprocessing=Preprocessing((2.0, 2.0)))
    return path


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
