"""Model files, oblique scans, memory and option checks: hostile or careless input fails cleanly.

- A malformed, damaged or hand-crafted model file is refused on load with exit code 5 and one
  line naming the file, before any network is built (a declared network of any size is matched
  against the stored weights first); every file spineseg writes carries a content checksum.
- A strongly oblique scan is segmented on an axis-aligned grid and its mask mapped back onto the
  input grid; an empty result always says so.
- A run whose working set exceeds the memory is refused (exit 7) before allocating it.
- ``segment`` options that could only fail late (or never be noticed) are checked up front.

Everything is synthetic and tiny; where a behaviour depends on what the network sees, a stand-in
predictor replaces it, so these tests check the pipeline, not accuracy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import spineseg.inference.model_file as model_file_mod
import spineseg.inference.pipeline as pipeline_mod
from spineseg.cli.main import main
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError, ModelError, ResourceError
from spineseg.inference.model_file import (
    load_segmentation_model,
    read_model_payload,
    save_segmentation_model,
)
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.predict import PredictConfig
from spineseg.io import Volume, read_image, write_image
from spineseg.models import build_model
from spineseg.reconstruction import MeshConfig
from spineseg.serialization import CHECKSUM_KEY
from spineseg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    REQUIRED_KEYS,
    load_checkpoint,
    load_initial_weights,
    save_checkpoint,
)
from synthetic_ct import ct_volume

INPUT, MODEL, RESOURCE = 3, 5, 7
REPO = Path(__file__).resolve().parents[1]
QUIET = SegmentConfig(predict=PredictConfig(progress=False), mesh=None)


# --------------------------------------------------------------------------- helpers


def one_error(capfd: pytest.CaptureFixture[str], *needles: str) -> str:
    _, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def segment_argv(src: Path, out: Path, *extra: str) -> list[str]:
    return ["segment", str(src), "-o", str(out), "--quiet", "--mesh", "none", "--no-preview",
            "--device", "cpu", *extra]


@pytest.fixture
def cli_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``main``'s logging.basicConfig reach stderr as in a real run (pytest's log capture
    otherwise owns the root logger)."""
    monkeypatch.setattr(logging.root, "handlers", [])
    basic = logging.basicConfig
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: basic(**kw, force=True))


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image(ct_volume(), tmp_path_factory.mktemp("ct") / "ct.nii.gz")


def payload_of(path: Path) -> dict:
    """A model file's payload as a crafted copy would start from (without its checksum)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload.pop(CHECKSUM_KEY, None)
    return payload


def tiny_model(path: Path, spacing_xy=(2.0, 2.0), threshold: float = 0.5, **config) -> Path:
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2, **config)
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(), threshold=threshold,
                            preprocessing=Preprocessing(spacing_xy=spacing_xy))
    return path


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor's bytes (torch stores them uncompressed
    in its zip archive, so this changes one weight and nothing else)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- malformed model files


def _no_spacing(p: dict) -> None:
    p["preprocessing"] = {k: v for k, v in p["preprocessing"].items() if k != "spacing_xy"}


def _list_state(p: dict) -> None:
    p["state_dict"] = list(p["state_dict"].values())


def _int_tensors(p: dict) -> None:
    p["state_dict"] = {k: v.to(torch.int64) for k, v in p["state_dict"].items()}


def _text_threshold(p: dict) -> None:
    p["threshold"] = "high"


def _three_outputs(p: dict) -> None:
    net = build_model("msrunet", base_width=8, depth=2, out_channels=3)
    p["model_config"], p["state_dict"] = net.config.to_dict(), net.state_dict()


def _context_without_channels(p: dict) -> None:  # a 2.5-D record beside a 1-channel network
    p["preprocessing"] = {**p["preprocessing"], "context_slices": 1, "context_mm": 3.0}


CRAFTED = {
    "no_spacing": (_no_spacing, "spacing_xy"),
    "list_state_dict": (_list_state, "state_dict"),
    "integer_tensors": (_int_tensors, "wrong type"),
    "text_threshold": (_text_threshold, "threshold"),
    "three_outputs": (_three_outputs, "3 output channels"),
    "channel_mismatch": (_context_without_channels, "input channel"),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_malformed_model_file_is_a_model_error_naming_it(kind, tiny_model_file, ct_file,
                                                         tmp_path, capfd):
    craft, needle = CRAFTED[kind]
    payload = payload_of(tiny_model_file)
    craft(payload)
    bad = tmp_path / f"{kind}.pt"
    torch.save(payload, bad)
    out = tmp_path / "out"
    assert main(segment_argv(ct_file, out, "--model", str(bad))) == MODEL
    one_error(capfd, f"{kind}.pt", needle)
    assert not out.exists()


@pytest.mark.parametrize("content", [os.urandom(4096), b"model weights: see the wiki\n" * 8],
                         ids=["random_bytes", "text_file"])
def test_unreadable_model_file_is_not_reported_as_code(content, ct_file, tmp_path, capfd):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x00" + content)  # never a zip or pickle header, whatever urandom gave
    assert main(segment_argv(ct_file, tmp_path / "out", "--model", str(bad))) == MODEL
    line = one_error(capfd, "weights.pt", "not a readable model file")
    assert "code" not in line


def test_random_bytes_with_a_pickle_header_are_not_reported_as_code(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"\x80\x02" + bytes(range(7, 200)) * 8)
    with pytest.raises(ModelError, match="not a readable model file") as exc:
        load_segmentation_model(bad)
    assert "code" not in str(exc.value)


def test_code_running_model_file_is_still_refused_as_such(tiny_model_file, tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("pwned",))

    payload = payload_of(tiny_model_file)
    payload["meta"] = {"note": RunsCode()}
    bad = tmp_path / "evil.pt"
    torch.save(payload, bad)
    with pytest.raises(ModelError, match="could run code"):
        load_segmentation_model(bad)


def test_written_model_files_carry_a_checksum_and_a_flipped_byte_is_refused(
        tmp_path, ct_file, capfd):
    good = tiny_model(tmp_path / "model.pt")
    assert CHECKSUM_KEY in torch.load(good, weights_only=True)
    load_segmentation_model(good)
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(good.read_bytes())
    flip_tensor_byte(bad)
    # torch itself reads the damaged file without complaint: only the checksum can tell.
    before = torch.load(good, weights_only=True)["state_dict"]
    after = torch.load(bad, weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert main(segment_argv(ct_file, tmp_path / "out", "--model", str(bad))) == MODEL
    one_error(capfd, "flipped.pt", "checksum mismatch")
    assert not (tmp_path / "out").exists()


def test_files_without_a_checksum_still_load(tiny_model_file, tmp_path):
    """Model files written before checksums existed have none and still load; the shipped file
    is checked by its recorded SHA-256 whether or not it carries one."""
    old = tmp_path / "old.pt"
    payload = payload_of(tiny_model_file)
    payload.pop(CHECKSUM_KEY, None)
    torch.save(payload, old)
    assert CHECKSUM_KEY not in torch.load(old, weights_only=True)
    assert load_segmentation_model(old).model_name == "msrunet"
    model = load_segmentation_model(None)
    assert model.network.config.in_channels == model.preprocessing.channels


def _checkpoint_payload(state: dict) -> dict:
    payload = {k: None for k in REQUIRED_KEYS}
    payload.update(format=CHECKPOINT_FORMAT, model_name="msrunet",
                   model_config=build_model("msrunet", base_width=8, depth=2).config.to_dict(),
                   preprocessing=Preprocessing(spacing_xy=(2.0, 2.0)).to_dict(), state_dict=state,
                   train_config={}, epoch=2, best_metric=-float("inf"), best_epoch=1,
                   optimizer={}, scheduler={}, rng={}, history=[{"val_dice": float("nan")}],
                   software_version="test", threshold=0.5)
    return payload


def test_checkpoints_carry_a_checksum_and_a_flipped_byte_is_refused(tiny_model_file, tmp_path):
    state = payload_of(tiny_model_file)["state_dict"]
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint_payload(state))
    assert CHECKSUM_KEY in torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    assert CHECKSUM_KEY not in loaded and torch.equal(loaded["state_dict"]["head.weight"],
                                                      state["head.weight"])
    flip_tensor_byte(path)
    with pytest.raises(ModelError, match=r"last\.pt: checksum mismatch"):
        load_checkpoint(path)
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_initial_weights(path)
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_segmentation_model(path)


def test_ship_model_writes_a_checksummed_file_with_its_sha_record(tiny_model_file, tmp_path,
                                                                   monkeypatch):
    ckpt = save_checkpoint(tmp_path / "best.pt",
                           _checkpoint_payload(payload_of(tiny_model_file)["state_dict"]))
    spec = importlib.util.spec_from_file_location("ship_model", REPO / "tools" / "ship_model.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    monkeypatch.setattr(ship, "WEIGHTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["ship_model.py", str(ckpt)])
    ship.main()
    shipped = tmp_path / "spineseg-default.pt"
    assert CHECKSUM_KEY in torch.load(shipped, weights_only=True)
    record = (tmp_path / "spineseg-default.json").read_text(encoding="utf-8")
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() in record
    assert read_model_payload(shipped)["model_name"] == "msrunet"


# --------------------------------------------------------------------------- network size


def _build_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the default device of every network build the model loader makes."""
    builds: list[str] = []
    real = model_file_mod.build_model

    def spy(name, **config):
        builds.append(torch.get_default_device().type)
        return real(name, **config)

    monkeypatch.setattr(model_file_mod, "build_model", spy)
    return builds


@pytest.mark.parametrize("weights", [{}, {"head.weight": torch.zeros(1, 8, 1, 1)}],
                         ids=["no_weights", "one_small_tensor"])
def test_huge_declared_network_is_refused_before_building(weights, tiny_model_file, ct_file,
                                                          tmp_path, capfd, monkeypatch):
    builds = _build_spy(monkeypatch)
    payload = payload_of(tiny_model_file)
    payload["model_config"] = {**payload["model_config"], "base_width": 4096, "depth": 8}
    payload["state_dict"] = weights
    bad = tmp_path / "huge.pt"
    torch.save(payload, bad)
    t0 = time.perf_counter()
    assert main(segment_argv(ct_file, tmp_path / "out", "--model", str(bad))) == MODEL
    assert time.perf_counter() - t0 < 20
    one_error(capfd, "huge.pt")
    assert builds == []


def test_config_not_matching_the_weights_is_found_on_a_meta_network(tiny_model_file, ct_file,
                                                                    tmp_path, capfd,
                                                                    monkeypatch):
    builds = _build_spy(monkeypatch)
    payload = payload_of(tiny_model_file)
    # a narrower attention MLP than the stored one: same tensors, other shapes
    payload["model_config"] = {**payload["model_config"], "attention_reduction": 4}
    bad = tmp_path / "wider.pt"
    torch.save(payload, bad)
    assert main(segment_argv(ct_file, tmp_path / "out", "--model", str(bad))) == MODEL
    one_error(capfd, "wider.pt", "do not match", "shape")
    assert builds == ["meta"]


# --------------------------------------------------------------------------- oblique input


def rotation_y(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def column_phantom(direction: np.ndarray, shape=(40, 40, 40), spacing=1.5) -> Volume:
    """A body with a vertical bone column (radius 12 mm along physical z), sampled on a grid with
    the given direction cosines, centred on the physical origin."""
    z, y, x = np.indices(shape, dtype=float)
    idx = np.stack([x, y, z]).reshape(3, -1) * spacing
    centre = (np.array(shape[::-1], float) - 1) / 2 * spacing
    origin = -direction @ centre
    px, py, _ = (direction @ idx) + origin[:, None]
    body = (px / 26.0) ** 2 + (py / 22.0) ** 2 < 1
    bone = px**2 + (py - 4.0) ** 2 < 12.0**2
    hu = np.where(body, 40.0, -1000.0) + np.where(bone, 660.0, 0.0)
    return Volume(hu.reshape(shape).astype(np.int16), (spacing,) * 3, tuple(origin),
                  tuple(direction.ravel()))


def round_disk_detector(model, hu, config=None, device="cpu", spacing_z=0.0, boxes=None):
    """Stand-in network that, like the real one, knows the column only as its axial cross-section:
    bone is marked in a slice only where it forms a round disk (a tilted cut is an ellipse)."""
    out = np.zeros(hu.shape, dtype=np.float16)
    for k, plane in enumerate(np.asarray(hu)):
        bone = plane > 300
        if bone.sum() < 20:
            continue
        ys, xs = np.nonzero(bone)
        eig = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(float)))
        if np.sqrt(eig[1] / eig[0]) < 1.08:
            out[k][bone] = 1.0
    return out


def test_strongly_oblique_scan_is_segmented_on_an_axis_aligned_grid(tmp_path, monkeypatch,
                                                                    caplog):
    model = load_segmentation_model(tiny_model(tmp_path / "m.pt", spacing_xy=(1.5, 1.5)))
    monkeypatch.setattr(pipeline_mod, "predict_probabilities", round_disk_detector)
    axial = segment(column_phantom(np.eye(3)), model, QUIET)
    assert axial.mask.array.sum() > 1000  # the stand-in finds the column in axial slices

    vol = column_phantom(rotation_y(60))
    with caplog.at_level(logging.WARNING):
        res = segment(vol, model, QUIET)
    assert res.mask.same_grid(vol) and res.mask.array.dtype == np.uint8
    bone = np.asarray(vol.array) > 300
    found = res.mask.array.astype(bool)
    assert found.sum() > 0.5 * bone.sum()  # most of the column, not an empty mask
    assert (found & bone).sum() > 0.9 * found.sum()  # and in the right place
    assert res.stats["processing_grid"]["axis_aligned_resample"] is True
    assert res.stats["input"]["obliquity_deg"] == pytest.approx(30.0, abs=0.01)
    assert not [r for r in caplog.records if "no spine found" in r.getMessage()]


def test_oblique_mask_maps_back_exactly_onto_the_input_grid(tmp_path, monkeypatch):
    """With an orientation-blind stand-in (bone = HU above 300) the mask is the input's bone,
    wherever the resampling round trip puts it."""
    model = load_segmentation_model(tiny_model(tmp_path / "m.pt", spacing_xy=(1.5, 1.5)))
    monkeypatch.setattr(pipeline_mod, "predict_probabilities",
                        lambda m, hu, *a, **k: (np.asarray(hu) > 300).astype(np.float16))
    cfg = SegmentConfig(predict=PredictConfig(progress=False), mesh=None,
                        keep_probabilities=True)
    for degrees in (55, 60, 120):
        vol = column_phantom(rotation_y(degrees))
        res = segment(vol, model, cfg)
        bone = np.asarray(vol.array) > 300
        found = res.mask.array.astype(bool)
        dice = 2 * (found & bone).sum() / (found.sum() + bone.sum())
        assert dice > 0.9, (degrees, dice)
        assert res.probabilities is not None and res.probabilities.same_grid(vol)


def test_mildly_oblique_scan_keeps_the_exact_path(tiny_model_file):
    vol = column_phantom(rotation_y(5))
    res = segment(vol, tiny_model_file, QUIET)
    assert res.stats["processing_grid"]["axis_aligned_resample"] is False
    assert res.mask.same_grid(vol)


def test_oblique_scan_through_the_cli(tiny_model_file, tmp_path, capfd):
    src = write_image(column_phantom(rotation_y(60), shape=(16, 24, 24), spacing=2.0),
                      tmp_path / "oblique.nii.gz")
    out = tmp_path / "out"
    assert main(segment_argv(src, out, "--model", str(tiny_model_file))) == 0
    mask = read_image(out / "spine.nii.gz")
    assert mask.same_grid(read_image(src))
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["processing_grid"]["axis_aligned_resample"] is True


def test_empty_mask_warns_no_spine_and_no_mesh(tmp_path, ct_file, capfd, cli_logging):
    never = tiny_model(tmp_path / "never.pt", threshold=0.999)  # its outputs are all ~0.55
    out = tmp_path / "out"
    rc = main(["segment", str(ct_file), "-o", str(out), "--model", str(never), "--quiet",
               "--no-preview", "--device", "cpu", "--mesh", "stl"])
    _, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 0, err
    assert sum("no spine found" in ln for ln in lines) == 1, lines
    assert sum(ln.startswith("WARNING: no mesh:") for ln in lines) == 1, lines
    assert len(lines) == 2 and all("ct.nii.gz" in ln for ln in lines), lines
    assert (out / "spine.nii.gz").is_file()


# --------------------------------------------------------------------------- memory


def test_working_set_beyond_memory_is_refused_before_allocating(tmp_path, capfd, monkeypatch):
    """122x101x12 voxels of 100 mm become 12200x10100x12 at the model's 1 mm."""
    model = tiny_model(tmp_path / "fine.pt", spacing_xy=(1.0, 1.0))
    src = write_image(ct_volume((12, 101, 122), spacing=(100.0, 100.0, 100.0)),
                      tmp_path / "coarse.nii.gz")

    def allocates(*args, **kwargs):
        raise AssertionError("resampled before the memory check")

    monkeypatch.setattr(pipeline_mod, "resample_spacing", allocates)
    monkeypatch.setattr(pipeline_mod, "available_memory", lambda: 16 * 2**30)
    out = tmp_path / "out"
    assert main(segment_argv(src, out, "--model", str(model))) == RESOURCE
    line = one_error(capfd, "coarse.nii.gz", "12200x10100x12", "GiB", "16.0 GiB available")
    assert "crop" in line
    assert not out.exists()
    with pytest.raises(ResourceError, match="GiB"):
        segment(src, model, SegmentConfig(predict=PredictConfig(progress=False), mesh=None,
                                          max_memory_bytes=2**34))


def test_memory_check_lets_ordinary_scans_through(tiny_model_file, ct_file, monkeypatch):
    monkeypatch.setattr(pipeline_mod, "available_memory", lambda: 2**30)
    res = segment(ct_file, tiny_model_file, QUIET)
    assert res.mask.array.shape == (8, 32, 32)
    with pytest.raises(ResourceError, match="batches of 8 slices"):
        segment(ct_file, tiny_model_file, SegmentConfig(
            predict=PredictConfig(progress=False), mesh=None, max_memory_bytes=10**6))


# --------------------------------------------------------------------------- segment options


@pytest.mark.parametrize("extra,needle", [
    (["--max-faces", "0"], "--max-faces must be at least 1"),
    (["--max-faces", "-5", "--mesh", "stl"], "--max-faces must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--shard", "2/2"], "invalid --shard '2/2'"),
    (["--shard", "0/0"], "invalid --shard '0/0'"),
    (["--shard", "1/2"], "single CT"),
    (["--precision", "float16", "--device", "cpu"], "--precision float16: float16 inference"),
])
def test_segment_options_checked_up_front(extra, needle, ct_file, tmp_path, capfd, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(model_file_mod, "load_segmentation_model", no_model)
    out = tmp_path / "out"
    assert main(segment_argv(ct_file, out, *extra)) == INPUT
    one_error(capfd, needle)
    assert not out.exists()


def test_empty_output_option_is_refused(ct_file, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(ct_file), "-o", "", "--quiet"])
    assert exc.value.code == 2
    assert "empty output folder" in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_threads_option_sets_torch_threads_for_inference_only(tiny_model_file, ct_file,
                                                             tmp_path, monkeypatch):
    seen: list[int] = []
    real = pipeline_mod.predict_probabilities

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "predict_probabilities", spy)
    before = torch.get_num_threads()
    segment(ct_file, tiny_model_file, SegmentConfig(predict=PredictConfig(progress=False),
                                                    mesh=None, threads=1))
    # Both network passes, the coarse one that locates the column and the fine one around it.
    assert seen == [1, 1] and torch.get_num_threads() == before
    assert main(segment_argv(ct_file, tmp_path / "out", "--model", str(tiny_model_file),
                             "--threads", "1")) == 0
    assert seen == [1, 1, 1, 1]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InputError, match="threads"):
            segment(ct_file, tiny_model_file, SegmentConfig(mesh=None, threads=bad))
    with pytest.raises(InputError, match="max_faces"):
        segment(ct_file, tiny_model_file, SegmentConfig(mesh=MeshConfig(max_faces=0)))


def test_precision_is_checked_before_reading_and_recorded(tiny_model_file, ct_file, tmp_path,
                                                          monkeypatch):
    def no_read(*args, **kwargs):
        raise AssertionError("the image was read before the precision was checked")

    monkeypatch.setattr(pipeline_mod, "read_image", no_read)
    with pytest.raises(InputError, match="precision must be one of"):
        segment(ct_file, tiny_model_file, SegmentConfig(
            mesh=None, predict=PredictConfig(progress=False, precision="int8")))
    monkeypatch.undo()
    for precision in ("float32", "bfloat16"):
        out = tmp_path / precision
        assert main(segment_argv(ct_file, out, "--model", str(tiny_model_file),
                                 "--precision", precision)) == 0
        stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
        assert stats["precision"] == precision
        assert stats["settings"]["precision"] == precision
