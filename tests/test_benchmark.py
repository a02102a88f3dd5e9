"""The benchmark runs end to end in its --tiny configuration (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from spineseg.benchmark import MemoryConfig, measure_segment_memory
from spineseg.benchmark.inputs import build_volume
from spineseg.benchmark.peers import NnUNetFastSpec, build_nnunet_fast
from spineseg.cli.main import main
from spineseg.errors import ModelError

try:
    import dynamic_network_architectures  # noqa: F401

    HAVE_NNUNET = True
except ImportError:
    HAVE_NNUNET = False


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    extra = [] if HAVE_NNUNET else ["--no-nnunet"]
    assert main(["benchmark", "--tiny", "--threads", "1", *args, *extra]) == 0
    return capsys.readouterr().out


def test_tiny_benchmark_prints_both_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(["--random-weights"], capsys)
    assert "vs MONAI BasicUNet: " in out
    if HAVE_NNUNET:
        assert "vs nnU-Net 3D fast: " in out
    assert "RANDOM weights" in out and "torch threads" in out
    ratio = next(line for line in out.splitlines() if line.startswith("vs MONAI"))
    assert float(ratio.split(":")[1].strip().rstrip("×")) > 0


def test_tiny_benchmark_json_report(capsys: pytest.CaptureFixture[str]) -> None:
    rep = json.loads(_cli(["--json", "--no-peers"], capsys))
    assert set(rep) == {"machine", "input", "ours", "peers", "ratios", "notes"}
    assert rep["input"]["shape_xyz"] == [64, 64, 8]
    ours = rep["ours"]
    for key in ("seconds", "slices_per_s", "network_seconds", "network_slices_per_s",
                "peak_rss_bytes", "phases_s", "model"):
        assert key in ours
    assert ours["slices"] == 8 and ours["peak_rss_bytes"] > 10 * 2**20
    assert ours["network_seconds"] <= ours["seconds"]
    assert rep["machine"]["torch_threads"] == 1 and rep["peers"] == {}
    # With the region (the default) and on whole slices, each phase including the coarse pass.
    assert ours["region"] is True and "locate_s" in ours["phases_s"]
    assert ours["full_slice"]["slices"] == 8 and rep["ratios"]["region_vs_full_slice"] > 0
    whole = json.loads(_cli(["--json", "--no-peers", "--full-slice"], capsys))
    assert whole["ours"]["region"] is False and "full_slice" not in whole["ours"]


@pytest.mark.skipif(not HAVE_NNUNET, reason="nnU-Net's network package is not installed")
def test_benchmark_compares_with_nnunet_at_float32_and_at_our_precision(
        capsys: pytest.CaptureFixture[str]) -> None:
    rep = json.loads(_cli(["--json", "--precision", "bfloat16", "--random-weights"], capsys))
    assert rep["ours"]["precision"] == "bfloat16"
    assert rep["peers"]["nnunet_3d_fast"]["precision"] == "float32"
    assert rep["peers"]["nnunet_3d_fast_same_precision"]["precision"] == "bfloat16"
    assert {"nnunet_3d_fast", "nnunet_3d_fast_same_precision"} <= set(rep["ratios"])
    exact = json.loads(_cli(["--json", "--precision", "float32", "--random-weights"], capsys))
    assert exact["ours"]["precision"] == "float32"
    assert "nnunet_3d_fast_same_precision" not in exact["peers"]


def test_build_volume_tiles_deep_volumes_mirrored() -> None:
    vol, notes = build_volume(48, 130)
    assert vol.array.shape == (130, 48, 48) and vol.array.dtype.name == "int16"
    assert any("mirror-tiled" in n for n in notes)
    # Mirrored: slice 100 repeats slice 99, so the anatomy is continuous at the seam.
    assert (vol.array[100] == vol.array[99]).all()


def test_nnunet_peer_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "dynamic_network_architectures", None)
    monkeypatch.setitem(sys.modules, "dynamic_network_architectures.architectures.unet", None)
    with pytest.raises(ModelError, match="dynamic-network-architectures"):
        build_nnunet_fast(NnUNetFastSpec.tiny())


def test_memory_check_runs_in_a_child_process() -> None:
    rep = measure_segment_memory(MemoryConfig(size=48, slices=24, threads=1, mesh=False,
                                              limit_gib=64.0))
    assert rep.shape_xyz == [48, 48, 24]
    assert rep.peak_rss_bytes > rep.input_bytes and rep.within_limit
    assert rep.peak_phase in rep.phase_peaks_bytes
    assert rep.model["source"] == "shipped default" and not rep.model["random_weights"]


def test_tiny_benchmark_of_a_2_5d_model_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """The MONAI peer reads the same multi-channel input as a 2.5-D model (the shipped one)."""
    import torch

    from spineseg.data.preprocess import Preprocessing
    from spineseg.inference.model_file import save_segmentation_model
    from spineseg.models import build_model

    torch.manual_seed(0)
    pre = Preprocessing(context_slices=1, context_mm=3.0)
    net = build_model("msrunet", in_channels=pre.channels, base_width=8, depth=2)
    path = tmp_path / "m25.pt"
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(), preprocessing=pre)
    out = _cli(["--model", str(path), "--no-nnunet"], capsys)
    ratio = next(line for line in out.splitlines() if line.startswith("vs MONAI"))
    assert float(ratio.split(":")[1].strip().rstrip("×")) > 0


def test_memory_check_reports_a_child_that_dies_without_a_result() -> None:
    import multiprocessing as mp
    import os

    from spineseg.benchmark.memory import wait_for_child
    from spineseg.errors import ResourceError

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=os._exit, args=(3,))  # exits at once and sends nothing
    proc.start()
    with pytest.raises(ResourceError, match="exited with code 3"):
        wait_for_child(proc, queue, poll_s=0.2)
