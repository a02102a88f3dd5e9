"""Fine-tuning from a checkpoint or model file, and case-balanced sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.dataset import SliceDataset
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import DataError, InputError, ModelError
from spineseg.inference.model_file import load_segmentation_model, save_segmentation_model
from spineseg.training.checkpoint import load_checkpoint, load_initial_weights
from spineseg.training.trainer import train
from test_train import tiny_config, write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # Cases of very different length: 3 train cases of 6 slices and one of 24.
    root = tmp_path_factory.mktemp("ft") / "ds"
    write_tiny_dataset(root, splits=("train", "train", "train", "val"))
    long_root = write_tiny_dataset(tmp_path_factory.mktemp("ft_long") / "ds",
                                   splits=("train",), shape=(24, 40, 40), seed=3)
    # Graft the long case into the first dataset as case9 (manifest + arrays).
    import shutil

    from spineseg.data.manifest import case_dir, read_manifest, write_manifest
    shutil.copytree(case_dir(long_root, "case0"), case_dir(root, "case9"))
    m, long_m = read_manifest(root), read_manifest(long_root)
    m.cases["case9"] = long_m.cases["case0"]
    m.cases["case9"].patient = "case9"
    m.splits["train"].append("case9")
    write_manifest(root, m)
    return root


def test_case_balanced_weights_give_every_case_equal_mass(dataset) -> None:
    ds = SliceDataset(dataset, "train", patch_size=(32, 32))
    w = ds.case_balanced_weights().numpy()
    assert len(w) == len(ds) == 3 * 6 + 24
    per_case = np.bincount(ds._index[:, 0], weights=w)
    np.testing.assert_allclose(per_case, 1.0)
    # Drawn through the trainer's sampler, the long case gets ~1/4 of samples, not 24/42.
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(ds.case_balanced_weights(), 4000, replacement=True, generator=gen)
    long_share = float((ds._index[draws.numpy(), 0] == ds.cases.index("case9")).mean())
    assert 0.21 < long_share < 0.29


def test_patient_weights_scale_a_patients_share(dataset) -> None:
    ds = SliceDataset(dataset, "train", patch_size=(32, 32))
    w = ds.case_balanced_weights({"case9": 3.0}).numpy()
    per_case = np.bincount(ds._index[:, 0], weights=w)
    expected = [3.0 if c == "case9" else 1.0 for c in ds.cases]
    np.testing.assert_allclose(per_case, expected)  # 3 of 6 units of mass: half the draws
    with pytest.raises(DataError, match="no train case of patient"):
        ds.case_balanced_weights({"nobody": 2.0})


def test_cli_patient_weight_is_stored_and_checked(dataset, tmp_path, capsys) -> None:
    base = ["train", "--data", str(dataset), "--epochs", "1", "--batch-size", "4", "--patch",
            "32", "--max-steps-per-epoch", "2", "--device", "cpu", "--no-augment",
            "--model", "unet", "--width", "4", "--depth", "2"]
    code = main([*base, "-o", str(tmp_path / "w"), "--sampling", "case",
                 "--patient-weight", "case9=3"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "w" / "config.json").read_text(encoding="utf-8"))
    assert cfg["patient_weights"] == {"case9": 3.0}
    for extra, needle in ((["--sampling", "case", "--patient-weight", "case9"], "PATIENT=W"),
                          (["--sampling", "case", "--patient-weight", "case9=-1"], "PATIENT=W"),
                          (["--patient-weight", "case9=2"], "--sampling case"),
                          (["--sampling", "case", "--patient-weight", "nobody=2"],
                           "no train case of patient")):
        capsys.readouterr()
        code = main([*base, "-o", str(tmp_path / "bad"), *extra])
        err = capsys.readouterr().err
        assert code != 0 and needle in err and "Traceback" not in err, err


def test_training_with_case_sampling_runs_and_is_reproducible(dataset, tmp_path) -> None:
    a = train(tiny_config(dataset, tmp_path / "a", sampling="case", epochs=1))
    b = train(tiny_config(dataset, tmp_path / "b", sampling="case", epochs=1))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    c = train(tiny_config(dataset, tmp_path / "c", sampling="slice", epochs=1))
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]  # a different sample stream
    with pytest.raises(InputError, match="sampling"):
        tiny_config(dataset, tmp_path / "d", sampling="patient")


def test_init_weights_from_a_checkpoint_and_from_an_fp16_model_file(dataset, tmp_path) -> None:
    train(tiny_config(dataset, tmp_path / "base", epochs=1))
    base = load_checkpoint(tmp_path / "base" / "last.pt")
    names = [n for n, _ in torch.nn.Module.named_parameters(_net(base))]
    # lr ~ 0: Adam moves each weight by at most ~lr, so the start point is visible in the result.
    train(tiny_config(dataset, tmp_path / "ft", epochs=1, lr=1e-12,
                      init_weights=str(tmp_path / "base" / "last.pt")))
    ft = load_checkpoint(tmp_path / "ft" / "last.pt")["state_dict"]
    for k in names:
        torch.testing.assert_close(ft[k], base["state_dict"][k], atol=1e-9, rtol=0)
    # Without --init-weights the same run starts elsewhere.
    train(tiny_config(dataset, tmp_path / "scratch", epochs=1, lr=1e-12, seed=7))
    scratch = load_checkpoint(tmp_path / "scratch" / "last.pt")["state_dict"]
    assert not all(torch.allclose(scratch[k], base["state_dict"][k]) for k in names)

    # A deployable fp16 model file seeds a run too, in float32.
    model_file = tmp_path / "model.pt"
    save_segmentation_model(model_file, model_name="unet", model_config=base["model_config"],
                            state_dict=base["state_dict"], preprocessing=Preprocessing(),
                            half=True)
    name, config, state, _ = load_initial_weights(model_file)
    assert name == "unet" and config == base["model_config"]
    assert all(v.dtype != torch.float16 for v in state.values())
    train(tiny_config(dataset, tmp_path / "ft16", epochs=1, lr=1e-12,
                      init_weights=str(model_file)))
    ft16 = load_checkpoint(tmp_path / "ft16" / "last.pt")["state_dict"]
    for k in names:
        torch.testing.assert_close(ft16[k], base["state_dict"][k], atol=2e-3, rtol=2e-3)


def _net(ckpt: dict) -> torch.nn.Module:
    from spineseg.models import build_model
    return build_model(ckpt["model_name"], **ckpt["model_config"])


def test_init_weights_refuses_another_architecture_and_bad_files(dataset, tmp_path) -> None:
    train(tiny_config(dataset, tmp_path / "base", epochs=1))
    init = str(tmp_path / "base" / "last.pt")
    with pytest.raises(InputError, match="matching"):
        train(tiny_config(dataset, tmp_path / "wide", model_config={"base_width": 8, "depth": 2},
                          init_weights=init))
    with pytest.raises(ModelError, match="not found"):
        train(tiny_config(dataset, tmp_path / "x", init_weights=str(tmp_path / "missing.pt")))
    junk = tmp_path / "junk.pt"
    torch.save({"hello": torch.zeros(1)}, junk)
    with pytest.raises(ModelError, match="not a spineseg"):
        load_initial_weights(junk)


def test_cli_init_weights_takes_the_files_network(dataset, tmp_path, capsys) -> None:
    train(tiny_config(dataset, tmp_path / "base", epochs=1))
    code = main(["train", "--data", str(dataset), "-o", str(tmp_path / "ft"), "--epochs", "1",
                 "--batch-size", "4", "--patch", "32", "--max-steps-per-epoch", "2",
                 "--device", "cpu", "--no-augment", "--sampling", "case",
                 "--init-weights", str(tmp_path / "base" / "best.pt")])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text(encoding="utf-8"))
    assert cfg["model"] == "unet" and cfg["model_config"]["base_width"] == 4
    assert cfg["sampling"] == "case" and cfg["init_weights"].endswith("best.pt")
    capsys.readouterr()
    code = main(["train", "--data", str(dataset), "-o", str(tmp_path / "bad"), "--epochs", "1",
                 "--init-weights", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error:") and "Traceback" not in err


def test_cli_init_weights_shipped_fine_tunes_the_default_model(dataset, tmp_path, capsys) -> None:
    code = main(["train", "--data", str(dataset), "-o", str(tmp_path / "ft"), "--epochs", "1",
                 "--batch-size", "2", "--patch", "32", "--max-steps-per-epoch", "1",
                 "--device", "cpu", "--no-augment", "--lr", "1e-12", "--init-weights", "shipped"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text(encoding="utf-8"))
    assert cfg["init_weights"].endswith("spineseg-default.pt")
    shipped = load_segmentation_model(None)
    ckpt = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert cfg["model"] == shipped.model_name and ckpt["model_config"] == shipped.model_config
    # Input channels are left to the run's slice context, which is the file's by default...
    assert cfg["model_config"] == {k: v for k, v in shipped.model_config.items()
                                   if k != "in_channels"}
    assert cfg["context_slices"] == shipped.preprocessing.context_slices
    assert cfg["context_mm"] == shipped.preprocessing.context_mm
    ft = ckpt["state_dict"]
    for k, v in shipped.network.named_parameters():
        torch.testing.assert_close(ft[k], v.detach(), atol=1e-6, rtol=0)
