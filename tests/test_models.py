"""One harness for every registered network and every ablation config of the paper's network.

All at tiny widths (base_width 8, depth 2–3) so the file stays fast on two CPU cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.losses import DiceCELoss

from spineseg.data.preprocess import Preprocessing
from spineseg.errors import ModelError
from spineseg.models import (
    ABLATIONS,
    build_model,
    config_class,
    count_parameters,
    list_models,
    profile_model,
)

TINY: dict[str, Any] = {"base_width": 8, "depth": 2}

# (model name, config overrides): every registered model, then every ablation row.
CASES: list[tuple[str, dict[str, Any]]] = [(n, {}) for n in ["msrunet", "unet", "fcn", "segnet"]]
CASES += [("msrunet", cfg) for cfg in ABLATIONS.values()]
IDS = [n for n, _ in CASES[:4]] + [f"msrunet-{k}" for k in ABLATIONS]


def _build(name: str, overrides: dict[str, Any], **extra: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **{**TINY, **overrides, **extra})


def test_registry_lists_the_four_networks():
    assert list_models() == ["fcn", "msrunet", "segnet", "unet"]
    assert {n for n, _ in CASES} == set(list_models())


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
@pytest.mark.parametrize("out_channels", [1, 3])
def test_output_shape(name, overrides, out_channels):
    model = _build(name, overrides, out_channels=out_channels, depth=3)
    for h, w in [(32, 32), (64, 48)]:
        y = model(torch.randn(2, 1, h, w))
        assert y.shape == (2, out_channels, h, w)
        assert torch.isfinite(y).all()


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_every_parameter_gets_a_gradient(name, overrides):
    model = _build(name, overrides)
    x = torch.randn(4, 1, 32, 32)
    target = (torch.rand(4, 1, 32, 32) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), target)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_eval_mode_is_deterministic(name, overrides):
    model = _build(name, overrides).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_config_json_round_trip_rebuilds_the_same_model(name, overrides):
    model = _build(name, overrides)
    restored = json.loads(json.dumps(model.config.to_dict()))
    assert config_class(name).from_dict(restored) == model.config
    rebuilt = build_model(name, **restored)
    assert rebuilt.config == model.config
    assert count_parameters(rebuilt) == count_parameters(model)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.eval()
    model.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", ["msrunet", "unet", "fcn", "segnet"])
def test_sides_not_divisible_by_2_pow_depth_are_refused(name):
    model = build_model(name, base_width=8, depth=3)
    with pytest.raises(ModelError, match="divisible by 2\\*\\*depth = 8"):
        model(torch.randn(1, 1, 32, 36))
    with pytest.raises(ModelError, match="expected input"):
        model(torch.randn(1, 2, 32, 32))


def test_unknown_name_and_key_are_refused_with_the_valid_choices():
    with pytest.raises(ModelError, match="valid choices: fcn, msrunet, segnet, unet"):
        build_model("resnet")
    with pytest.raises(ModelError, match=r"unknown config key.*'widht'.*valid keys:.*base_width"):
        build_model("unet", widht=8)
    with pytest.raises(ModelError, match=r"unknown config key.*'unit'"):
        build_model("unet", unit="msres")  # msrunet's switch, not the plain U-Net's


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("msrunet", {"unit": "triple"}, "valid choices: double, double_res, msres"),
        ("msrunet", {"hierarchy": "resnet"}, "valid choices: paper, res2net"),
        ("msrunet", {"base_width": 12}, "divisible by reduction\\*scales=8"),
        ("msrunet", {"scales": 1}, "scales must be >= 2"),
        ("unet", {"depth": "4"}, "must be int"),
        ("unet", {"base_width": 0}, "base_width must be >= 1"),
        ("segnet", {"attention": True}, "unknown config key"),
        ("fcn", {"depth": 1}, "depth must be >= 2"),
    ],
)
def test_invalid_configs_are_refused(name, bad, message):
    with pytest.raises(ModelError, match=message):
        build_model(name, **bad)


def test_flops_scale_with_the_slice_area():
    # The plain U-Net is convolutions only, so doubling the side must quadruple its FLOPs
    # (msrunet adds a size-independent term: the attention MLP runs on pooled 1×1 descriptors).
    small = profile_model("unet", size=32, repeats=1, warmup=0, **TINY)
    large = profile_model("unet", size=64, repeats=1, warmup=0, **TINY)
    assert small.parameters == large.parameters
    assert large.gflops == pytest.approx(4 * small.gflops, rel=1e-6)
    assert small.latency_ms > 0


# --- tiny overfit on real CT ---------------------------------------------------------------


@pytest.fixture(scope="module")
def spine_batch(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Four axial 64×64 crops around the spine of the 3 mm abdominal CT, HU in [-1, 1]."""
    folder = shared_data / "ts_abdomen_3mm"
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    spine = sitk.ReadImage(str(folder / "spine.nii.gz"))
    assert ct.GetSize() == spine.GetSize() and ct.GetOrigin() == spine.GetOrigin()
    hu = sitk.GetArrayFromImage(ct)  # (z, y, x): array[z] is an axial slice
    mask = sitk.GetArrayFromImage(spine).astype(np.float32)
    rich = np.nonzero(mask.sum(axis=(1, 2)) >= 100)[0]
    zs = rich[np.linspace(0, len(rich) - 1, 4).round().astype(int)]
    images, masks = [], []
    for z in zs:
        cy, cx = (round(float(c)) for c in np.argwhere(mask[z]).mean(axis=0))
        y0 = min(max(cy - 32, 0), hu.shape[1] - 64)
        x0 = min(max(cx - 32, 0), hu.shape[2] - 64)
        images.append(hu[z, y0:y0 + 64, x0:x0 + 64])
        masks.append(mask[z, y0:y0 + 64, x0:x0 + 64])
    image = Preprocessing().normalize(np.stack(images))[:, None]
    target = np.stack(masks)[:, None]
    assert target.sum() > 400  # the crops really contain spine
    return torch.from_numpy(image), torch.from_numpy(target)


def _dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    pred = (logits > 0).float()
    return float(2 * (pred * target).sum() / (pred.sum() + target.sum()))


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "overrides"), CASES, ids=IDS)
def test_tiny_overfit_on_real_spine_slices(name, overrides, spine_batch):
    image, target = spine_batch
    model = _build(name, overrides, depth=3)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = DiceCELoss(sigmoid=True)
    start, dice, steps = time.perf_counter(), 0.0, 0
    for steps in range(1, 301):
        model.train()
        optimiser.zero_grad()
        loss = loss_fn(model(image), target)
        loss.backward()
        optimiser.step()
        if steps % 10 == 0:
            model.eval()
            with torch.inference_mode():
                dice = _dice(model(image), target)
            if dice > 0.9:
                break
    elapsed = time.perf_counter() - start
    assert dice > 0.9, f"{name} {overrides}: Dice {dice:.3f} after {steps} steps ({elapsed:.1f} s)"
