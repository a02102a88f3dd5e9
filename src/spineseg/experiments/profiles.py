"""Training budgets for the reproduction: the paper's protocol and scaled-down versions.

Every cell of every table is trained with the same profile, i.e. the same budget and the same
seed policy (seed ``k`` of every cell is ``TrainConfig.seed = k``), so differences between cells
are differences between networks or losses, not between budgets.

- ``paper``: the paper's protocol (512×512 slices, batch 16, Adam 1e-3, reduce-on-plateau,
  train until convergence = early stopping) at the registry's default width; meant for a GPU.
- ``quick``: the same protocol scaled down so that ``experiment all`` finishes in about an hour
  on 2 CPU cores: small patches and widths and a fixed number of steps per epoch and of epochs,
  no early stopping (every cell gets exactly the same number of updates). Its numbers show
  whether rankings appear at a small budget; they are not the paper's accuracy regime.
- ``converged``: a CPU budget at which the networks actually train: the 2 mm in-plane grid
  (a 128² patch then covers 256 mm, most of a body cross-section), width 16, 30 epochs × 50
  updates of batch 8 (1,500 updates, the same for every cell), every case equally likely, three
  seeds, and a split on real patients (:func:`check_real_patient_split`). Whether each cell's
  validation curve has flattened is measured (:mod:`.convergence`) and printed, never assumed.
- ``smoke``: ``converged``'s dataset rules (grid, real-patient split, case sampling) at a tiny
  budget: checks a dataset and the campaign script end to end in minutes.
- ``tiny``: a few steps at tiny widths; exercises the whole pipeline in tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from spineseg.data.manifest import Manifest
from spineseg.errors import DataError, InputError
from spineseg.experiments.specs import RunSpec
from spineseg.training.config import TrainConfig

__all__ = ["PROFILES", "Profile", "check_real_patient_split", "get_profile"]

# Fields added after the first experiment folders were written: recorded in a folder's protocol
# only when they differ from these values, so folders made before them stay resumable.
_LATER_FIELDS: dict[str, Any] = {"schedule": "plateau", "sampling": "slice", "spacing_mm": None,
                                 "min_test_patients": 0}


@dataclass(frozen=True)
class Profile:
    """Budget and protocol shared by every cell; ``seeds`` is the default number of seeds."""

    name: str
    patch_size: int
    base_width: int
    depth: int
    batch_size: int
    lr: float
    epochs: int
    max_steps_per_epoch: int | None
    patience: int
    lr_patience: int
    lr_factor: float
    foreground_fraction: float
    augment: bool
    val_batch_size: int
    seeds: int
    purpose: str
    schedule: str = "plateau"
    sampling: str = "slice"
    # In-plane grid (mm) the dataset must be prepared on (``spineseg prepare --spacing``); None:
    # any grid.
    spacing_mm: float | None = None
    # > 0: the test split must hold this many real patients at least, and validation real
    # patients only (:func:`check_real_patient_split`).
    min_test_patients: int = 0

    def train_config(self, run: RunSpec, *, data: str, out: str, seed: int,
                     device: str) -> TrainConfig:
        """The :class:`TrainConfig` of one seed of one run under this profile."""
        model_config = {**run.config_dict(), "base_width": self.base_width, "depth": self.depth}
        return TrainConfig(
            data=data, out=out, model=run.model, model_config=model_config, loss=run.loss,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            patch_size=self.patch_size, foreground_fraction=self.foreground_fraction,
            patience=self.patience, lr_patience=self.lr_patience, lr_factor=self.lr_factor,
            seed=seed, device=device, max_steps_per_epoch=self.max_steps_per_epoch,
            val_batch_size=self.val_batch_size, augment=self.augment,
            schedule=self.schedule, sampling=self.sampling)

    def protocol(self) -> dict[str, Any]:
        """What must not change when a run is resumed (all fields but the seed count)."""
        d = dataclasses.asdict(self)
        d.pop("seeds")
        d.pop("purpose")
        for name, default in _LATER_FIELDS.items():
            if d[name] == default:
                d.pop(name)
        return d

    def check_dataset(self, manifest: Manifest) -> None:
        """Refuse a dataset this profile's protocol does not allow, before anything trains."""
        if self.spacing_mm is not None:
            grid = tuple(float(v) for v in manifest.preprocessing["spacing_xy"])
            if any(abs(v - self.spacing_mm) > 1e-6 for v in grid):
                raise InputError(
                    f"profile {self.name} trains on a {self.spacing_mm:g} mm in-plane grid; this "
                    f"dataset is on {'×'.join(f'{v:g}' for v in grid)} mm (prepare it with "
                    f"--spacing {self.spacing_mm:g})")
        if self.min_test_patients:
            check_real_patient_split(manifest, self.min_test_patients)

    def differences_from_paper(self) -> list[str]:
        """Human-readable list of where this profile departs from the paper's protocol."""
        paper = PROFILES["paper"]
        out = []
        for f in dataclasses.fields(self):
            if f.name in ("name", "purpose", "seeds", "val_batch_size", "spacing_mm",
                          "min_test_patients"):
                continue
            mine, theirs = getattr(self, f.name), getattr(paper, f.name)
            if mine != theirs:
                out.append(f"{_LABELS[f.name]} {_show(mine)} (paper profile: {_show(theirs)})")
        return out

    def steps_per_epoch(self, train_slices: int) -> int:
        """Updates per epoch on a training split of ``train_slices`` slices (one process).

        ``max_steps_per_epoch`` is a cap: the trainer draws each slice at most once per epoch, so
        a small training split gives fewer steps. Mirrors the trainer's loader (``drop_last``
        when the split is larger than a batch).
        """
        if train_slices <= self.batch_size:
            steps = 1 if train_slices else 0
        else:
            steps = train_slices // self.batch_size
        if self.max_steps_per_epoch is not None:
            steps = min(steps, self.max_steps_per_epoch)
        return steps

    def updates(self, train_slices: int) -> int:
        """Updates per run on a training split of ``train_slices`` slices (every cell the same)."""
        return self.epochs * self.steps_per_epoch(train_slices)

    def budget(self) -> str:
        steps = ("all slices" if self.max_steps_per_epoch is None
                 else f"{self.max_steps_per_epoch} steps")
        stop = (f"early stopping after {self.patience} epochs without a better validation DSC"
                if self.patience else "no early stopping")
        schedule = (f"reduce-on-plateau (factor {self.lr_factor:g}, patience {self.lr_patience})"
                    if self.schedule == "plateau" else "polynomial decay (power 0.9)")
        grid = f" on the {self.spacing_mm:g} mm grid" if self.spacing_mm is not None else ""
        sampling = ("every case equally likely" if self.sampling == "case"
                    else "every slice equally likely")
        return (f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} × {steps} of batch "
                f"{self.batch_size}, patches {self.patch_size}×{self.patch_size}{grid}, base "
                f"width {self.base_width}, depth {self.depth}; Adam lr {self.lr:g}, {schedule}; "
                f"{stop}; {sampling}; augmentation {'on' if self.augment else 'off'}; best.pt = "
                "best validation DSC")


_LABELS = {
    "patch_size": "patch side", "base_width": "base width", "depth": "depth",
    "batch_size": "batch size", "lr": "learning rate", "epochs": "epochs",
    "max_steps_per_epoch": "steps per epoch", "patience": "early-stopping patience",
    "lr_patience": "plateau patience", "lr_factor": "plateau factor",
    "foreground_fraction": "foreground fraction", "augment": "augmentation",
    "schedule": "schedule", "sampling": "sampling",
}


def _show(value: object) -> str:
    if value is None:
        return "all"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


# Tables 1–3 trained until they stop improving, on 2 CPU cores in unattended, resumable runs
# (tools/run_converged_tables.sh; budget measured in docs/results/README.md). Reduce-on-
# plateau, the paper's schedule, rather than polynomial decay: a decay to ~0 would flatten
# every curve by construction and make the plateau criterion say nothing.
_CONVERGED = Profile(
    name="converged", patch_size=128, base_width=16, depth=4, batch_size=8, lr=1e-3,
    epochs=30, max_steps_per_epoch=50, patience=0, lr_patience=3, lr_factor=0.5,
    foreground_fraction=0.5, augment=True, val_batch_size=16, seeds=3,
    schedule="plateau", sampling="case", spacing_mm=2.0, min_test_patients=3,
    purpose="1,500 updates per cell at width 16 on the 2 mm grid, every case equally likely, "
            "tested on real patients only; meant to reach the networks' plateau on 2 CPU "
            "cores over several unattended, resumable calls")

PROFILES: Mapping[str, Profile] = MappingProxyType({
    "paper": Profile(
        name="paper", patch_size=512, base_width=32, depth=4, batch_size=16, lr=1e-3,
        epochs=100, max_steps_per_epoch=None, patience=20, lr_patience=5, lr_factor=0.5,
        foreground_fraction=0.5, augment=True, val_batch_size=16, seeds=3,
        purpose="the paper's protocol (512×512 slices, batch 16, Adam 1e-3, plateau schedule, "
                "train to convergence); for a GPU"),
    # 21 distinct runs of at most 60 updates: about an hour for `all` with one seed on 2 idle
    # CPU cores, estimated from timings on a loaded machine (docs/results/README.md).
    "quick": Profile(
        name="quick", patch_size=128, base_width=8, depth=4, batch_size=8, lr=1e-3,
        epochs=4, max_steps_per_epoch=15, patience=0, lr_patience=1, lr_factor=0.5,
        foreground_fraction=0.5, augment=True, val_batch_size=8, seeds=1,
        purpose="the paper's protocol scaled down to finish `all` in about an hour on 2 CPU "
                "cores; a fixed, equal budget per cell"),
    "converged": _CONVERGED,
    "smoke": dataclasses.replace(
        _CONVERGED, name="smoke", patch_size=64, base_width=8, batch_size=2, epochs=5,
        max_steps_per_epoch=2, lr_patience=1, seeds=1,
        purpose="the converged profile's dataset rules at a tiny budget (5 validations, so the "
                "plateau criterion gives a verdict), to check a dataset and the campaign script; "
                "numbers are meaningless"),
    "tiny": Profile(
        name="tiny", patch_size=32, base_width=8, depth=2, batch_size=2, lr=1e-3,
        epochs=1, max_steps_per_epoch=2, patience=0, lr_patience=1, lr_factor=0.5,
        foreground_fraction=0.5, augment=False, val_batch_size=4, seeds=1,
        purpose="a few steps at tiny widths, to test the pipeline; numbers are meaningless"),
})


def check_real_patient_split(manifest: Manifest, min_test: int = 3) -> None:
    """Raise :class:`DataError` unless the split tests on unseen real patients only.

    The tables claim accuracy on patients no network saw: the test split must hold real CT only,
    from at least ``min_test`` patients, validation real patients too (so ``best.pt`` is chosen on
    real anatomy), and no test patient may appear in training or validation (a noise copy of a
    test patient in training would be a leak as well: it carries the patient id).
    """
    by_split: dict[str, set[str]] = {}
    for cid, c in manifest.cases.items():
        by_split.setdefault(c.split, set()).add(c.patient)
        if c.split in ("test", "val") and c.kind != "real":
            raise DataError(f"{c.split} case {cid} is a {c.kind}; this profile tests and "
                            "validates on real patients only")
    test, seen = by_split.get("test", set()), by_split.get("train", set()) | by_split.get("val", set())
    if len(test) < min_test:
        raise DataError(f"the test split holds {len(test)} real patient(s); this profile needs "
                        f"at least {min_test}")
    if not by_split.get("val"):
        raise DataError("the validation split holds no real patient")
    leaked = sorted(test & seen)
    if leaked:
        raise DataError(f"test patient(s) {', '.join(leaked)} also in training or validation")


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}") from None
