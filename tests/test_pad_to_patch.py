"""The network runs on no less than its training patch: a narrow crop is read inside air padding,
as in training, in the product pipeline, in evaluation and in the trainer's validation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spineseg.data.preprocess import Preprocessing
from spineseg.evaluation.evaluate import iter_slice_logits
from spineseg.inference.model_file import (
    SegmentationModel,
    load_segmentation_model,
    save_segmentation_model,
)
from spineseg.inference.predict import PredictConfig, predict_probabilities
from spineseg.models import build_model
from spineseg.models.padding import pad_to_multiple, split_padding, training_patch_size


class ContextNet(nn.Module):
    """Logit = slice minus its own mean: the answer depends on how much air surrounds the
    anatomy, like a network with global pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * (x - x.mean(dim=(-2, -1), keepdim=True))


def _recording(net: nn.Module) -> list[tuple[int, ...]]:
    """Every input shape ``net`` (or the copy inference makes of it) is given."""
    shapes: list[tuple[int, ...]] = []
    net.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    return shapes


def _model(min_input: int) -> SegmentationModel:
    return SegmentationModel(network=ContextNet(), model_name="context",
                             model_config={"depth": 4},
                             preprocessing=Preprocessing(spacing_xy=(1.0, 1.0)), source="test",
                             min_input=min_input)


def _crop(z: int = 3, h: int = 30, w: int = 41) -> np.ndarray:
    """A spine-protocol crop: soft tissue everywhere (no air in the field of view), a bright
    disc of bone in the middle."""
    hu = np.full((z, h, w), 40, dtype=np.int16)
    yy, xx = np.mgrid[:h, :w]
    hu[:, (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < 36] = 700
    return hu


def test_split_padding_reaches_the_patch_and_stays_centred() -> None:
    assert split_padding(50, 16, 128) == (39, 39)
    assert split_padding(51, 16, 128) == (38, 39)
    assert split_padding(130, 16, 128) == (7, 7)  # larger than the patch: the divisor only
    assert split_padding(112, 16) == (0, 0)
    x, (top, left) = pad_to_multiple(torch.zeros(1, 1, 30, 41), 16, -1.0, 64)
    assert x.shape[-2:] == (64, 64) and (top, left) == (17, 11)


def test_training_patch_size_from_a_record() -> None:
    assert training_patch_size({"patch_size": 192}) == 192
    for bad in (None, {}, {"patch_size": None}, {"patch_size": True}, {"patch_size": -4}):
        assert training_patch_size(bad) == 0


def test_predict_runs_a_narrow_crop_inside_the_patch() -> None:
    hu = _crop()
    model = _model(64)
    shapes = _recording(model.network)
    prob = predict_probabilities(model, hu, PredictConfig(progress=False, precision="float32"))
    assert shapes and all(s[-2] >= 64 and s[-1] >= 64 for s in shapes)
    # The same as the network on the crop placed, centred, in 64×64 of air by hand.
    top, left = split_padding(30, 16, 64)[0], split_padding(41, 16, 64)[0]
    padded = np.full((3, 64, 64), -1000, dtype=np.int16)
    padded[:, top:top + 30, left:left + 41] = hu
    by_hand = predict_probabilities(_model(0), padded,
                                    PredictConfig(progress=False, precision="float32",
                                                  crop_to_body=False))
    np.testing.assert_allclose(prob, by_hand[:, top:top + 30, left:left + 41], atol=1e-3)
    # Without the patch the crop's own mean is subtracted: the soft tissue is no longer
    # background-like, which is the failure the padding removes.
    small = _model(64)
    small_shapes = _recording(small.network)
    unpadded = predict_probabilities(small, hu, PredictConfig(progress=False, pad_to_patch=False,
                                                              precision="float32"))
    assert small_shapes and all(s[-2] < 64 for s in small_shapes)
    assert not np.allclose(unpadded, prob, atol=1e-2)


def test_evaluation_pads_whole_slices_to_the_patch() -> None:
    net = ContextNet()
    shapes = _recording(net)
    hu = _crop()
    pre = Preprocessing(spacing_xy=(1.0, 1.0))
    out = list(iter_slice_logits(net, hu, pre, divisor=16, min_size=64))
    assert [lg.shape[-2:] for _, lg in out] == [torch.Size([30, 41])]
    assert shapes == [(3, 1, 64, 64)]


def test_loaded_models_know_their_patch(tmp_path) -> None:
    assert load_segmentation_model().min_input == 192  # the shipped file's training patch
    for meta, expected in (({"train_config": {"patch_size": 96}}, 96), (None, 0)):
        path = tmp_path / f"m{expected}.pt"
        save_segmentation_model(path, model_name="unet", model_config={"base_width": 4,
                                                                       "depth": 2},
                                state_dict=build_model("unet", base_width=4, depth=2)
                                .state_dict(), preprocessing=Preprocessing(), meta=meta)
        assert load_segmentation_model(path).min_input == expected
