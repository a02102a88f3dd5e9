"""Test-time mirroring (``PredictConfig.mirror`` / ``segment --tta``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.preprocess import Preprocessing
from spineseg.inference.model_file import load_segmentation_model, save_segmentation_model
from spineseg.inference.predict import PredictConfig, predict_probabilities
from spineseg.io import Volume, write_image
from spineseg.models import build_model


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2)
    with torch.no_grad():  # a random head gives nearly constant output; widen its logit range
        net.head.weight.mul_(100.0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(), preprocessing=Preprocessing())
    return path


@pytest.fixture(scope="module")
def tiny(tiny_file):
    return load_segmentation_model(tiny_file)


@pytest.fixture(scope="module")
def hu():
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 300, (3, 32, 48)).astype(np.float32)
    vol[:, 10:20, 5:15] += 900  # an off-centre bright block: the scene is not symmetric
    return vol


def _predict(model, hu, mirror):
    # No body crop and a width divisible by the network's divisor: padding is symmetric.
    cfg = PredictConfig(progress=False, crop_to_body=False, mirror=mirror)
    return predict_probabilities(model, hu, cfg).astype(np.float32)


def test_mirror_is_the_mean_of_both_orientations(tiny, hu):
    plain = _predict(tiny, hu, False)
    flipped_back = _predict(tiny, hu[..., ::-1].copy(), False)[..., ::-1]
    np.testing.assert_allclose(_predict(tiny, hu, True), 0.5 * (plain + flipped_back), atol=2e-3)


def test_mirror_makes_the_output_left_right_equivariant(tiny, hu):
    mirrored_scan = hu[..., ::-1].copy()
    # A random network is not equivariant on its own, so this test can fail...
    assert np.abs(_predict(tiny, mirrored_scan, False)[..., ::-1]
                  - _predict(tiny, hu, False)).max() > 1e-2
    # ...and mirroring makes it so.
    np.testing.assert_allclose(_predict(tiny, mirrored_scan, True)[..., ::-1],
                               _predict(tiny, hu, True), atol=2e-3)


def test_cli_tta_is_recorded(tmp_path, tiny_file, hu):
    vol = Volume(np.clip(hu, -1024, 3071).astype(np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                 (1, 0, 0, 0, 1, 0, 0, 0, 1))
    src = write_image(vol, tmp_path / "ct.nii.gz")
    for flag, out in ((["--tta"], "a"), ([], "b")):
        rc = main(["segment", str(src), "-o", str(tmp_path / out), "--model", str(tiny_file),
                   "--quiet", "--mesh", "none", "--no-preview", "--device", "cpu", *flag])
        assert rc == 0
        stats = json.loads((tmp_path / out / "stats.json").read_text())
        assert stats["test_time_mirroring"] is bool(flag)
