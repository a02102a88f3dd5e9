"""Each inference speed-up switched off on its own: the evidence that it is worth keeping.

Times ``predict_probabilities`` (the network part of the pipeline, where the time goes) on the
canonical, model-spacing slices of the benchmark phantom, for the default PredictConfig and for
each knob changed one at a time, median of ``repeats`` after a warm-up. ``max_abs_prob_diff``
is against the default; with random weights (``random_weights=True``) "no body crop" differs
in the air outside the crop, where the crop writes 0 and an untrained network outputs anything.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spineseg.benchmark.inputs import build_volume, model_record, prepare_model_file
from spineseg.inference.model_file import load_segmentation_model
from spineseg.inference.optimize import configure_threads
from spineseg.inference.predict import PredictConfig, predict_probabilities
from spineseg.io import CANONICAL, reorient, resample_spacing

# (label, change to the default PredictConfig or threads)
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default (all speed-ups)", {}),
    ("no BN folding", {"fold_batchnorm": False}),
    ("no channels-last", {"channels_last": False}),
    ("no BN folding, no channels-last", {"fold_batchnorm": False, "channels_last": False}),
    ("no body crop", {"crop_to_body": False}),
    ("batch 1", {"batch_size": 1}),
    ("batch 4", {"batch_size": 4}),
    ("batch 16", {"batch_size": 16}),
    ("skip boneless slices", {"skip_boneless_slices": True}),
    ("1 thread", {"threads": 1}),
)


@dataclass(frozen=True)
class AblationRow:
    label: str
    seconds: float
    slices_per_s: float
    relative_to_default: float
    max_abs_prob_diff: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AblationReport:
    """The rows, and which model they were timed with."""

    model: dict[str, Any]
    rows: list[AblationRow]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_ablation(size: int = 512, slices: int = 32, repeats: int = 3,
                 threads: int | None = None, model_path: str | None = None,
                 seed: int = 0, random_weights: bool = False) -> AblationReport:
    """Time every variant on the same slices; ``max_abs_prob_diff`` is against the default.

    The model is the shipped one unless ``model_path`` or ``random_weights`` says otherwise.
    """
    default_threads = configure_threads(threads)
    with tempfile.TemporaryDirectory(prefix="spineseg-ablate-") as tmp:
        path, source = prepare_model_file(model_path, Path(tmp), random_weights=random_weights)
        model = load_segmentation_model(path)
        timed = model_record(model, source)
    vol, _ = build_volume(size, slices, seed)
    canon = reorient(vol, CANONICAL)
    sx, sy = model.preprocessing.spacing_xy
    hu = np.asarray(resample_spacing(canon, (sx, sy, canon.spacing[2])).array)
    sz = float(canon.spacing[2])
    base = PredictConfig(progress=False)
    plans = []
    for label, change in VARIANTS:
        change = dict(change)
        plans.append((label, int(change.pop("threads", default_threads)),
                      replace(base, **change)))
    for _, n_threads, cfg in plans:  # warm-up: oneDNN kernel selection for every shape
        torch.set_num_threads(n_threads)
        predict_probabilities(model, hu[: cfg.batch_size], cfg, spacing_z=sz)
    # Round-robin over variants, so load from other processes drifts over all of them alike.
    times: dict[str, list[float]] = {label: [] for label, _, _ in plans}
    probs: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for label, n_threads, cfg in plans:
            torch.set_num_threads(n_threads)
            t = time.perf_counter()
            probs[label] = predict_probabilities(model, hu, cfg, spacing_z=sz)
            times[label].append(time.perf_counter() - t)
    reference = probs[plans[0][0]].astype(np.float32)
    first = statistics.median(times[plans[0][0]])
    rows: list[AblationRow] = []
    for label, _, _ in plans:
        sec = statistics.median(times[label])
        diff = float(np.abs(probs[label].astype(np.float32) - reference).max())
        rows.append(AblationRow(label, sec, hu.shape[0] / sec, first / sec, diff))
    torch.set_num_threads(default_threads)
    return AblationReport(model=timed, rows=rows)
