"""What every benchmark mode times: the synthetic input volume and the model.

The speed run, the memory check and the ablation all import this module (and it imports none of
them). The model is the shipped default unless a file is given; random weights of the shipped
architecture only when asked for, because they give an empty mask and so skip the cleaning and
meshing work a real segmentation pays for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from spineseg.data.phantom import PhantomConfig, generate_phantom
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import InputError, ModelError
from spineseg.inference.model_file import (
    SegmentationModel,
    default_model_path,
    read_model_payload,
    save_segmentation_model,
    verified_default_model,
)
from spineseg.io import Volume
from spineseg.models import build_model

__all__ = ["MAX_GENERATED_SLICES", "MODEL_SOURCES", "build_volume", "describe_model",
           "model_record", "prepare_model_file"]

# Phantoms are generated at most this many slices deep, then mirror-tiled along z: generation
# holds several float64 copies of the volume, which would dwarf what is being measured.
MAX_GENERATED_SLICES = 100
# Used for --random-weights only where the shipped file (whose architecture it copies) is absent.
FALLBACK_ARCHITECTURE = ("msrunet", {"base_width": 16, "depth": 4},
                         Preprocessing(context_slices=1, context_mm=3.0))
SHIPPED, GIVEN, RANDOM = "shipped default", "model file", "random weights"
MODEL_SOURCES = (SHIPPED, GIVEN, RANDOM)


def build_volume(size: int, slices: int, seed: int = 0) -> tuple[Volume, list[str]]:
    """A phantom of ``size × size × slices`` (int16 HU) at 0.8 mm in-plane, and how it was made.

    From 400 voxels up the whole body is in view (a 512 matrix covers 410 mm, as a typical
    abdominal CT); smaller sizes are a tight field of view around the column, so that a small
    benchmark has small slices rather than a body squeezed into coarse pixels. At most
    :data:`MAX_GENERATED_SLICES` are generated; deeper volumes repeat them mirrored along z
    (mirroring keeps the anatomy continuous at the seams).
    """
    gen = min(slices, MAX_GENERATED_SLICES)
    body = size >= 400
    cfg = PhantomConfig(shape=(size, size, max(gen, 16)), inplane_spacing_mm=(0.8, 0.8),
                        slice_thickness_mm=(1.0, 1.0), min_z_extent_mm=16.0,
                        crop_prob=0.0 if body else 1.0, reorient_prob=0.0, center_level="L1")
    ph = generate_phantom(seed, cfg)
    block = np.asarray(ph.ct.array)
    fov = "whole-body" if body else "tight (column-centred)"
    notes = [f"input: synthetic phantom (seed {seed}), {fov} field of view, "
             f"{ph.ct.spacing[0]:.2f} mm in-plane, {ph.ct.spacing[2]:.2f} mm slices"]
    if slices > block.shape[0]:
        reps = -(-slices // block.shape[0])
        block = np.concatenate([block if i % 2 == 0 else block[::-1] for i in range(reps)])
        notes.append(f"{block.shape[0] // reps} generated slices mirror-tiled along z to "
                     f"{slices}")
    arr = np.ascontiguousarray(block[:slices], dtype=np.int16)
    return Volume(arr, ph.ct.spacing, ph.ct.origin, ph.ct.direction), notes


def _shipped_architecture() -> tuple[str, dict[str, Any], Preprocessing]:
    try:
        payload = read_model_payload(default_model_path())
        return (str(payload["model_name"]), dict(payload["model_config"]),
                Preprocessing.from_dict(payload["preprocessing"]))
    except (ModelError, OSError, KeyError, TypeError, ValueError):
        return FALLBACK_ARCHITECTURE


def prepare_model_file(model_path: str | None, folder: Path, *, random_weights: bool = False,
                       base_width: int | None = None, depth: int | None = None,
                       ) -> tuple[Path, str]:
    """The model file to time and where it came from (one of :data:`MODEL_SOURCES`).

    Default: the shipped model, its SHA-256 checked. ``random_weights``: a file in ``folder``
    holding the shipped architecture (``base_width``/``depth`` changed where given) with seeded
    random weights.
    """
    if model_path is not None and random_weights:
        raise InputError("a model file and random weights exclude each other: give one")
    if model_path is not None:
        return Path(model_path), GIVEN
    if not random_weights:
        return verified_default_model()[0], SHIPPED
    name, config, pre = _shipped_architecture()
    config = {**config, "in_channels": pre.channels}
    if base_width is not None:
        config["base_width"] = base_width
    if depth is not None:
        config["depth"] = depth
    torch.manual_seed(0)
    net = build_model(name, **config)
    path = folder / f"random-{name}-w{config['base_width']}-d{config['depth']}.pt"
    save_segmentation_model(path, model_name=name, model_config=net.config.to_dict(),
                            state_dict=net.state_dict(), preprocessing=pre, overwrite=True)
    return path, RANDOM


def model_record(model: SegmentationModel, source: str) -> dict[str, Any]:
    """Which model was timed, for the report: name, origin, file, SHA-256, parameter count."""
    random = source == RANDOM
    return {"name": model.model_name, "source": source, "random_weights": random,
            "file": None if random else model.source,
            "sha256": None if random else model.sha256,
            "parameters": int(sum(p.numel() for p in model.network.parameters())),
            "config": dict(model.model_config)}


def describe_model(record: dict[str, Any]) -> str:
    """One line naming the timed model, as the CLI prints it."""
    cfg = record["config"]
    arch = f"{record['name']} base_width={cfg.get('base_width')} depth={cfg.get('depth')}"
    count = f"{record['parameters']:,} parameters"
    if record["random_weights"]:
        return (f"{arch} with RANDOM weights (--random-weights: same arithmetic as trained "
                f"weights, but an empty mask skips cleaning and meshing), {count}")
    origin = (f"shipped default {Path(record['file']).name}" if record["source"] == SHIPPED
              else f"file {record['file']}")
    return f"{arch}, {origin}, SHA-256 {record['sha256'][:12]}…, {count}"
