"""Training: artefacts, falling loss, exact resume, interruption, refusal to clobber, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.manifest import CaseEntry, Manifest, case_dir, sha256_file, write_manifest
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError, OutputError
from spineseg.training import trainer as trainer_mod
from spineseg.training.checkpoint import load_checkpoint
from spineseg.training.config import TrainConfig, read_train_config
from spineseg.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def write_tiny_dataset(root: Path, splits=("train", "train", "train", "val", "test"),
                       shape=(6, 40, 40), seed: int = 0) -> Path:
    """A prepared dataset in the documented DATASET format: a body ellipse (40 HU) with a bright
    vertebral-body disk (~540 HU) as the spine label on the middle slices."""
    rng = np.random.default_rng(seed)
    manifest = Manifest(preprocessing=Preprocessing().to_dict(), layout="synthetic")
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    for i, split in enumerate(splits):
        cid = f"case{i}"
        cy, cx = h * 0.6 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
        body = ((yy - h / 2) / (h * 0.45)) ** 2 + ((xx - w / 2) / (w * 0.45)) ** 2 < 1
        hu = np.repeat(np.where(body, 40.0, -1000.0)[None], z, axis=0)
        mask = np.zeros(shape, np.uint8)
        for k in range(1, z - 1):
            r = 4 + rng.uniform(0, 2)
            mask[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
        hu = hu + 500.0 * mask + rng.normal(0, 20, shape)
        d = case_dir(root, cid)
        d.mkdir(parents=True)
        np.save(d / "image.npy", hu.astype(np.int16))
        np.save(d / "mask.npy", mask)
        fg = [int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))]
        (d / "meta.json").write_text(json.dumps({"spacing": [1.0, 1.0, 2.5],
                                                 "foreground_slices": fg}), encoding="utf-8")
        manifest.cases[cid] = CaseEntry(
            split=split, kind="phantom", patient=cid, source="synthetic", shape=list(shape),
            spacing=[1.0, 1.0, 2.5], slices=z, fg_slices=len(fg),
            image_sha256=sha256_file(d / "image.npy"), mask_sha256=sha256_file(d / "mask.npy"))
        manifest.splits[split].append(cid)
    write_manifest(root, manifest)
    return root


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="unet",
                model_config={"base_width": 4, "depth": 2}, loss="dicebce", epochs=2,
                batch_size=4, lr=1e-2, patch_size=32, max_steps_per_epoch=4, device="cpu",
                augment=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "ds")


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_epochs_lower_the_loss_and_write_every_artefact(dataset, tmp_path) -> None:
    run = tmp_path / "run"
    result = train(tiny_config(dataset, run))
    assert result.epochs_completed == 2 and len(result.history) == 2
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    for name in ("config.json", "metrics.csv", "curves.png", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds"}
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_train_config(run) == tiny_config(dataset, run)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "unet"
    assert ckpt["model_config"]["base_width"] == 4
    assert ckpt["preprocessing"] == Preprocessing().to_dict()
    best = load_checkpoint(run / "best.pt")
    assert best["best_metric"] == max(r["val_dice"] for r in result.history)
    with pytest.raises(OutputError):
        train(tiny_config(dataset, run))  # never clobber a run without overwrite


def test_resume_is_exact(dataset, tmp_path) -> None:
    cfg = dict(model="msrunet", model_config={"base_width": 8, "depth": 2}, loss="dice",
               augment=True, max_steps_per_epoch=2)
    train(tiny_config(dataset, tmp_path / "once", epochs=4, **cfg))
    train(tiny_config(dataset, tmp_path / "twice", epochs=2, **cfg))
    half = load_checkpoint(tmp_path / "twice" / "last.pt")["state_dict"]
    resumed = train(tiny_config(dataset, tmp_path / "twice", epochs=4, **cfg), resume=True)
    assert resumed.epochs_completed == 4
    assert _same_weights(tmp_path / "once" / "last.pt", tmp_path / "twice" / "last.pt")
    final = load_checkpoint(tmp_path / "twice" / "last.pt")["state_dict"]
    assert not all(torch.equal(half[k], final[k]) for k in half)  # it did train further
    with pytest.raises(InputError, match="lr"):
        train(tiny_config(dataset, tmp_path / "twice", epochs=5, lr=0.5, **cfg), resume=True)


def test_cli_train_interrupt_then_resume_matches_one_go(dataset, tmp_path, monkeypatch,
                                                        capsys) -> None:
    run = tmp_path / "cli"

    def cli(out: Path) -> list[str]:
        return ["train", "--data", str(dataset), "--model", "unet", "--width", "4", "--depth",
                "2", "--loss", "bce", "-o", str(out), "--epochs", "3", "--batch-size", "4",
                "--patch", "32", "--max-steps-per-epoch", "3", "--device", "cpu", "--no-augment"]

    original = trainer_mod._Run._train_epoch
    calls = {"n": 0}

    def interrupted(self, net, epoch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what the CLI makes of SIGTERM
        return original(self, net, epoch)

    monkeypatch.setattr(trainer_mod._Run, "_train_epoch", interrupted)
    assert main(cli(run)) == 130
    assert "--resume" in capsys.readouterr().err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    monkeypatch.setattr(trainer_mod._Run, "_train_epoch", original)
    assert main(["train", "--resume", str(run)]) == 0
    assert "after 3 epoch(s)" in capsys.readouterr().out
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) == 3
    assert main(cli(tmp_path / "ref")) == 0
    assert _same_weights(run / "last.pt", tmp_path / "ref" / "last.pt")
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 3  # settings are the run's
    assert main(["train", "--data", str(dataset), "-o", str(run)]) == 4  # exists


def test_sigterm_saves_last_completed_epoch_and_exits_130(dataset, tmp_path) -> None:
    run = tmp_path / "sig"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spineseg.cli.main", "train", "--data", str(dataset), "-o",
         str(run), "--model", "unet", "--width", "4", "--depth", "2", "--epochs", "1000",
         "--batch-size", "4", "--patch", "32", "--max-steps-per-epoch", "2", "--device", "cpu",
         "--no-augment", "--patience", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)  # generous: CI machines may be loaded
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] >= 1
    assert len(list(csv.DictReader((run / "metrics.csv").open()))) >= ckpt["epoch"]


@pytest.mark.parametrize("name", ["dice", "bce", "focal", "dicebce"])
def test_every_loss_takes_one_logit_per_pixel(name) -> None:
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    loss = trainer_mod.make_loss(name)(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.grad.abs().sum() > 0
    perfect = trainer_mod.make_loss(name)(target * 40 - 20, target)
    assert perfect < loss  # a confident correct prediction scores better than noise


def test_early_stopping_when_validation_dice_stalls(dataset, tmp_path) -> None:
    result = train(tiny_config(dataset, tmp_path / "es", epochs=6, lr=1e-12, patience=1,
                               max_steps_per_epoch=1))
    assert result.stopped_early and result.epochs_completed == 2 and result.best_epoch == 1


def test_cli_train_then_evaluate_on_prepared_phantoms(tmp_path, capsys) -> None:
    """The real chain: phantoms -> prepare -> spineseg train -> spineseg evaluate."""
    from spineseg.data.phantom import PhantomConfig, generate_phantom, write_phantom_case
    from spineseg.data.prepare import PrepareConfig, prepare_dataset

    cfg = PhantomConfig(shape=(48, 48, 16), crop_prob=1.0)
    for i in range(4):
        write_phantom_case(generate_phantom(i, cfg), tmp_path / "src", f"ph{i}")
    prepare_dataset([tmp_path / "src"], tmp_path / "ds", PrepareConfig(val="1", test="1"))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "ds"), "--model", "msrunet", "--width", "8",
                 "--depth", "2", "--loss", "dicebce", "-o", str(run), "--epochs", "2",
                 "--batch-size", "4", "--patch", "32", "--max-steps-per-epoch", "2",
                 "--device", "cpu", "--seed", "3"]) == 0
    assert "after 2 epoch(s)" in capsys.readouterr().out
    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(run / "best.pt"), "--data", str(tmp_path / "ds"),
                 "-o", str(report), "--device", "cpu"]) == 0
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert summary["pooled"]["n_cases"] == 1 and summary["source"]["model"] == "msrunet"
    assert summary["pooled"]["n_slices"] == 16


def test_stop_event_interrupts_at_the_next_batch_even_if_an_interrupt_was_lost(
        dataset, tmp_path, monkeypatch) -> None:
    """The CLI's SIGTERM handler sets ``stop`` as well as raising; when the raise is swallowed
    (it landed in a finaliser), the trainer still stops at its next safe point."""
    stop = threading.Event()
    real_epoch = trainer_mod._Run._train_epoch

    def first_epoch_then_lost_signal(self, net, epoch):
        loss = real_epoch(self, net, epoch)
        if epoch == 0:
            stop.set()  # the signal arrived; its KeyboardInterrupt never surfaced
        return loss

    monkeypatch.setattr(trainer_mod._Run, "_train_epoch", first_epoch_then_lost_signal)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(dataset, tmp_path / "run", epochs=5), stop=stop)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("flag, expected", [([], 1.0), (["--no-acquisition-augment"], 0.0)])
def test_acquisition_augment_flag_switches_only_the_acquisition_transforms(tmp_path, monkeypatch,
                                                                           flag, expected):
    from spineseg.training import trainer as trainer_module

    data = write_tiny_dataset(tmp_path / "ds")
    seen: list[dict[str, float]] = []
    original = trainer_module.train_transforms

    def spy(cfg):
        seen.append({"fov": cfg.prob_field_of_view, "thick": cfg.prob_slice_thickness,
                     "vessels": cfg.prob_contrast_vessels, "noise": cfg.prob_correlated_noise})
        return original(cfg)

    monkeypatch.setattr(trainer_module, "train_transforms", spy)
    rc = main(["train", "--data", str(data), "-o", str(tmp_path / "run"), "--model", "unet",
               "--width", "4", "--depth", "2", "--epochs", "1", "--batch-size", "2",
               "--patch", "32", "--max-steps-per-epoch", "1", "--device", "cpu", *flag])
    assert rc == 0
    (cfg,) = seen
    assert (cfg["fov"] > 0, cfg["thick"] > 0, cfg["vessels"] > 0) == (bool(expected),) * 3
    assert cfg["noise"] > 0  # the rest of the augmentation is untouched
    stored = read_train_config(tmp_path / "run")
    assert stored.acquisition_augment is bool(expected)


def test_poly_schedule_decays_per_epoch_and_resumes_exactly(dataset, tmp_path,
                                                             monkeypatch) -> None:
    cfg = dict(schedule="poly", epochs=3, lr=1e-2, loss="bce")
    train(tiny_config(dataset, tmp_path / "ref", **cfg))
    rows = list(csv.DictReader((tmp_path / "ref" / "metrics.csv").open()))
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [1e-2 * (1 - e / 3) ** 0.9 for e in range(3)])
    original = trainer_mod._Run._train_epoch
    calls = {"n": 0}

    def interrupted(self, net, epoch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, net, epoch)

    monkeypatch.setattr(trainer_mod._Run, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(dataset, tmp_path / "cut", **cfg))
    monkeypatch.setattr(trainer_mod._Run, "_train_epoch", original)
    train(tiny_config(dataset, tmp_path / "cut", **cfg), resume=True)
    assert _same_weights(tmp_path / "ref" / "last.pt", tmp_path / "cut" / "last.pt")
    with pytest.raises(InputError, match="schedule"):
        tiny_config(dataset, tmp_path / "x", schedule="cosine")


def test_training_memory_format_is_nchw_on_cpu_and_nhwc_on_cuda_and_in_bfloat16() -> None:
    # float32 on a CPU keeps NCHW (which layout is faster depends on the host); CUDA's
    # mixed-precision kernels and oneDNN's bfloat16 ones want NHWC (docs/performance.md).
    assert trainer_mod.training_memory_format(torch.device("cpu")) is torch.contiguous_format
    assert trainer_mod.training_memory_format(torch.device("cuda")) is torch.channels_last
    assert trainer_mod.training_memory_format(torch.device("cpu"), "bfloat16") \
        is torch.channels_last


def test_autocast_dtype_per_device_and_precision() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trainer_mod.autocast_dtype(cpu, "float32", amp=True) is None  # amp is CUDA's
    assert trainer_mod.autocast_dtype(cpu, "bfloat16", amp=True) is torch.bfloat16
    assert trainer_mod.autocast_dtype(cuda, "float32", amp=True) is torch.float16
    assert trainer_mod.autocast_dtype(cuda, "float32", amp=False) is None
    assert trainer_mod.autocast_dtype(cuda, "bfloat16", amp=True) is torch.bfloat16
    with pytest.raises(InputError, match="precision"):
        TrainConfig(data="d", out="o", precision="float16")


def test_bfloat16_training_learns_in_float32_weights_and_resumes_exactly(
        dataset, tmp_path, monkeypatch) -> None:
    cfg = dict(model="msrunet", model_config={"base_width": 8, "depth": 2}, loss="dicebce",
               precision="bfloat16", epochs=3, max_steps_per_epoch=3)
    seen: list[torch.dtype] = []
    real_loss = trainer_mod.make_loss

    def spy_loss(name: str):
        fn = real_loss(name)

        def loss(logits, y):
            seen.append(logits.dtype)
            return fn(logits, y)
        return loss
    monkeypatch.setattr(trainer_mod, "make_loss", spy_loss)
    result = train(tiny_config(dataset, tmp_path / "once", **cfg))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert seen and set(seen) == {torch.float32}  # the loss sees float32 logits
    state = load_checkpoint(tmp_path / "once" / "last.pt")["state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    assert read_train_config(tmp_path / "once").precision == "bfloat16"
    train(tiny_config(dataset, tmp_path / "twice", **{**cfg, "epochs": 2}))
    train(tiny_config(dataset, tmp_path / "twice", **cfg), resume=True)
    assert _same_weights(tmp_path / "once" / "last.pt", tmp_path / "twice" / "last.pt")
    with pytest.raises(InputError, match="precision"):  # a resume may not change it
        train(tiny_config(dataset, tmp_path / "twice", **{**cfg, "epochs": 4,
                                                          "precision": "float32"}), resume=True)


def test_cli_train_precision_flag_reaches_the_config(dataset, tmp_path) -> None:
    run = tmp_path / "run"
    code = main(["train", "--data", str(dataset), "--model", "unet", "--width", "4", "--depth",
                 "2", "--patch", "32", "--batch-size", "4", "--epochs", "1",
                 "--max-steps-per-epoch", "1", "--device", "cpu", "--no-augment",
                 "--precision", "bfloat16", "-o", str(run)])
    assert code == 0
    assert read_train_config(run).precision == "bfloat16"
    assert TrainConfig.field_defaults()["precision"] == "float32"


@pytest.mark.skipif(trainer_mod.compile_unavailable() is not None,
                    reason=f"torch.compile: {trainer_mod.compile_unavailable()}")
def test_compiled_training_saves_eager_weights_that_match_eager_training(dataset, tmp_path):
    cfg = dict(model="unet", model_config={"base_width": 4, "depth": 2}, loss="dicebce",
               epochs=2, max_steps_per_epoch=2, augment=False)
    eager = train(tiny_config(dataset, tmp_path / "eager", **cfg))
    compiled = train(tiny_config(dataset, tmp_path / "compiled", **cfg, compile=True))
    assert read_train_config(tmp_path / "compiled").compile
    a = load_checkpoint(tmp_path / "eager" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "compiled" / "last.pt")["state_dict"]
    assert a.keys() == b.keys()  # no "_orig_mod." prefix: the file loads like any other
    for k in a:  # same updates up to kernel rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    assert compiled.history[-1]["train_loss"] == pytest.approx(eager.history[-1]["train_loss"],
                                                                rel=1e-3)


def test_compile_without_a_toolchain_is_refused_before_training(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "compile_unavailable", lambda: "no C++ compiler")
    with pytest.raises(InputError, match="--compile needs a C\\+\\+ toolchain: no C\\+\\+ compiler"):
        train(tiny_config(dataset, tmp_path / "run", model="unet",
                          model_config={"base_width": 4, "depth": 2}, compile=True))
    assert not (tmp_path / "run").exists()  # nothing written
