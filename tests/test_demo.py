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


def test_demo_reruns_into_its_own_folder_and_refuses_any_other(tmp_path, tiny_model) -> None:
    # `make demo` twice: the second run replaces the first one's outputs (and only those).
    cfg = DemoConfig(shape=(96, 96, 24), progress=False, seed=3)
    model = load_segmentation_model(tiny_model)
    out = tmp_path / "demo"
    first = run_demo(out, model, cfg)
    (first.outdir / ".segmentation.partial-x1").mkdir()  # staging a killed run left behind
    second = run_demo(out, model, DemoConfig(shape=(96, 96, 20), progress=False, seed=3))
    assert len(list(second.dicom_dir.iterdir())) == 20  # not 24: the old series is gone
    assert sorted(p.name for p in out.iterdir()) == ["phantom_dicom", "phantom_truth.nii.gz",
                                                     "segmentation"]
    for stray in (out / "notes.txt", out / "segmentation" / "my_mask.nii.gz",
                  out / "phantom_dicom" / "README"):
        stray.write_text("mine")
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        with pytest.raises(OutputError, match=f"holds {stray.relative_to(out)}, which the demo"):
            run_demo(out, model, cfg)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing removed
        stray.unlink()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        run_demo(tmp_path / "file", model, cfg)


def test_demo_cli_prints_dice_and_no_bar_into_a_log(tmp_path, tiny_model, capsys):
    # No --quiet: stderr is captured (not a terminal), so no bar may be drawn into it.
    rc = main(["demo", "-o", str(tmp_path / "d"), "--model", str(tiny_model),
               "--size", "96", "96", "24"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "Dice against the phantom's truth:" in captured.out
    assert "\r" not in captured.err and "slices" not in captured.err
