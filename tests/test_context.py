"""2.5-D input: through-plane context channels, widening 2-D weights, and the 2.5-D model end to
end (dataset, training, model file, segmentation in any voxel order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.dataset import SliceDataset
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError
from spineseg.inference.model_file import load_segmentation_model, save_segmentation_model
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.predict import PredictConfig, predict_probabilities
from spineseg.io import Volume, reorient
from spineseg.models import build_model
from spineseg.models.widen import widen_input_channels
from spineseg.training.checkpoint import load_checkpoint
from spineseg.training.trainer import train
from test_train import tiny_config, write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("ctx") / "ds")


def _ramp(z: int = 10, h: int = 4, w: int = 5) -> np.ndarray:
    """A volume whose value is 100 × slice index: interpolation is exact and easy to check."""
    return np.broadcast_to(100.0 * np.arange(z)[:, None, None], (z, h, w)).astype(np.float32)


def test_2d_input_is_the_normalised_slice() -> None:
    pre = Preprocessing()
    hu = _ramp()
    out = pre.network_input(hu, slice(2, 5), spacing_z=0.0)
    assert out.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(out[:, 0], pre.normalize(hu[2:5]))


def test_context_planes_sit_at_millimetre_offsets_interpolated_and_clamped() -> None:
    pre = Preprocessing(context_slices=1, context_mm=3.0)
    hu = _ramp()
    # 2 mm slices: ±3 mm is ±1.5 slices, i.e. halfway between two slices.
    out = pre.network_input(hu, [0, 4, 9], spacing_z=2.0)
    assert out.shape == (3, 3, 4, 5)
    expected_hu = np.array([[0, 0, 150], [250, 400, 550], [750, 900, 900]], np.float32)
    np.testing.assert_allclose(out[:, :, 0, 0], pre.normalize(expected_hu), atol=1e-6)
    # The same anatomy scanned at 1 mm and at 3 mm gives the network the same context.
    fine = _ramp(z=31)  # slice k at k mm; value = 100 k
    coarse = fine[::3]  # slice j at 3j mm
    a = pre.network_input(fine, [15], spacing_z=1.0)
    b = pre.network_input(coarse, [5], spacing_z=3.0)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_context_round_trips_and_2d_dicts_stay_unchanged() -> None:
    assert "context_slices" not in Preprocessing().to_dict()
    pre = Preprocessing(context_slices=2, context_mm=2.5)
    assert Preprocessing.from_dict(pre.to_dict()) == pre and pre.channels == 5
    old = {"spacing_xy": [1.0, 1.0], "hu_min": -1000.0, "hu_max": 2000.0}
    assert Preprocessing.from_dict(old).channels == 1
    with pytest.raises(InputError):
        Preprocessing(context_slices=-1)


def test_widened_weights_compute_what_the_2d_network_did() -> None:
    torch.manual_seed(0)
    flat = build_model("msrunet", base_width=8, depth=2).eval()
    wide = build_model("msrunet", base_width=8, depth=2, in_channels=3).eval()
    wide.load_state_dict(widen_input_channels(flat.state_dict(), wide.state_dict(), centre=1))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), flat(x[:, 1:2]), atol=1e-5, rtol=1e-5)
    # The context kernels start at zero but are trainable: they receive a gradient.
    wide.train()
    wide(x).sum().backward()
    grads = [p.grad for n, p in wide.named_parameters()
             if p.ndim == 4 and p.shape[1] == 3]
    assert grads and all(g is not None and g[:, [0, 2]].abs().sum() > 0 for g in grads)


def test_25d_network_shape_gradients_and_overfit() -> None:
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2, in_channels=3)
    x = torch.randn(4, 3, 32, 32)
    target = (torch.rand(4, 1, 32, 32) > 0.5).float()
    assert net(x).shape == (4, 1, 32, 32)
    torch.nn.functional.binary_cross_entropy_with_logits(net(x), target).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient"
    # Tiny overfit where the label is visible in a context channel only, never in the slice.
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2, in_channels=3)
    x = torch.randn(2, 3, 32, 32) * 0.1
    y = torch.zeros(2, 1, 32, 32)
    y[0, :, 8:24, 8:24] = 1
    x[0, 0, 8:24, 8:24] += 1.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.25 * losses[0]


def test_dataset_serves_context_channels_and_one_label(dataset) -> None:
    pre = Preprocessing(context_slices=1, context_mm=2.5)
    ds = SliceDataset(dataset, "train", patch_size=(32, 32), preprocessing=pre)
    s = ds[3]
    assert s["image"].shape == (3, 32, 32) and s["label"].shape == (1, 32, 32)
    whole = ds.case_slices(ds.cases[0])
    assert whole["image"].shape[:2] == (6, 3) and whole["label"].shape[:2] == (6, 1)
    # 2.5 mm slices, 2.5 mm context: channel 0 of slice z is slice z-1 exactly.
    torch.testing.assert_close(whole["image"][3, 0], whole["image"][2, 1])


def test_25d_run_from_2d_weights_writes_a_25d_model_that_segments(dataset, tmp_path) -> None:
    flat = train(tiny_config(dataset, tmp_path / "flat", model="msrunet", epochs=1,
                             model_config={"base_width": 8, "depth": 2}))
    cfg = tiny_config(dataset, tmp_path / "wide", model="msrunet", epochs=1, lr=1e-12,
                      model_config={"base_width": 8, "depth": 2},
                      context_slices=1, context_mm=2.5,
                      init_weights=str(tmp_path / "flat" / "last.pt"))
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "wide" / "last.pt")
    assert ckpt["model_config"]["in_channels"] == 3
    assert Preprocessing.from_dict(ckpt["preprocessing"]).context_slices == 1
    w2, w3 = (load_checkpoint(p)["state_dict"] for p in (flat.last_checkpoint, tmp_path / "wide"
                                                          / "last.pt"))
    key = next(k for k, v in w3.items() if v.ndim == 4 and v.shape[1] == 3)
    torch.testing.assert_close(w3[key][:, 1], w2[key][:, 0], atol=1e-6, rtol=0)
    # A 2.5-D model needs the slice spacing; the pipeline passes it, a bare call must not omit it.
    model = load_segmentation_model(tmp_path / "wide" / "last.pt")
    assert model.min_input == cfg.patch_size  # a checkpoint runs on at least its patch
    hu = np.full((6, 32, 32), 40.0, np.float32)
    with pytest.raises(InputError, match="slice spacing"):
        predict_probabilities(model, hu, PredictConfig(progress=False))
    assert predict_probabilities(model, hu, PredictConfig(progress=False),
                                 spacing_z=2.5).shape == hu.shape


def test_cli_context_flags_reach_the_run(dataset, tmp_path, capsys) -> None:
    code = main(["train", "--data", str(dataset), "-o", str(tmp_path / "r"), "--model", "unet",
                 "--width", "4", "--depth", "2", "--epochs", "1", "--batch-size", "2",
                 "--patch", "32", "--max-steps-per-epoch", "1", "--device", "cpu",
                 "--no-augment", "--context-slices", "2", "--context-mm", "2"])
    assert code == 0, capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ckpt["model_config"]["in_channels"] == 5
    assert Preprocessing.from_dict(ckpt["preprocessing"]).context_mm == 2.0
    capsys.readouterr()
    code = main(["train", "--data", str(dataset), "-o", str(tmp_path / "bad"), "--epochs", "1",
                 "--context-slices", "-1"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error:") and "Traceback" not in err


def test_25d_segmentation_is_the_same_in_any_voxel_order(tmp_path) -> None:
    """The context runs along the patient's superior axis whatever the storage order."""
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2, in_channels=3)
    path = tmp_path / "ctx.pt"
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(),
                            preprocessing=Preprocessing(spacing_xy=(2.0, 2.0), context_slices=1))
    model = load_segmentation_model(path)
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 300, (12, 40, 40)).astype(np.float32)
    arr[:, 15:25, 15:25] += 800 * np.linspace(0, 1, 12)[:, None, None]
    vol = Volume(arr, spacing=(2.0, 2.0, 2.5))
    cfg = SegmentConfig(mesh=None, keep_probabilities=True, predict=PredictConfig(progress=False))
    ref = segment(vol, model, cfg).probabilities
    other = segment(reorient(vol, "PIR"), model, cfg).probabilities
    assert ref is not None and other is not None
    back = reorient(other, "LPS")
    np.testing.assert_allclose(np.asarray(back.array), np.asarray(ref.array), atol=2e-3)
    # A superior-inferior flip is a different image to a 2.5-D model: the context is physical.
    flipped = Volume(arr[::-1].copy(), spacing=(2.0, 2.0, 2.5))
    assert not np.allclose(np.asarray(segment(flipped, model, cfg).probabilities.array)[::-1],
                           np.asarray(ref.array), atol=2e-3)
