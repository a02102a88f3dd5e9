"""The training loop: ``train(TrainConfig) -> TrainResult``.

What a run folder holds after every completed epoch (only rank 0 writes):
``config.json``, ``metrics.csv`` (epoch, train_loss, val_loss, val_dice, lr, seconds),
``curves.png``, ``last.pt`` (resumable) and ``best.pt`` (best validation DSC so far).

Reproducibility and exact resume: the weights are initialised from ``seed``; every epoch reseeds
the global RNGs and the sampler from ``(seed, epoch)`` and the dataset draws each sample's crop and
augmentation from ``(seed, epoch, index)``. So an epoch computes the same thing whether the run got
there in one go or was stopped and resumed from ``last.pt`` (which also restores the optimiser,
the LR scheduler, the AMP scaler and the early-stopping counters). On CPU, 4 epochs equal 2 + 2
bit for bit; on GPU, cuDNN's non-deterministic kernels allow tiny differences.

Interruption (Ctrl-C, or SIGTERM which the CLI turns into ``KeyboardInterrupt``): ``last.pt`` is
written atomically at the end of every epoch, so after an interrupt it holds the last *completed*
epoch; the interrupted epoch's progress is discarded and recomputed identically on resume.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
import os
import random
import shutil
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from spineseg.data.augment import AugmentConfig, train_transforms
from spineseg.data.dataset import SliceDataset
from spineseg.data.manifest import case_dir, read_manifest
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import DataError, InputError, ModelError, OutputError, ResourceError
from spineseg.evaluation.evaluate import iter_slice_logits
from spineseg.evaluation.metrics import paper_dsc
from spineseg.io import check_output_path, write_text_atomic
from spineseg.models import build_model
from spineseg.models.widen import widen_input_channels
from spineseg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_initial_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
    software_version,
)
from spineseg.training.config import CONFIG_FILE, TrainConfig
from spineseg.training.curves import plot_curves
from spineseg.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    setup_distributed,
)

METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.png"
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
RUN_FILES: tuple[str, ...] = (CONFIG_FILE, METRICS_FILE, CURVES_FILE, LAST_FILE, BEST_FILE)
METRIC_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")


@dataclass(frozen=True)
class TrainResult:
    """How a run ended. ``epochs_completed`` counts all epochs of the run, resumed ones included."""

    run_dir: Path
    epochs_completed: int
    best_epoch: int
    best_val_dice: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST_FILE

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / LAST_FILE


def training_memory_format(device: torch.device,
                           precision: str = "float32") -> torch.memory_format:
    """The layout activations train in: channels_last on CUDA and in bfloat16 on a CPU.

    On CUDA NHWC is what cuDNN's mixed-precision kernels want; oneDNN's bfloat16 convolutions
    want it too (one update of the shipped network, batch 8, 160², one thread: 0.437 s NCHW,
    0.419 s NHWC, ``tools/bench_update_variants.py --grid precision``). In float32 on a CPU the
    faster layout depends on the machine (NCHW 1.17x faster on one 2-core host, NHWC 1.15x on
    another, docs/performance.md), so the trainer keeps contiguous NCHW there.
    """
    if device.type == "cuda" or precision == "bfloat16":
        return torch.channels_last
    return torch.contiguous_format


def autocast_dtype(device: torch.device, precision: str, amp: bool) -> torch.dtype | None:
    """The dtype forward and backward autocast to, or None for plain float32.

    bfloat16 needs no loss scaling (float32's exponent range); CUDA's float16 ``amp`` does.
    """
    if precision == "bfloat16":
        return torch.bfloat16
    if amp and device.type == "cuda":
        return torch.float16
    return None


def compile_unavailable() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels here, or None when it can.

    Inductor writes C++ and builds it against the Python headers at the first update; without a
    compiler or headers that fails deep inside the first epoch, so the trainer asks first.
    """
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "no C++ compiler (g++, c++, clang++ or $CXX) on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python development headers (Python.h)"
    return None


def make_loss(name: str) -> nn.Module:
    """The paper's three losses plus the Dice+BCE combination its authors suggest.

    All take one logit per pixel. Dice terms use ``batch=True`` (one Dice over the whole batch):
    per-sample Dice is undefined-ish on the many patches without spine and makes training jumpy,
    the instability the paper reports for Dice loss.
    """
    if name == "dice":
        return DiceLoss(sigmoid=True, batch=True)
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "focal":
        return FocalLoss(gamma=2.0, use_softmax=False)  # sigmoid focal loss on one channel
    if name == "dicebce":
        return DiceCELoss(sigmoid=True, batch=True)  # one channel: BCE-with-logits + Dice
    raise InputError(f"unknown loss {name!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ResourceError("--device cuda requested but no CUDA GPU is available")
    return torch.device(name)


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, rank): pure, so a resume redraws the same."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint64)[0] >> 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the global RNG third-party code draws from)
    torch.manual_seed(seed)


def _check_run_location(run_dir: Path, data: Path) -> None:
    """OutputError, before any work, when the run folder cannot be created or is the dataset."""
    run, root = run_dir.resolve(), data.resolve()
    if run == root or root in run.parents:
        # Checkpoints and config.json inside a dataset would mix a run into the data.
        raise OutputError(f"{run_dir}: the run folder must not be (inside) the dataset {data}")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a folder")
    existing = next(p for p in (run, *run.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{run_dir}: cannot be created: {existing} is a file, not a folder")


def _check_case_arrays(root: Path, case_ids: list[str], shapes: dict[str, list[int]]) -> None:
    """DataError, before training starts, for a case array that is missing, truncated or of
    the wrong shape (reads only the .npy headers: memory maps, no data)."""
    for cid in case_ids:
        d = case_dir(root, cid)
        for name in ("image.npy", "mask.npy"):
            try:
                arr = np.load(d / name, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{d / name}: cannot open the case array ({exc}); re-run "
                                "spineseg prepare") from exc
            if list(arr.shape) != list(shapes[cid]):
                raise DataError(f"{d / name}: shape {list(arr.shape)} differs from the manifest's "
                                f"{list(shapes[cid])}; re-run spineseg prepare")


def _metrics_csv(history: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in METRIC_COLUMNS})
    return buf.getvalue()


@dataclass
class _State:
    """Everything that changes between epochs and must survive a resume."""

    epoch: int = 0  # completed epochs
    best_metric: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


class _Run:
    """One training run; split into methods so each stays short. Use :func:`train`."""

    def __init__(self, config: TrainConfig, resume: bool, progress: bool,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.resume = resume
        self.progress = progress
        self.stop = stop
        self.run_dir = Path(config.out)
        self.device = resolve_device(config.device)
        self.cuda = self.device.type == "cuda"
        self.dist: DistInfo = DistInfo()

    # ------------------------------------------------------------------ setup

    def _check_run_dir(self) -> dict[str, Any] | None:
        """Refuse to clobber a run; return the checkpoint to resume from, if any."""
        _check_run_location(self.run_dir, Path(self.config.data))
        if self.resume:
            last = self.run_dir / LAST_FILE
            if not last.is_file():
                return None  # interrupted before the first epoch finished: start afresh
            ckpt = load_checkpoint(last, map_location="cpu")
            saved = TrainConfig.from_dict(dict(ckpt["train_config"]))
            diff = saved.differences(self.config)
            if diff:
                raise InputError(f"{last}: cannot resume with changed settings {', '.join(diff)} "
                                 "(only epochs, patience, device and workers may change)")
            done = int(ckpt["epoch"])
            if self.config.epochs < done:  # epochs is the run's total, not a number to add
                raise InputError(f"{last}: the run has completed {done} epochs, more than the "
                                 f"{self.config.epochs} asked for; --epochs is the total, so "
                                 f"give more than {done} to train further")
            return ckpt
        for name in RUN_FILES:
            check_output_path(self.run_dir / name, self.config.overwrite)
        if self.dist.is_main:  # stale files of an earlier run must not mix with this one
            for name in (LAST_FILE, BEST_FILE, METRICS_FILE, CURVES_FILE):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    (self.run_dir / name).unlink()
        return None

    def _build(self) -> None:
        cfg = self.config
        manifest = read_manifest(Path(cfg.data))
        # The dataset fixes the grid and window; the run adds the through-plane context.
        self.preprocessing: Preprocessing = dataclasses.replace(
            manifest.preprocessing_obj, context_slices=cfg.context_slices,
            context_mm=cfg.context_mm)
        self.val_cases = manifest.case_ids("val")
        self.case_spacing = {c: manifest.cases[c].spacing for c in self.val_cases}
        if not self.val_cases:
            raise DataError(f"{cfg.data}: the validation split is empty; prepare the dataset "
                            "with --val (early stopping and best.pt need validation cases)")
        _check_case_arrays(Path(cfg.data), manifest.case_ids("train") + self.val_cases,
                           {c: e.shape for c, e in manifest.cases.items()})
        _seed_everything(cfg.seed)
        given = cfg.model_config.get("in_channels", self.preprocessing.channels)
        if given != self.preprocessing.channels:
            raise InputError(f"model_config in_channels={given} does not match "
                             f"{cfg.context_slices} context slice(s) per side "
                             f"({self.preprocessing.channels} channels)")
        self.model = build_model(cfg.model, **{**cfg.model_config,
                                               "in_channels": self.preprocessing.channels})
        if cfg.init_weights:
            self._load_initial_weights(cfg.init_weights)
        self.divisor = 2 ** int(self.model.config.depth)
        if cfg.patch_size % self.divisor:
            raise InputError(f"patch size {cfg.patch_size} is not a multiple of 2**depth = "
                             f"{self.divisor}")
        augment = AugmentConfig(preprocessing=self.preprocessing)
        if not cfg.acquisition_augment:
            augment = dataclasses.replace(augment, prob_field_of_view=0.0,
                                          prob_slice_thickness=0.0, prob_contrast_vessels=0.0)
        transform = train_transforms(augment) if cfg.augment else None
        self.train_ds = SliceDataset(cfg.data, "train", patch_size=(cfg.patch_size,) * 2,
                                     preprocessing=self.preprocessing,
                                     foreground_fraction=cfg.foreground_fraction,
                                     transform=transform, seed=cfg.seed)
        if len(self.train_ds) == 0:
            raise DataError(f"{cfg.data}: the training split has no slices")
        self.autocast = autocast_dtype(self.device, cfg.precision, cfg.amp)
        self.amp = self.autocast == torch.float16  # loss scaling
        self.memory_format = training_memory_format(self.device, cfg.precision)
        self.model.to(self.device)
        self.model.to(memory_format=self.memory_format)
        self.loss_fn = make_loss(cfg.loss)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def _load_initial_weights(self, path: str) -> None:
        name, config, state, _ = load_initial_weights(path)
        mine = self.model.config.to_dict()
        theirs = build_model(name, **config).config.to_dict()
        # A 2-D file may seed a 2.5-D run (its input kernels are widened); nothing else may differ.
        widen = theirs.get("in_channels") == 1 and mine["in_channels"] > 1
        if widen:
            theirs["in_channels"] = mine["in_channels"]
        if name != self.config.model or theirs != mine:
            raise InputError(f"{path}: holds a {name} {config}, not the {self.config.model} "
                             f"{mine} this run trains; pass a matching --model/--width/--depth "
                             "(and --context-slices for a 2.5-D file)")
        if widen:
            state = widen_input_channels(state, self.model.state_dict(),
                                         self.preprocessing.context_slices)
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"{path}: weights do not fit the network ({exc})") from exc

    def _restore(self, ckpt: dict[str, Any]) -> _State:
        try:
            self.model.load_state_dict(ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"{self.run_dir / LAST_FILE}: does not match this model ({exc})") \
                from exc
        set_rng_state(ckpt["rng"])
        return _State(epoch=int(ckpt["epoch"]), best_metric=float(ckpt["best_metric"]),
                      best_epoch=int(ckpt["best_epoch"]),
                      bad_epochs=int(ckpt.get("bad_epochs", 0)),
                      history=[dict(r) for r in ckpt["history"]])

    # ------------------------------------------------------------------ one epoch

    def _loader(self, epoch: int) -> DataLoader[dict[str, Any]]:
        cfg = self.config
        self.train_ds.set_epoch(epoch)
        sampler: torch.utils.data.Sampler[int]
        n = len(self.train_ds) // self.dist.world_size  # samples this rank draws per epoch
        if cfg.max_steps_per_epoch is not None:
            n = min(n, cfg.max_steps_per_epoch * cfg.batch_size)
        if cfg.sampling == "case":
            # Every case equally likely: weight each slice by 1/len(its case). Each rank draws its
            # own share from its own seeded stream, which is what DDP needs of a sampler.
            gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch, self.dist.rank))
            weights = self.train_ds.case_balanced_weights(cfg.patient_weights)
            sampler = WeightedRandomSampler(weights, num_samples=n, replacement=True,
                                            generator=gen)
        elif self.dist.enabled:
            sampler = DistributedSampler(self.train_ds, num_replicas=self.dist.world_size,
                                         rank=self.dist.rank, shuffle=True, seed=cfg.seed,
                                         drop_last=True)
            sampler.set_epoch(epoch)
        else:
            gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
            sampler = RandomSampler(self.train_ds, num_samples=n, generator=gen)
        per_rank = len(self.train_ds) // self.dist.world_size
        return DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=sampler,
                          num_workers=cfg.workers, pin_memory=self.cuda,
                          drop_last=per_rank > cfg.batch_size, persistent_workers=False)

    def _check_stop(self) -> None:
        # A KeyboardInterrupt raised by a signal handler can be swallowed when it lands inside a
        # finaliser (``__del__``); the event makes the request stick until a safe point sees it.
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt

    def _train_epoch(self, net: nn.Module, epoch: int) -> float:
        cfg = self.config
        net.train()
        loader = self._loader(epoch)
        steps = len(loader)
        if cfg.max_steps_per_epoch is not None:
            steps = min(steps, cfg.max_steps_per_epoch)
        total, count = 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (self.progress and self.dist.is_main), leave=False)
        with bar:
            for step, batch in enumerate(loader):
                self._check_stop()
                if step >= steps:
                    break
                x = batch["image"].to(self.device, non_blocking=self.cuda)
                y = batch["label"].to(self.device, non_blocking=self.cuda)
                x = x.contiguous(memory_format=self.memory_format)
                with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                    enabled=self.autocast is not None):
                    logits = net(x)
                loss = self.loss_fn(logits.float(), y)
                if not torch.isfinite(loss) and not self.amp:
                    raise ModelError(f"training diverged at epoch {epoch + 1} (loss {loss.item()})"
                                     "; lower --lr")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total += float(loss.detach()) * len(x)
                count += len(x)
                bar.update()
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        total, count = all_reduce_sum([total, float(count)], self.dist, self.device)
        return total / max(count, 1.0)

    def _validate(self, module: nn.Module) -> tuple[float, float]:
        """Validation loss (mean over slices) and pooled DSC over all validation slices.

        Whole slices of every validation case, padded to at least the patch (as the test
        protocol and the product pipeline run the network), cases shared out
        over the ranks and the sums combined, so every rank gets the same numbers.
        """
        broadcast_buffers(module, self.dist)
        module.eval()
        loss_sum = n = inter = n_ref = n_pred = 0.0
        my_cases = self.val_cases[self.dist.rank::self.dist.world_size]
        with torch.inference_mode():
            for cid in my_cases:
                d = case_dir(Path(self.config.data), cid)
                try:
                    hu = np.load(d / "image.npy", mmap_mode="r")
                    ref = np.load(d / "mask.npy", mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise DataError(f"{d}: cannot open the case arrays ({exc})") from exc
                for start, logits in iter_slice_logits(
                        module, hu, self.preprocessing, divisor=self.divisor,
                        batch_size=self.config.val_batch_size, device=self.device,
                        spacing_z=float(self.case_spacing[cid][2]),
                        min_size=self.config.patch_size):
                    y = torch.from_numpy(np.asarray(ref[start:start + len(logits)],
                                                    dtype=np.float32)[:, None]).to(self.device)
                    loss_sum += float(self.loss_fn(logits, y)) * len(logits)
                    n += len(logits)
                    pred = logits > 0
                    gt = y > 0.5
                    inter += float((pred & gt).sum())
                    n_ref += float(gt.sum())
                    n_pred += float(pred.sum())
        loss_sum, n, inter, n_ref, n_pred = all_reduce_sum(
            [loss_sum, n, inter, n_ref, n_pred], self.dist, self.device)
        return loss_sum / max(n, 1.0), paper_dsc(int(inter), int(n_ref), int(n_pred))

    # ------------------------------------------------------------------ outputs

    def _payload(self, module: nn.Module, state: _State) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.config.model,
            "model_config": self.model.config.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "threshold": 0.5,
            "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
            "train_config": self.config.to_dict(),
            "epoch": state.epoch,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
            "bad_epochs": state.bad_epochs,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp else {},
            "rng": rng_state(),
            "history": [dict(r) for r in state.history],
            "software_version": software_version(),
        }

    def _write_epoch(self, module: nn.Module, state: _State, improved: bool) -> None:
        # last.pt is the commit point, written last: once it holds epoch N, metrics.csv, the
        # curves and best.pt of epoch N exist too, even if a signal lands between the writes
        # (a resume rewrites metrics.csv from the checkpoint's history either way).
        payload = self._payload(module, state)
        write_text_atomic(self.run_dir / METRICS_FILE, _metrics_csv(state.history), overwrite=True)
        plot_curves(state.history, self.run_dir / CURVES_FILE)
        if improved:
            save_checkpoint(self.run_dir / BEST_FILE, payload)
        save_checkpoint(self.run_dir / LAST_FILE, payload)

    # ------------------------------------------------------------------ main loop

    def run(self) -> TrainResult:
        cfg = self.config
        if cfg.compile and self.device.type == "cpu" and (why := compile_unavailable()):
            raise InputError(f"--compile needs a C++ toolchain: {why}; train without it")
        self.dist = setup_distributed(self.device.type)
        try:
            if self.dist.enabled and self.cuda:
                self.device = torch.device("cuda", self.dist.local_rank)
            ckpt = self._check_run_dir()
            barrier(self.dist)  # every rank has checked before rank 0 writes anything
            self._build()
            state = self._restore(ckpt) if ckpt is not None else _State()
            if self.dist.is_main:
                write_text_atomic(self.run_dir / CONFIG_FILE,
                                  json.dumps(cfg.to_dict(), indent=2) + "\n", overwrite=True)
                if ckpt is not None:  # rows after the checkpoint belong to a lost epoch
                    write_text_atomic(self.run_dir / METRICS_FILE, _metrics_csv(state.history),
                                      overwrite=True)
            net: nn.Module = self.model
            if self.dist.enabled:
                net = DistributedDataParallel(
                    self.model, device_ids=[self.dist.local_rank] if self.cuda else None)
            # The compiled wrapper shares the parameters; checkpoints and validation use the
            # eager module, so saved weights and their keys are the same either way.
            train_net = torch.compile(net) if cfg.compile else net
            stopped_early = False
            for epoch in range(state.epoch, cfg.epochs):
                self._check_stop()
                if cfg.patience and state.bad_epochs >= cfg.patience:
                    stopped_early = True
                    break
                _seed_everything(_epoch_seed(cfg.seed, epoch, self.dist.rank))
                t0 = time.perf_counter()
                lr = float(self.optimizer.param_groups[0]["lr"])
                train_loss = self._train_epoch(train_net, epoch)
                val_loss, val_dice = self._validate(self.model)
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(val_loss)
                else:
                    self.scheduler.step()
                state.epoch = epoch + 1
                improved = val_dice > state.best_metric
                if improved:
                    state.best_metric, state.best_epoch, state.bad_epochs = val_dice, epoch + 1, 0
                else:
                    state.bad_epochs += 1
                state.history.append({
                    "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                    "val_dice": val_dice, "lr": lr, "seconds": time.perf_counter() - t0,
                })
                if self.dist.is_main:
                    self._write_epoch(self.model, state, improved)
                barrier(self.dist)
            return TrainResult(self.run_dir, state.epoch, state.best_epoch,
                               state.best_metric, stopped_early, state.history)
        finally:
            cleanup_distributed(self.dist)


def poly_factor(epoch: int, epochs: int, floor: float = 0.0) -> float:
    """nnU-Net's polynomial decay: the share of the initial learning rate used in ``epoch``."""
    return max(floor, (1.0 - min(epoch, epochs) / epochs) ** 0.9)


def make_scheduler(optimizer: torch.optim.Optimizer,
                   cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The run's learning-rate schedule, stepped once per epoch (see ``TrainConfig.schedule``).

    The poly schedule depends on ``epochs``: resuming with more epochs stretches the rest of it.
    """
    if cfg.schedule == "poly":
        floor = cfg.min_lr / cfg.lr
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(poly_factor, epochs=cfg.epochs, floor=floor))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience,
        min_lr=cfg.min_lr)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = False,
          stop: threading.Event | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data``, writing the run folder ``config.out``.

    ``resume=True`` continues the run in ``config.out`` from its ``last.pt`` (exactly; see the
    module docstring). Under ``torchrun`` with several processes this is data-parallel training
    and only rank 0 writes. A ``KeyboardInterrupt`` propagates after the run folder holds the last
    completed epoch (the CLI maps it to exit code 130). Setting ``stop`` (e.g. from a signal
    handler) raises that interrupt at the next batch.
    """
    config.validate()
    return _Run(config, resume, progress, stop).run()
