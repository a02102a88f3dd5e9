"""The end-to-end demo behind ``make demo``: a synthetic CT as DICOM → mask, mesh, preview, Dice.

It exercises the product path a user takes with a real scan (DICOM reading, reorientation,
in-plane resampling, slice inference, island removal, meshing) on a phantom whose truth is known,
so it can print an honest Dice without any patient data. Offline; about a minute on 2 CPU cores.

The output folder belongs to the demo: a re-run replaces the previous demo's outputs in it (so
``make demo`` works every time), and refuses a folder holding anything the demo does not write.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spineseg.data.phantom import PhantomConfig, generate_phantom
from spineseg.errors import OutputError
from spineseg.evaluation.metrics import volume_metrics
from spineseg.inference.model_file import SegmentationModel, load_segmentation_model
from spineseg.inference.outputs import OutputConfig, write_case_outputs
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.predict import PredictConfig
from spineseg.io import describe, read_image, resample_to, write_dicom_series, write_image
from spineseg.io.mesh import MESH_FORMATS

# What run_demo writes into its folder; spineseg's hidden staging files for them start with
# "." + one of these names.
_ENTRIES = ("phantom_dicom", "phantom_truth.nii.gz", "segmentation")
_SEGMENTATION_FILES = frozenset({"spine.nii.gz", "spine_prob.nii.gz", "stats.json", "preview.png",
                                 *(f"spine.{fmt}" for fmt in MESH_FORMATS)})


@dataclass(frozen=True)
class DemoConfig:
    """A lumbar phantom with a full body in view (pelvis, ribs and table as confounders)."""

    seed: int = 11
    shape: tuple[int, int, int] = (256, 256, 80)
    noise_sd: tuple[float, float] = (30.0, 30.0)
    progress: bool = True


@dataclass
class DemoResult:
    outdir: Path
    dicom_dir: Path
    truth_path: Path
    outputs: list[Path]
    dice: float
    input_info: dict[str, Any]
    stats: dict[str, Any]
    seconds: float
    phantom_params: dict[str, Any] = field(default_factory=dict)


def _known_file(folder: str, name: str) -> bool:
    return name.endswith(".dcm") if folder == "phantom_dicom" else name in _SEGMENTATION_FILES


def _foreign_entry(out: Path) -> Path | None:
    """The first thing in ``out`` that an earlier demo did not write, if any."""
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.name.startswith(".") and entry.name[1:].startswith(_ENTRIES):
            continue  # staging left by an interrupted run
        if entry.name == "phantom_truth.nii.gz" and entry.is_file():
            continue
        if entry.name in ("phantom_dicom", "segmentation") and entry.is_dir():
            for child in sorted(entry.iterdir()):
                if child.is_symlink() or not child.is_file() or not _known_file(entry.name,
                                                                                child.name):
                    return child
            continue
        return entry
    return None


def _clear_previous_demo(out: Path) -> None:
    """Remove an earlier demo's outputs from ``out``; touch nothing if it holds anything else."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    foreign = _foreign_entry(out)
    if foreign is not None:
        raise OutputError(f"{out}: holds {foreign.relative_to(out)}, which the demo did not write; "
                          "the demo replaces only its own earlier output: choose another -o")
    for entry in out.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def run_demo(outdir: str | os.PathLike[str], model: SegmentationModel | None = None,
             config: DemoConfig | None = None) -> DemoResult:
    """Generate, write as DICOM, read back, segment, and score against the phantom's truth.

    An earlier demo's outputs in ``outdir`` are replaced; a folder holding anything else is
    refused (:class:`OutputError`) before any work.
    """
    cfg = config or DemoConfig()
    out = Path(outdir)
    dicom_dir, truth_path = out / "phantom_dicom", out / "phantom_truth.nii.gz"
    seg_dir = out / "segmentation"
    _clear_previous_demo(out)
    t0 = time.perf_counter()
    net = model or load_segmentation_model(None)
    phantom = generate_phantom(cfg.seed, PhantomConfig(shape=cfg.shape, crop_prob=0.0,
                                                      noise_sd=cfg.noise_sd))
    write_dicom_series(phantom.ct, dicom_dir, series_description="spineseg demo phantom")
    write_image(phantom.mask, truth_path)
    ct = read_image(dicom_dir)
    result = segment(ct, net, SegmentConfig(predict=PredictConfig(progress=cfg.progress)))
    outputs = write_case_outputs(result, seg_dir, OutputConfig())
    truth = resample_to(phantom.mask, result.mask, interpolation="nearest")
    dice = volume_metrics(result.mask.array, truth.array, result.mask.spacing).dice
    return DemoResult(out, dicom_dir, truth_path, outputs, dice, describe(ct).to_dict(),
                      result.stats, time.perf_counter() - t0, phantom.params)
