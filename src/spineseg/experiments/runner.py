"""Run the cells of the tables resumably: train each (run, seed), evaluate it, record it.

Layout under the runs folder (``DIR/runs`` by default)::

    runs/<table>/<cell>/seed<k>/   the trainer's run folder (config.json, last.pt, best.pt, …)
                                   + result.json: test-set metrics, the done-marker

``result.json`` is written atomically only after the evaluation finished, so it marks a finished
seed. Besides the pooled metrics it holds the DSC of every test patient (for paired tests across
cells), the validation curve from ``metrics.csv`` and the plateau verdict on it
(:mod:`.convergence`), so tables and curves can be rebuilt from the JSON alone. A re-run skips seeds that have it and calls the trainer with ``resume=True`` for the rest,
which continues from ``last.pt`` (or starts afresh if none was written yet); a run whose training
had already finished resumes with nothing left to do and is only evaluated.

Evaluation uses the checkpoint with the best validation DSC (``best.pt``) on the dataset's TEST
split, restricted to its real CT cases when it has any (patients never seen in training or
validation), with the paper's pooled DSC and IoU (:mod:`spineseg.evaluation.metrics`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

from spineseg.data.manifest import Manifest, read_manifest
from spineseg.errors import DataError, InputError
from spineseg.evaluation.evaluate import evaluate_model
from spineseg.evaluation.metrics import VolumeMetrics, paper_dsc
from spineseg.experiments.convergence import Plateau, plateau, read_curve
from spineseg.experiments.profiles import Profile
from spineseg.experiments.specs import RunSpec
from spineseg.io import write_text_atomic
from spineseg.training.config import RESUMABLE_OVERRIDES, TrainConfig
from spineseg.training.trainer import BEST_FILE, METRICS_FILE, train

__all__ = [
    "RESULT_FILE",
    "CellSummary",
    "RunnerConfig",
    "SeedResult",
    "archive_path",
    "archive_result",
    "eval_device",
    "finished_result",
    "patient_dice",
    "read_result",
    "run_runs",
    "run_seed",
    "schedule",
    "seed_dir",
    "seed_lock",
    "summarize",
    "test_kinds",
]

RESULT_FILE = "result.json"
RESULT_FORMAT = "spineseg-experiment-result/1"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunnerConfig:
    """Where and how cells run. ``data`` and ``runs_dir`` are made absolute on creation."""

    data: Path
    runs_dir: Path
    profile: Profile
    seeds: int
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise InputError(f"--seeds must be >= 1, got {self.seeds}")
        object.__setattr__(self, "data", Path(self.data).resolve())
        object.__setattr__(self, "runs_dir", Path(self.runs_dir).resolve())


@dataclass(frozen=True)
class SeedResult:
    """Test-set metrics of one seed of one run (the content of ``result.json``)."""

    key: str
    seed: int
    dsc: float
    iou: float
    mean_slice_dice: float
    test_cases: tuple[str, ...]
    test_kinds: tuple[str, ...] | None
    case_dice: dict[str, float]
    epochs_completed: int
    best_epoch: int
    best_val_dice: float
    train_seconds: float
    eval_seconds: float
    train_config: dict[str, Any] = field(default_factory=dict)
    # Test patient → volume DSC (fraction); None in results written before it was recorded.
    patient_dice: dict[str, float] | None = None
    # Per epoch: epoch, train_loss, val_loss, val_dice, lr (metrics.csv), and the verdict on it.
    curve: list[dict[str, float]] | None = None
    plateau: dict[str, Any] | None = None

    @property
    def plateau_verdict(self) -> Plateau | None:
        return Plateau.from_dict(self.plateau) if self.plateau is not None else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["test_cases"] = list(self.test_cases)
        d["test_kinds"] = list(self.test_kinds) if self.test_kinds else None
        return {"format": RESULT_FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeedResult:
        if d.get("format") != RESULT_FORMAT:
            raise DataError(f"not an experiment result (format {d.get('format')!r})")
        body = {k: v for k, v in d.items() if k != "format"}
        body["test_cases"] = tuple(body["test_cases"])
        body["test_kinds"] = tuple(body["test_kinds"]) if body.get("test_kinds") else None
        try:
            return cls(**body)
        except TypeError as exc:
            raise DataError(f"malformed experiment result: {exc}") from exc


@dataclass(frozen=True)
class CellSummary:
    """Mean, sample SD (ddof = 1; NaN for one seed), min and max over seeds of DSC and IoU (%)."""

    key: str
    n: int
    dsc_mean: float
    dsc_sd: float
    dsc_min: float
    dsc_max: float
    iou_mean: float
    iou_sd: float
    iou_min: float
    iou_max: float
    seeds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def summarize(key: str, results: Sequence[SeedResult]) -> CellSummary:
    """Aggregate the seeds of one run; metrics in percent."""
    if not results:
        raise InputError(f"{key}: no finished seeds to summarise")
    dsc = np.array([100.0 * r.dsc for r in results])
    iou = np.array([100.0 * r.iou for r in results])
    return CellSummary(key=key, n=len(results),
                       dsc_mean=float(dsc.mean()), dsc_sd=_sd(dsc), dsc_min=float(dsc.min()),
                       dsc_max=float(dsc.max()), iou_mean=float(iou.mean()), iou_sd=_sd(iou),
                       iou_min=float(iou.min()), iou_max=float(iou.max()),
                       seeds=tuple(r.seed for r in results))


def test_kinds(manifest: Manifest) -> tuple[str, ...] | None:
    """("real",) when the test split holds real CT (the paper tests on patients); else all kinds."""
    if manifest.case_ids("test", ("real",)):
        return ("real",)
    if not manifest.case_ids("test"):
        raise DataError("the dataset's test split is empty; prepare it with --test "
                        "(the tables are test-set numbers)")
    return None


def patient_dice(manifest: Manifest, cases: Sequence[VolumeMetrics]) -> dict[str, float]:
    """Volume DSC per test patient, pixel counts pooled over a patient's cases if it has several."""
    counts: dict[str, list[int]] = {}
    for c in cases:
        acc = counts.setdefault(manifest.cases[c.case].patient, [0, 0, 0])
        acc[0] += c.intersection_voxels
        acc[1] += c.ref_voxels
        acc[2] += c.pred_voxels
    return {p: paper_dsc(i, r, q) for p, (i, r, q) in sorted(counts.items())}


def seed_dir(config: RunnerConfig, run: RunSpec, seed: int) -> Path:
    return config.runs_dir / run.key / f"seed{seed}"


def eval_device(device: str) -> str:
    """The device evaluation and figures run on ("auto" resolved like the trainer does)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# Where the dataset lies may change between checkouts (archived results are committed); which
# dataset it is, is the experiment folder's fingerprint (pipeline), checked on every call.
_RELOCATABLE = frozenset({"data"})


def _same_protocol(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    # A key missing from a result written before its field existed means that field's default.
    defaults = TrainConfig.field_defaults()
    a, b = {**defaults, **a}, {**defaults, **b}
    return sorted(k for k in set(a) | set(b)
                  if k not in RESUMABLE_OVERRIDES | _RELOCATABLE and a.get(k) != b.get(k))


def read_result(path: Path) -> SeedResult:
    try:
        return SeedResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: unreadable experiment result ({exc})") from exc


def run_seed(config: RunnerConfig, run: RunSpec, seed: int,
             progress: Progress | None = None) -> tuple[SeedResult, bool]:
    """Train (or resume) and evaluate one seed; return its result and whether work was done."""
    folder = seed_dir(config, run, seed)
    tc = config.profile.train_config(run, data=str(config.data), out=str(folder), seed=seed,
                                     device=config.device)
    marker = folder / RESULT_FILE
    done = finished_result(config, run, seed)
    if done is not None:
        return done, False
    manifest = read_manifest(config.data)
    kinds = test_kinds(manifest)
    if progress:
        progress(f"{run.key} seed {seed}: training")
    trained = train(tc, resume=True)
    if progress:
        progress(f"{run.key} seed {seed}: evaluating on the test split")
    t0 = time.perf_counter()
    ev = evaluate_model(folder / BEST_FILE, config.data, "test",
                        device=eval_device(config.device),
                        batch_size=config.profile.val_batch_size, kinds=kinds)
    curve = read_curve(folder / METRICS_FILE)
    result = SeedResult(
        key=run.key, seed=seed, dsc=ev.pooled.dsc, iou=ev.pooled.iou,
        mean_slice_dice=ev.pooled.mean_slice_dice,
        test_cases=tuple(c.case for c in ev.cases), test_kinds=kinds,
        case_dice={c.case: c.dice for c in ev.cases},
        epochs_completed=trained.epochs_completed, best_epoch=trained.best_epoch,
        best_val_dice=trained.best_val_dice,
        train_seconds=float(sum(h["seconds"] for h in trained.history)),
        eval_seconds=time.perf_counter() - t0, train_config=tc.to_dict(),
        patient_dice=patient_dice(manifest, ev.cases), curve=curve,
        plateau=plateau([row["val_dice"] for row in curve]).to_dict())
    write_text_atomic(marker, json.dumps(result.to_dict(), indent=2) + "\n", overwrite=True)
    return result, True


def schedule(runs: Sequence[RunSpec], seeds: int) -> list[tuple[RunSpec, int]]:
    """Training order: seed 0 of every run first, then seed 1, …

    A campaign stopped part-way then leaves whole tables at fewer seeds rather than a few cells
    at every seed.
    """
    return [(run, seed) for seed in range(seeds) for run in runs]


def archive_path(archive: Path, run: RunSpec, seed: int) -> Path:
    """Where a finished seed's ``result.json`` is kept next to the tables (``cells/``)."""
    return Path(archive) / run.key / f"seed{seed}.json"


def finished_result(config: RunnerConfig, run: RunSpec, seed: int,
                    archive: Path | None = None) -> SeedResult | None:
    """The recorded result of a seed (its run folder first, then the archive), or None.

    A result made under other settings is refused: the folders belong to one protocol.
    """
    for path in (seed_dir(config, run, seed) / RESULT_FILE,
                 archive_path(archive, run, seed) if archive is not None else None):
        if path is not None and path.is_file():
            done = read_result(path)
            tc = config.profile.train_config(run, data=str(config.data), out="", seed=seed,
                                             device=config.device)
            diff = _same_protocol(done.train_config, tc.to_dict())
            if diff:
                raise InputError(f"{path}: finished with different settings ({', '.join(diff)}); "
                                 "use another output folder for another profile or dataset")
            return done
    return None


def archive_result(archive: Path, run: RunSpec, result: SeedResult) -> None:
    """Keep a finished seed's result in the archive (rewritten only when it changed)."""
    path = archive_path(archive, run, result.seed)
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text, overwrite=True)


@contextmanager
def seed_lock(config: RunnerConfig, run: RunSpec, seed: int) -> Iterator[bool]:
    """Hold ``seed<k>.lock`` while training a seed; yield False if another process holds it.

    An OS file lock (released when its process dies, so a killed campaign leaves nothing
    stale) lets several ``experiment`` processes share one runs folder, one seed each.
    """
    path = config.runs_dir / run.key / f"seed{seed}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        if fcntl is None:  # no advisory locks on this platform: one process per runs folder
            yield True
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def run_runs(config: RunnerConfig, runs: Sequence[RunSpec], progress: Progress | None = None,
             *, train_missing: bool = True,
             archive: Path | None = None) -> tuple[dict[str, list[SeedResult]], int]:
    """Run every seed of every run in :func:`schedule` order; return finished results by run
    (seeds ascending) and how many seeds were trained now.

    Finished seeds are read back; seeds another process is training are left to it, and with
    ``train_missing=False`` nothing is trained: the results are whatever has finished. Each
    finished seed is copied into ``archive`` (when given) as soon as it is known.
    """
    results: dict[str, list[SeedResult]] = {}
    done_now = 0
    order = schedule(runs, config.seeds)
    for i, (run, seed) in enumerate(order):
        result = finished_result(config, run, seed, archive)
        if result is None and train_missing:
            with seed_lock(config, run, seed) as mine:
                if not mine:
                    if progress:
                        progress(f"{run.key} seed {seed}: being trained by another process")
                    continue
                if progress:
                    progress(f"[{i + 1}/{len(order)}] {run.key} seed {seed}")
                result, worked = run_seed(config, run, seed, progress)
                done_now += int(worked)
        if result is not None:
            results.setdefault(run.key, []).append(result)
            if archive is not None:
                archive_result(archive, run, result)
    for values in results.values():
        values.sort(key=lambda r: r.seed)
    return results, done_now
