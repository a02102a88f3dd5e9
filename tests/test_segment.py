"""The segmentation pipeline: geometry end to end, outputs, batch mode, CLI.

A tiny random-weight network stands in for the shipped model here: these tests check what the
pipeline does with geometry, files and failures, not accuracy (tests/test_segment_accuracy.py
checks the shipped model on the real cases). Its threshold is set to the 97th percentile of its
own output on the test CT, so the mask is a non-trivial, deterministic function of the image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import OutputError, PartialFailure
from spineseg.inference.batch import segment_batch
from spineseg.inference.model_file import (
    load_segmentation_model,
    read_model_payload,
    save_segmentation_model,
)
from spineseg.inference.outputs import OutputConfig, write_case_outputs
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.predict import PredictConfig
from spineseg.io import Volume, read_image, reorient, resample_to, write_image
from spineseg.models import build_model
from spineseg.reconstruction import MeshConfig

FAST = SegmentConfig(predict=PredictConfig(batch_size=16, progress=False),
                     mesh=MeshConfig(max_faces=2000, smoothing_iterations=2),
                     keep_probabilities=True)


@pytest.fixture(scope="module")
def small_ct(shared_data, tmp_path_factory) -> Volume:
    """A 30-slice crop of the real abdominal case (RAS-stored, 3 mm)."""
    vol = read_image(shared_data / "ts_abdomen_3mm" / "ct.nii.gz")
    crop = np.ascontiguousarray(vol.array[40:70])
    origin = vol.to_sitk().TransformIndexToPhysicalPoint((0, 0, 40))
    return Volume(crop, vol.spacing, tuple(origin), vol.direction)


@pytest.fixture(scope="module")
def model_file(small_ct, tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2)
    pre = Preprocessing(spacing_xy=(2.0, 2.0))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(), preprocessing=pre)
    probe = segment(small_ct, load_segmentation_model(path), FAST)
    thr = float(np.percentile(probe.probabilities.array, 97))
    path.unlink()
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(), preprocessing=pre, threshold=thr)
    return path


def test_mask_is_on_the_input_grid_and_nontrivial(small_ct, model_file):
    res = segment(small_ct, model_file, FAST)
    assert res.mask.same_grid(small_ct)
    assert res.mask.array.dtype == np.uint8
    assert 0 < res.mask.array.sum() < res.mask.array.size
    assert res.stats["slices_total"] == 30
    assert res.stats["model"]["name"] == "msrunet"
    assert res.stats["model"]["preprocessing"]["spacing_xy"] == [2.0, 2.0]


@pytest.mark.parametrize("code", ["PIR", "LAS"])
def test_other_voxel_order_gives_the_same_physical_mask(small_ct, model_file, tmp_path, code):
    ras = segment(small_ct, model_file, FAST)
    stored = reorient(small_ct, code)
    path = write_image(stored, tmp_path / f"ct_{code}.nii.gz")
    other = segment(path, model_file, FAST)
    assert other.mask.same_grid(read_image(path))
    back = resample_to(other.mask, small_ct, interpolation="nearest")
    np.testing.assert_array_equal(back.array, ras.mask.array)
    prob_back = resample_to(other.probabilities, small_ct, interpolation="nearest")
    np.testing.assert_allclose(prob_back.array, ras.probabilities.array, atol=1e-3)


def test_outputs_complete_atomic_and_not_overwritten(small_ct, model_file, tmp_path):
    res = segment(small_ct, model_file, FAST)
    out = tmp_path / "case"
    written = write_case_outputs(res, out, OutputConfig(mesh_format="stl", probabilities=True))
    names = sorted(p.name for p in written)
    assert names == ["preview.png", "spine.nii.gz", "spine.stl", "spine_prob.nii.gz", "stats.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]  # no staging folder left
    mask = read_image(out / "spine.nii.gz")
    assert mask.same_grid(small_ct)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["spine_volume_ml"] == pytest.approx(
        mask.array.sum() * np.prod(small_ct.spacing) / 1000, rel=1e-3)
    before = (out / "spine.nii.gz").stat().st_mtime_ns
    with pytest.raises(OutputError, match="already exists"):
        write_case_outputs(res, out, OutputConfig())
    assert (out / "spine.nii.gz").stat().st_mtime_ns == before


def test_batch_isolates_failures_and_resumes(small_ct, model_file, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_image(small_ct, cases / "a.nii.gz")
    write_image(reorient(small_ct, "PIR"), cases / "b.nrrd")
    (cases / "c.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    out = tmp_path / "out"
    model = load_segmentation_model(model_file)
    cfg = OutputConfig(mesh_format=None, preview=False)
    with pytest.raises(PartialFailure, match="1 of 3"):
        segment_batch(cases, out, model, FAST, cfg)
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "report.html", "summary.csv"]
    summary = (out / "summary.csv").read_text(encoding="utf-8")
    assert any(ln.startswith("c,") and ",failed," in ln for ln in summary.splitlines())
    with pytest.raises(PartialFailure):  # the corrupt case still fails; a and b are skipped
        segment_batch(cases, out, model, FAST, cfg)
    (cases / "c.nii.gz").unlink()
    res = segment_batch(cases, out, model, FAST, cfg)
    assert [o.status for o in res.outcomes] == ["skipped", "skipped"]
    shard = segment_batch(cases, tmp_path / "s", model, FAST, cfg, shard=(1, 2))
    assert [o.case for o in shard.outcomes] == ["b"]


def test_cli_segment_end_to_end(small_ct, model_file, tmp_path, capsys):
    src = write_image(small_ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(src), "-o", str(out), "--model", str(model_file), "--quiet",
               "--mesh", "obj", "--max-faces", "1500", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "spine.obj").is_file() and (out / "preview.png").is_file()
    rc = main(["segment", str(src), "-o", str(out), "--model", str(model_file), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4 and len(err) == 1 and err[0].startswith("error:") and "exists" in err[0]


@pytest.mark.parametrize("kind", ["junk", "truncated", "empty_dir", "missing"])
def test_cli_segment_bad_input_one_line_no_output(model_file, small_ct, tmp_path, capsys, kind):
    if kind == "junk":
        src = tmp_path / "junk.nii.gz"
        src.write_bytes(b"this is not an image at all" * 10)
    elif kind == "truncated":
        good = write_image(small_ct, tmp_path / "good.nii.gz")
        src = tmp_path / "trunc.nii.gz"
        src.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty_dir":
        src = tmp_path / "empty"
        src.mkdir()
    else:
        src = tmp_path / "nope.nii.gz"
    out = tmp_path / "out"
    rc = main(["segment", str(src), "-o", str(out), "--model", str(model_file), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert len(err) == 1 and err[0].startswith("error:")
    assert not out.exists() or not any(out.iterdir())


def test_model_file_is_weights_only_and_refuses_code(tmp_path, model_file):
    payload = read_model_payload(model_file)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values()
               if v.is_floating_point())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"model_name": "msrunet", "model_config": {}, "preprocessing": {},
                "state_dict": {}, "x": Evil()}, bad)
    rc = main(["segment", str(model_file), "-o", str(tmp_path / "o"), "--model", str(bad)])
    assert rc == 5


def test_slabwise_resampling_equals_whole_volume(small_ct):
    from spineseg.inference.pipeline import _resample_slabs
    from spineseg.io import reorient, resample_spacing

    canon = reorient(small_ct, "LPS")
    work = resample_spacing(canon, (1.0, 1.0, canon.spacing[2]), interpolation="linear")
    rng = np.random.default_rng(0)
    prob = work.with_array(rng.random(work.array.shape).astype(np.float16))
    whole = resample_to(prob.with_array(prob.array.astype(np.float32)), canon,
                        interpolation="linear").array
    slabs = _resample_slabs(prob, canon, slab=7)
    np.testing.assert_allclose(slabs.astype(np.float32), whole, atol=1e-3)
