"""``spineseg train``: train a network on a prepared dataset (thin shell over ``train()``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from spineseg.errors import EXIT_INTERRUPTED, InputError
from spineseg.inference.model_file import verified_default_model
from spineseg.models import list_models
from spineseg.training.checkpoint import load_initial_weights
from spineseg.training.config import (
    DEVICES,
    LOSSES,
    RESUMABLE_OVERRIDES,
    SAMPLINGS,
    SCHEDULES,
    TRAIN_PRECISIONS,
    TrainConfig,
    read_train_config,
)
from spineseg.training.trainer import LAST_FILE, train

SHIPPED = "shipped"  # --init-weights value naming the packaged default model

# CLI flag -> TrainConfig field, for flags that map one to one.
_FIELDS: dict[str, str] = {
    "data": "data", "model": "model", "loss": "loss", "output": "out", "epochs": "epochs",
    "batch_size": "batch_size", "lr": "lr", "patch": "patch_size",
    "foreground_fraction": "foreground_fraction", "patience": "patience", "workers": "workers",
    "seed": "seed", "device": "device", "max_steps_per_epoch": "max_steps_per_epoch",
    "augment": "augment", "acquisition_augment": "acquisition_augment", "sampling": "sampling",
    "init_weights": "init_weights", "schedule": "schedule",
    "context_slices": "context_slices", "context_mm": "context_mm", "precision": "precision",
    "compile": "compile",
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a segmentation network on a prepared dataset",
        description="Train on the train split, validate on whole val slices every epoch, write "
                    "RUN/{config.json, metrics.csv, curves.png, last.pt, best.pt}. Paper defaults: "
                    "Adam lr 1e-3, batch 16, reduce-on-plateau, early stopping. Under torchrun "
                    "with several processes: data-parallel (DDP). Ctrl-C/SIGTERM keeps the last "
                    "completed epoch in last.pt; continue with --resume RUN.",
    )
    d = TrainConfig.__dataclass_fields__
    p.add_argument("--data", metavar="DATASET", help="prepared dataset folder (spineseg prepare)")
    p.add_argument("--model", choices=list_models(), help=f"network (default {d['model'].default})")
    p.add_argument("--loss", choices=LOSSES, help=f"loss (default {d['loss'].default})")
    p.add_argument("-o", "--output", metavar="RUN", help="run folder to create")
    p.add_argument("--epochs", type=int, help=f"maximum epochs (default {d['epochs'].default})")
    p.add_argument("--batch-size", type=int, help="batch size (default 16)")
    p.add_argument("--lr", type=float, help="initial Adam learning rate (default 1e-3)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule: plateau (the paper's reduce-on-plateau, default) "
                        "or poly (nnU-Net's decay to ~0 over --epochs; for fixed-length runs)")
    p.add_argument("--patch", type=int, help="square training patch side (default 256)")
    p.add_argument("--width", type=int, help="base_width of the network")
    p.add_argument("--depth", type=int, help="down-sampling stages of the network")
    p.add_argument("--model-config", metavar="JSON",
                   help="network config as a JSON object or a path to a JSON file")
    p.add_argument("--foreground-fraction", type=float,
                   help="share of patches centred on spine (default 0.5)")
    p.add_argument("--patience", type=int,
                   help="early stopping: epochs without better val DSC (default 20, 0 = off)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", choices=DEVICES, help="cpu, cuda or auto (default auto)")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap batches per epoch (quick runs)")
    p.add_argument("--resume", metavar="RUN",
                   help="continue RUN from its last.pt with its own settings (only --epochs, "
                        "--patience, --device, --workers may be given; --epochs is the run's "
                        "total: fewer than it has completed is refused, as many does nothing)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="training augmentation (default on)")
    p.add_argument("--acquisition-augment", action=argparse.BooleanOptionalAction, default=None,
                   help="the acquisition augmentations within it: spine-protocol field of view, "
                        "sagittal slice thickness, contrast-filled vessels (default on; off for "
                        "an ablation)")
    p.add_argument("--sampling", choices=SAMPLINGS,
                   help="slice: every slice equally likely (default); case: every case equally "
                        "likely, so short scans are not drowned out by long ones (nnU-Net's way)")
    p.add_argument("--patient-weight", action="append", default=None, metavar="PATIENT=W",
                   help="with --sampling case: draw that patient's cases W times as often as "
                        "another case (repeatable), e.g. ts_abdomen=3 to keep whole-body scans "
                        "from being outnumbered by spine crops")
    p.add_argument("--context-slices", type=int, metavar="K",
                   help="2.5-D input: K neighbouring planes on each side of a slice as extra "
                        "channels (default 0 = 2-D, the paper's network)")
    p.add_argument("--context-mm", type=float, metavar="MM",
                   help="distance between the context planes in mm (default 3)")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS,
                   help="float32 (default) or bfloat16 autocast: about 1.5x the updates per "
                        "second on a CPU with AVX-512 BF16 or AMX, slower on one without")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train through torch.compile: faster updates after a one-off compile "
                        "(minutes on 2 cores, cached for later runs; needs a C++ compiler)")
    p.add_argument("--init-weights", metavar="FILE",
                   help=f"fine-tune: start from a checkpoint or model file ('{SHIPPED}' = the "
                        "shipped default model); its network and slice context are used unless "
                        "--model/--width/--depth or --context-slices/--context-mm are given")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.set_defaults(func=run)


def _model_config(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.model_config is None and args.width is None and args.depth is None:
        return None
    config: dict[str, Any] = {}
    if args.model_config is not None:
        text = args.model_config
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text).read_text(encoding="utf-8")
            except OSError as exc:
                raise InputError(f"--model-config {text}: not a JSON object or readable file "
                                 f"({exc.strerror})") from exc
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise InputError(f"--model-config: invalid JSON ({exc})") from exc
        if not isinstance(config, dict):
            raise InputError("--model-config must be a JSON object")
    if args.width is not None:
        config["base_width"] = args.width
    if args.depth is not None:
        config["depth"] = args.depth
    return config


def _patient_weights(items: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in items:
        patient, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not patient or not 0 < weight < float("inf"):
            raise InputError(f"--patient-weight {item!r}: expected PATIENT=W with W > 0, "
                             "e.g. ts_abdomen=3")
        weights[patient] = weight
    return weights


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The TrainConfig the flags describe, and whether this is a resume."""
    given = {field: getattr(args, flag) for flag, field in _FIELDS.items()
             if getattr(args, flag) is not None}
    if getattr(args, "patient_weight", None):
        given["patient_weights"] = _patient_weights(args.patient_weight)
    model_config = _model_config(args)
    if model_config is not None:
        given["model_config"] = model_config
    if args.overwrite:
        given["overwrite"] = True
    if args.resume is not None:
        extra = sorted(set(given) - RESUMABLE_OVERRIDES)
        if extra:
            raise InputError(f"--resume continues with the run's own settings; these cannot be "
                             f"given: {', '.join(extra)}")
        saved = read_train_config(args.resume)
        merged = {**saved.to_dict(), **given, "out": str(args.resume)}
        return TrainConfig.from_dict(merged), True
    if args.init_weights == SHIPPED:
        # Verifies the shipped file's SHA-256 before anything trains on it.
        given["init_weights"] = str(verified_default_model()[0])
    if args.init_weights is not None:
        name, config, _, pre = load_initial_weights(given["init_weights"])
        if "model" not in given and model_config is None:
            # The file's network, so `--init-weights best.pt` needs no repeated architecture
            # flags. Input channels follow the run's slice context (a 2-D file can seed 2.5-D).
            config.pop("in_channels", None)
            given["model"], given["model_config"] = name, config
        if "context_slices" not in given and "context_mm" not in given:
            # ...and the file's slice context, so a 2.5-D file fine-tunes as 2.5-D by default.
            for key in ("context_slices", "context_mm"):
                if key in pre:
                    given[key] = pre[key]
    if "data" not in given or "out" not in given:
        raise InputError("--data and -o/--output are required (or --resume RUN)")
    return TrainConfig(**given), False


def run(args: argparse.Namespace) -> int:
    config, resume = build_config(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    stop = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        stop.set()  # sticks even if the interrupt below lands in a finaliser and is lost
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # No bar when stderr is a log file: its carriage-return redraws would fill it.
        result = train(config, resume=resume, progress=sys.stderr.isatty(), stop=stop)
    except KeyboardInterrupt:
        if main_rank:
            print(f"error: interrupted; {Path(config.out) / LAST_FILE} holds the last completed "
                  f"epoch (the interrupted one is discarded). Continue with: "
                  f"spineseg train --resume {config.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if main_rank:
        how = "stopped early" if result.stopped_early else "finished"
        print(f"{how} after {result.epochs_completed} epoch(s); best validation DSC "
              f"{result.best_val_dice:.4f} at epoch {result.best_epoch}")
        print(f"run folder: {result.run_dir} (best.pt, last.pt, metrics.csv, curves.png)")
    return 0


__all__ = ["build_config", "register", "run"]
