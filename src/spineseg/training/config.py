"""The training configuration: one dataclass, saved as ``RUN/config.json`` and in every checkpoint.

Defaults follow the paper (Adam, lr 1e-3, batch 16, reduce-on-plateau on the validation loss,
train until convergence = early stopping on validation Dice).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spineseg.data.preprocess import check_context
from spineseg.errors import DataError, InputError

LOSSES: tuple[str, ...] = ("dice", "bce", "focal", "dicebce")
# "slice": every training slice equally likely (long scans dominate); "case": every case equally
# likely, then a slice within it (nnU-Net's sampling) so a 20-slice scan is not drowned out.
SAMPLINGS: tuple[str, ...] = ("slice", "case")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# "plateau": the paper's reduce-on-plateau on the validation loss. "poly": nnU-Net's polynomial
# decay, lr * (1 - epoch / epochs) ** 0.9, which ends every run at a small step size, so the last
# weights do not depend on where a noisy step happened to land (fine-tunes of a fixed length).
SCHEDULES: tuple[str, ...] = ("plateau", "poly")
# What the forward and backward compute in: float32, or bfloat16 autocast (weights, optimiser
# state and loss stay float32). On a CPU with AVX-512 BF16 or AMX an update of the shipped network
# takes about two thirds of the float32 time (docs/performance.md); elsewhere it is emulated and
# slower.
TRAIN_PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
CONFIG_FILE = "config.json"

# Fields that may differ when a run is resumed: they change how long or where it runs, never
# what a completed epoch computes.
RESUMABLE_OVERRIDES: frozenset[str] = frozenset(
    {"out", "epochs", "patience", "device", "workers", "overwrite"}
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (``spineseg train`` maps its flags onto this)."""

    data: str
    out: str
    model: str = "msrunet"
    model_config: dict[str, Any] = field(default_factory=dict)
    loss: str = "dicebce"
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    patch_size: int = 256
    foreground_fraction: float = 0.5
    # Early stopping: stop after this many epochs without a better validation Dice (0 = never).
    patience: int = 20
    # ReduceLROnPlateau on the validation loss (the paper's "adaptive" learning-rate decay).
    lr_patience: int = 5
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    schedule: str = "plateau"
    weight_decay: float = 0.0
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    val_batch_size: int = 16
    augment: bool = True
    # Field of view, slice thickness and contrast vessels (spineseg.data.acquisition), part of
    # ``augment``; off only to measure what they add.
    acquisition_augment: bool = True
    sampling: str = "slice"
    # With ``sampling="case"``: patient id -> how many times as likely as another case each of
    # that patient's cases (its noisy copies included) is drawn. Keeps scarce whole-body scans
    # from being outnumbered by spine crops, whose absence of ribs, sternum, aorta and sacrum a
    # network otherwise learns. Empty: every case equally likely.
    patient_weights: dict[str, float] = field(default_factory=dict)
    # Start from these weights (a run's checkpoint or a model file, e.g. the shipped model) instead
    # of a random initialisation: fine-tuning. The architecture must match the file's.
    init_weights: str | None = None
    # 2.5-D input: this many neighbouring planes per side, ``context_mm`` apart, as extra input
    # channels (see Preprocessing). 0 = the paper's 2-D network. Initial weights from a 2-D model
    # are widened: the slice channel keeps them, the context channels start at zero.
    context_slices: int = 0
    context_mm: float = 3.0
    amp: bool = True  # float16 mixed precision with loss scaling; only ever used on CUDA
    precision: str = "float32"  # TRAIN_PRECISIONS; "bfloat16" on CUDA replaces ``amp``
    # Run the training forward and backward through ``torch.compile`` (inductor): fused kernels,
    # ~1.2x the updates per second on a CPU in bfloat16, after a one-off compile (minutes on
    # 2 cores; cached on disk for later runs). Validation and the saved weights stay eager.
    compile: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` on a value no run could use."""
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.sampling not in SAMPLINGS:
            raise InputError(f"unknown sampling {self.sampling!r}; choose from "
                             f"{', '.join(SAMPLINGS)}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {self.schedule!r}; choose from "
                             f"{', '.join(SCHEDULES)}")
        if self.precision not in TRAIN_PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose from "
                             f"{', '.join(TRAIN_PRECISIONS)}")
        if self.device not in DEVICES:
            raise InputError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        for name in ("epochs", "batch_size", "patch_size", "val_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "lr_patience", "workers"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise InputError(f"max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
        if not self.lr > 0 or not 0 < self.lr_factor < 1 or self.min_lr < 0:
            raise InputError("need lr > 0, 0 < lr_factor < 1 and min_lr >= 0")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        check_context(self.context_slices, self.context_mm)
        if not isinstance(self.patient_weights, dict) or not all(
                isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                and 0 < v < float("inf") for k, v in self.patient_weights.items()):
            raise InputError("patient_weights must map patient ids to finite weights > 0, got "
                             f"{self.patient_weights!r}")
        if self.patient_weights and self.sampling != "case":
            raise InputError("patient weights need case sampling (--sampling case)")
        if not isinstance(self.model_config, dict):
            raise InputError("model_config must be a JSON object")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise DataError(f"unknown training config key(s) {unknown}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise DataError(f"malformed training config: {exc}") from exc

    @classmethod
    def field_defaults(cls) -> dict[str, Any]:
        """Each field's default: what a config written before the field existed meant by it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return json.loads(json.dumps(out))

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of fields that differ, except those a resume may change."""
        a, b = self.to_dict(), other.to_dict()
        return sorted(k for k in a if k not in RESUMABLE_OVERRIDES and a[k] != b[k])


def read_train_config(run_dir: str | Path) -> TrainConfig:
    """The config of an existing run (``RUN/config.json``)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{run_dir}: no {CONFIG_FILE} (not a training run folder)") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable training config ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a JSON object")
    return TrainConfig.from_dict(data)
