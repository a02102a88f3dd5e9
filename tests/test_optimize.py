"""Inference rewrites (BN folding, channels-last, skipping) must not change what is computed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError, ModelError
from spineseg.inference import predict
from spineseg.inference.model_file import SegmentationModel
from spineseg.inference.optimize import (
    configure_threads,
    fold_batchnorm,
    optimize_network,
    physical_cores,
)
from spineseg.inference.predict import PredictConfig, predict_probabilities, resolve_precision
from spineseg.io import read_image, reorient, resample_spacing
from spineseg.models import build_model


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _tiny(name: str = "msrunet", seed: int = 0, **cfg) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(build_model(name, base_width=8, depth=2, **cfg), seed)


@pytest.mark.parametrize("name", ["msrunet", "unet"])
def test_fold_batchnorm_removes_every_bn_and_keeps_the_output(name: str) -> None:
    model = _tiny(name)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model)
    assert n_bn > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # The original is untouched (a deep copy was folded).
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_leaves_bn_not_after_a_conv() -> None:
    # A BN that follows a ReLU is not the affine tail of a convolution and must survive.
    net = _randomise_bn(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)))
    folded = fold_batchnorm(net)
    assert isinstance(folded[2], nn.BatchNorm2d)


def test_fold_batchnorm_refuses_bn_without_running_stats() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    with pytest.raises(ModelError, match="running statistics"):
        fold_batchnorm(net)


def test_channels_last_and_folding_keep_the_output() -> None:
    model = _tiny()
    net = optimize_network(model)
    x = torch.randn(3, 1, 48, 32)
    with torch.inference_mode():
        ref = model(x)
        out = net(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out.contiguous(), ref, atol=1e-4, rtol=1e-4)


def test_training_mode_network_is_not_folded() -> None:
    model = _tiny().train()
    net = optimize_network(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_threads() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert 1 <= physical_cores() <= (torch.multiprocessing.cpu_count() or 1)
        with pytest.raises(ModelError):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


# float32 in both: these tests check the exact rewrites; reduced precision is tested on its own.
PLAIN = PredictConfig(progress=False, fold_batchnorm=False, channels_last=False, batch_size=4,
                      precision="float32")
FAST = PredictConfig(progress=False, batch_size=4, precision="float32")


def _clear_threshold(prob: np.ndarray) -> float:
    """Mid-point of the widest gap between stored levels in the upper decile.

    A random network's probabilities crowd around any threshold (a trained one's sit near 0
    and 1); a threshold no voxel lies within float16 rounding of keeps the comparison exact.
    """
    levels = np.unique(prob[(prob >= np.percentile(prob, 90)) & (prob <= np.percentile(prob, 99))])
    k = int(np.argmax(np.diff(levels)))
    assert levels[k + 1] - levels[k] > 3e-4  # wider than the 1e-4 tolerance plus rounding
    return float(levels[k] + levels[k + 1]) / 2


def _seg_model(spacing: float) -> SegmentationModel:
    return SegmentationModel(network=_tiny(seed=3), model_name="msrunet",
                             model_config={"depth": 2},
                             preprocessing=Preprocessing(spacing_xy=(spacing, spacing)))


@pytest.fixture(scope="module")
def real_slices(shared_data) -> np.ndarray:
    """Canonical, 2 mm in-plane slices of the real abdominal CT (16 of them)."""
    vol = reorient(read_image(shared_data / "ts_abdomen_3mm" / "ct.nii.gz"))
    vol = resample_spacing(vol, (2.0, 2.0, vol.spacing[2]))
    return np.ascontiguousarray(vol.array[40:56])


def test_optimised_prediction_equals_plain_on_real_slices(real_slices: np.ndarray) -> None:
    model = _seg_model(2.0)
    plain = predict_probabilities(model, real_slices, PLAIN).astype(np.float32)
    fast = predict_probabilities(model, real_slices, FAST).astype(np.float32)
    # float16 storage: 1e-4 plus one float16 ulp of the larger value.
    np.testing.assert_allclose(fast, plain, atol=1e-4 + 2**-11, rtol=0)
    thr = _clear_threshold(plain)
    assert 0 < (plain >= thr).mean() < 0.2  # the threshold splits the volume non-trivially
    np.testing.assert_array_equal(fast >= thr, plain >= thr)


def test_bfloat16_prediction_stays_close_to_float32(real_slices: np.ndarray) -> None:
    """bfloat16 keeps 8 bits of mantissa: probabilities move by a few thousandths, not more."""
    model = _seg_model(2.0)
    exact = predict_probabilities(model, real_slices, FAST).astype(np.float32)
    bf16 = predict_probabilities(model, real_slices, PredictConfig(
        progress=False, batch_size=4, precision="bfloat16")).astype(np.float32)
    diff = np.abs(bf16 - exact)
    assert diff.max() > 0  # it did compute in another precision
    assert diff.max() < 0.03 and diff.mean() < 3e-3


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict, "native_cpu_bfloat16", lambda: True)
    assert resolve_precision("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(predict, "native_cpu_bfloat16", lambda: False)
    assert resolve_precision("auto", "cpu") == torch.float32  # emulated bfloat16 is slower
    assert resolve_precision("auto", "cuda") == torch.float16
    assert resolve_precision("float32", "cuda") == torch.float32
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(InputError, match="CUDA"):
        resolve_precision("float16", "cpu")
    with pytest.raises(InputError, match="precision must be one of"):
        resolve_precision("int8", "cpu")


def test_skipping_boneless_slices_only_skips_slices_without_bone(
        real_slices: np.ndarray) -> None:
    model = _seg_model(2.0)
    hu = real_slices.copy()
    hu[:3] = np.minimum(hu[:3], 40)  # three slices without any bone
    skipped = predict_probabilities(
        model, hu, PredictConfig(progress=False, skip_boneless_slices=True, batch_size=4,
                                 precision="float32"))
    full = predict_probabilities(model, hu, FAST)
    assert not skipped[:3].any()
    np.testing.assert_array_equal(skipped[3:], full[3:])


def test_pipeline_mask_identical_with_and_without_rewrites(shared_data) -> None:
    """End to end on a real noisy volume (verse012): the optimised pipeline's mask is the same."""
    from dataclasses import replace

    from spineseg.inference.pipeline import SegmentConfig, segment

    vol = read_image(shared_data / "verse012" / "ct.nii.gz")
    model = _seg_model(1.0)
    base = SegmentConfig(mesh=None, keep_probabilities=True)
    probe = segment(vol, model, replace(base, predict=PLAIN))
    model.threshold = _clear_threshold(probe.probabilities.array.astype(np.float16))
    plain = segment(vol, model, replace(base, predict=PLAIN))
    fast = segment(vol, model, replace(base, predict=FAST))
    assert plain.mask.array.any()
    np.testing.assert_array_equal(fast.mask.array, plain.mask.array)
