"""``run_experiment``: one target (a table, a figure or all) from runs to written outputs.

The output folder is owned by one experiment: ``experiment.json`` records the profile's protocol,
the dataset's fingerprint and its split by patient, and a later call into the same folder must
match them (it may add seeds). Tables and figures are regenerated from the recorded results on
every call, so an interrupted ``all`` simply runs again: finished seeds are read back, unfinished
ones resume. Every finished seed's ``result.json`` is also kept as ``DIR/cells/<run>/seed<k>.json``,
small enough to commit next to the tables, which can be rebuilt from it when the runs folder (the
checkpoints) is gone.

Several processes may work on one experiment at once (one thread each on a multi-core CPU): a
seed being trained is locked by its process, the others pass over it, and each process writes
the tables from whatever has finished when it is done. ``train=False`` only reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spineseg.data.manifest import read_manifest
from spineseg.errors import InputError, OutputError
from spineseg.experiments.figures import (
    FIG6_NETWORKS,
    figure6,
    figure7,
    figure_curves,
    load_figure_model,
)
from spineseg.experiments.profiles import Profile, get_profile
from spineseg.experiments.runner import (
    RESULT_FILE,
    RunnerConfig,
    eval_device,
    run_runs,
    run_seed,
    seed_dir,
    seed_lock,
    summarize,
    test_kinds,
)
from spineseg.experiments.specs import NETWORK_LABELS, TABLES, RunSpec, get_table, runs_of
from spineseg.experiments.tables import (
    ReportContext,
    dataset_summary,
    hardware_summary,
    split_summary,
    write_table,
)
from spineseg.io import check_output_path, write_text_atomic
from spineseg.training.trainer import BEST_FILE

__all__ = ["TARGETS", "ExperimentConfig", "ExperimentOutcome", "run_experiment"]

TARGETS: tuple[str, ...] = ("table1", "table2", "table3", "fig6", "fig7", "curves", "all")
MARKER = "experiment.json"
MARKER_FORMAT = "spineseg-experiment/1"
CELLS_DIR = "cells"
_OUTPUT_NAMES = (*(f"{t}.{ext}" for t in TABLES for ext in ("md", "json")), "fig6.png",
                 "fig7.png", "curves.png")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExperimentConfig:
    """One ``spineseg experiment`` call. ``seeds=None``: the profile's default.

    ``profile`` is a profile's name or a :class:`Profile` itself; ``train=False`` trains nothing
    and writes the tables and figures that the finished seeds allow.
    """

    target: str
    data: Path
    out: Path
    profile: str | Profile = "quick"
    seeds: int | None = None
    device: str = "auto"
    runs_dir: Path | None = None
    command: str = ""
    overwrite: bool = False
    train: bool = True


@dataclass
class ExperimentOutcome:
    """What a call wrote and how much it had to train (0 on a complete re-run)."""

    written: list[Path] = field(default_factory=list)
    seeds_trained: int = 0
    seeds_total: int = 0


def _fingerprint(data: Path) -> str:
    m = read_manifest(data)
    body = {cid: [c.split, c.kind, c.image_sha256, c.mask_sha256] for cid, c in m.cases.items()}
    return hashlib.sha256(json.dumps([m.preprocessing, body], sort_keys=True).encode()).hexdigest()


def _claim_output(out: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Own ``out`` for this experiment, or check that it already is (see module doc)."""
    marker = out / MARKER
    if marker.is_file():
        try:
            old = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"{marker}: unreadable ({exc})") from exc
        # Never mixed, even with --overwrite: its runs would refuse to resume under new settings.
        for key in ("protocol", "dataset_fingerprint"):
            if old.get(key) != record[key]:
                raise InputError(f"{out} holds an experiment with another "
                                 f"{'profile' if key == 'protocol' else 'dataset'}; use another "
                                 "output folder")
        return
    else:
        for name in _OUTPUT_NAMES:
            check_output_path(out / name, overwrite)
    write_text_atomic(marker, json.dumps(record, indent=2) + "\n", overwrite=True)


def _split_record(data: Path) -> dict[str, list[str]]:
    m = read_manifest(data)
    return {split: sorted({m.cases[c].patient for c in m.case_ids(split)}) for split in m.splits}


def run_experiment(config: ExperimentConfig, progress: Progress | None = None) -> ExperimentOutcome:
    """Train, evaluate and report ``config.target`` resumably (see module doc)."""
    if config.target not in TARGETS:
        raise InputError(f"unknown target {config.target!r}; choose from {', '.join(TARGETS)}")
    profile = (config.profile if isinstance(config.profile, Profile)
               else get_profile(config.profile))
    out = Path(config.out)
    runs_dir = Path(config.runs_dir) if config.runs_dir is not None else out / "runs"
    rc = RunnerConfig(data=Path(config.data), runs_dir=runs_dir, profile=profile,
                      seeds=config.seeds if config.seeds is not None else profile.seeds,
                      device=config.device)
    manifest = read_manifest(rc.data)
    profile.check_dataset(manifest)
    kinds = test_kinds(manifest)
    if runs_dir.resolve() != (out / "runs").resolve() and (runs_dir / MARKER).exists():
        raise InputError(f"{runs_dir}: is an experiment output folder, not a runs folder")
    _claim_output(out, {"format": MARKER_FORMAT, "protocol": profile.protocol(),
                        "data": str(rc.data), "dataset_fingerprint": _fingerprint(rc.data),
                        "split_patients": _split_record(rc.data),
                        "runs_dir": str(rc.runs_dir)}, config.overwrite)
    archive = out / CELLS_DIR
    outcome = ExperimentOutcome()
    targets = list(TARGETS[:-1]) if config.target == "all" else [config.target]
    tables = [get_table(t) for t in targets if t in TABLES]
    if tables:
        results, trained = run_runs(rc, runs_of(tables), progress, train_missing=config.train,
                                    archive=archive)
        outcome.seeds_trained += trained
        outcome.seeds_total += sum(len(v) for v in results.values())
        summaries = {k: summarize(k, v) for k, v in results.items()}
        context = ReportContext(
            command=config.command, date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            hardware=hardware_summary(config.device),
            dataset=dataset_summary(manifest, rc.data), profile=profile, seeds=rc.seeds,
            test_cases=tuple(manifest.case_ids("test", kinds)),
            test_note=("real CT patients of the test split" if kinds == ("real",) else
                       "no real CT in the test split: every test case, phantoms included"),
            train_slices=sum(manifest.cases[c].slices for c in manifest.case_ids("train")),
            split=split_summary(manifest))
        for table in tables:
            outcome.written += write_table(table, summaries, context, out, results)
    device = eval_device(config.device)
    if "fig6" in targets:
        models = []
        for net in FIG6_NETWORKS:
            run = get_table("table1").cell(f"{net}-dice").run
            ckpt, worked = _seed0(rc, run, config.train, progress)
            outcome.seeds_trained += worked
            if ckpt is not None:
                models.append(load_figure_model(ckpt, NETWORK_LABELS[net], device))
        if len(models) == len(FIG6_NETWORKS):
            outcome.written.append(figure6(rc.data, models, out / "fig6.png", kinds=kinds,
                                           device=device))
        elif progress:
            progress("fig6: waiting for seed 0 of the SegNet, U-Net and proposed Dice-loss runs")
    if "fig7" in targets:
        run = get_table("table1").cell("msrunet-dice").run
        ckpt, worked = _seed0(rc, run, config.train, progress)
        outcome.seeds_trained += worked
        if ckpt is not None:
            model = load_figure_model(ckpt, NETWORK_LABELS["msrunet"], device)
            outcome.written.append(figure7(rc.data, model, out / "fig7.png", kinds=kinds,
                                           device=device))
        elif progress:
            progress("fig7: waiting for seed 0 of the proposed Dice-loss run")
    if "curves" in targets:
        every = runs_of(list(TABLES.values()))
        finished, _ = run_runs(rc, every, train_missing=False, archive=archive)
        if finished:
            outcome.written.append(figure_curves(finished, out / "curves.png",
                                                 keys=[r.key for r in every]))
    return outcome


def _seed0(rc: RunnerConfig, run: RunSpec, train: bool,
           progress: Progress | None) -> tuple[Path | None, int]:
    """Figures use seed 0's best checkpoint; train it if allowed and no other process is.

    Returns the checkpoint (None while it is not available) and whether a seed was trained.
    """
    folder = seed_dir(rc, run, 0)
    worked = False
    if train and not (folder / RESULT_FILE).is_file():
        with seed_lock(rc, run, 0) as mine:
            if mine:
                _, worked = run_seed(rc, run, 0, progress)
    ready = (folder / RESULT_FILE).is_file() and (folder / BEST_FILE).is_file()
    return (folder / BEST_FILE if ready else None), int(worked)
