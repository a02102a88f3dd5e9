"""Checkpoints hold only tensors and JSON-able data; anything else is refused on load."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from spineseg.errors import ModelError
from spineseg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    REQUIRED_KEYS,
    average_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _payload() -> dict:
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    lin(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    sched.step(1.0)
    payload = {k: None for k in REQUIRED_KEYS}
    payload.update(
        format=CHECKPOINT_FORMAT, model_name="toy", model_config={"depth": 2},
        preprocessing={"spacing_xy": [1.0, 1.0], "hu_min": -1000.0, "hu_max": 2000.0},
        state_dict=lin.state_dict(), train_config={"seed": 0}, epoch=1,
        best_metric=-float("inf"), best_epoch=0, optimizer=opt.state_dict(),
        scheduler=sched.state_dict(), rng=rng_state(), history=[{"epoch": 1, "val_dice": 0.5}],
        software_version="test",
    )
    return payload


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path) -> None:
    payload = _payload()
    path = save_checkpoint(tmp_path / "c.pt", payload)
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["weight"], payload["state_dict"]["weight"])
    assert loaded["optimizer"]["state"][0]["step"] == payload["optimizer"]["state"][0]["step"]
    assert loaded["scheduler"]["best"] == 1.0
    set_rng_state(loaded["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


class _Innocent:
    pass


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


@pytest.mark.parametrize("evil", [_Innocent(), _Payload()], ids=["object", "os.system"])
def test_non_tensor_pickles_are_refused(tmp_path, monkeypatch, evil) -> None:
    monkeypatch.chdir(tmp_path)
    payload = _payload()
    payload["history"] = [evil]
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError, match="refusing to load"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    with pytest.raises(ModelError, match="non-tensor"):
        save_checkpoint(tmp_path / "never.pt", payload)
    assert not (tmp_path / "never.pt").exists()


def test_wrong_or_missing_files_are_model_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "weights_only.pt")
    with pytest.raises(ModelError, match="missing"):
        load_checkpoint(tmp_path / "weights_only.pt")
    payload = _payload()
    del payload["optimizer"]
    with pytest.raises(ModelError, match="lacks optimizer"):
        save_checkpoint(tmp_path / "partial.pt", payload)


def test_average_checkpoints_means_weights_and_refuses_mismatches(tmp_path) -> None:
    paths = []
    for epoch in (1, 2, 3):
        payload = _payload()
        payload["epoch"] = epoch
        payload["state_dict"]["step"] = torch.tensor(epoch)  # an integer buffer
        paths.append(save_checkpoint(tmp_path / f"e{epoch}.pt", payload))
    states = [load_checkpoint(p)["state_dict"] for p in paths]
    avg = average_checkpoints(paths)
    for k in ("weight", "bias"):
        torch.testing.assert_close(avg["state_dict"][k], sum(s[k] for s in states) / 3)
        assert not torch.equal(avg["state_dict"][k], states[-1][k])
    assert avg["state_dict"]["step"].item() == 3 and avg["averaged_epochs"] == [1, 2, 3]
    assert avg["epoch"] == 3
    other = _payload()
    other["model_config"] = {"depth": 3}
    with pytest.raises(ModelError, match="model_config differs"):
        average_checkpoints([save_checkpoint(tmp_path / "o.pt", other), paths[0]])
    with pytest.raises(ModelError, match="no checkpoints"):
        average_checkpoints([])
