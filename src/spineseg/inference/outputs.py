"""Write one case's outputs all-or-nothing.

Everything is written into a hidden staging folder beside OUTDIR and only then renamed into place,
so an interrupted run never leaves a mask without its stats (batch mode treats ``stats.json`` as the
"case finished" marker) and never replaces good outputs with half of a new set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spineseg.errors import OutputError
from spineseg.inference.pipeline import SegmentResult
from spineseg.inference.preview import save_preview
from spineseg.io import write_image
from spineseg.io.mesh import MESH_FORMATS, write_mesh


@dataclass(frozen=True)
class OutputConfig:
    mesh_format: str | None = "stl"
    probabilities: bool = False
    preview: bool = True
    overwrite: bool = False


def planned_outputs(outdir: Path, cfg: OutputConfig) -> list[Path]:
    names = ["spine.nii.gz", "stats.json"]
    if cfg.preview:
        names.append("preview.png")
    if cfg.mesh_format:
        names.append(f"spine.{cfg.mesh_format}")
    if cfg.probabilities:
        names.append("spine_prob.nii.gz")
    return [outdir / n for n in names]


def check_outputs(outdir: Path, cfg: OutputConfig, inputs: list[Path] | None = None) -> None:
    """Fail before any work if outputs exist (without overwrite) or OUTDIR is an input."""
    if cfg.mesh_format and cfg.mesh_format not in MESH_FORMATS:
        raise OutputError(f"unsupported mesh format {cfg.mesh_format!r} "
                          f"(use one of {', '.join(MESH_FORMATS)} or none)")
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: output path exists and is not a folder")
    # Found now, not after minutes of inference: a path below a regular file can never be made.
    resolved = outdir.resolve()
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{outdir}: cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{outdir}: cannot be created: {existing} is not writable")
    for src in inputs or []:
        s, o = src.resolve(), outdir.resolve()
        # Outputs inside an input folder would be mixed into a DICOM series or picked up as
        # cases by the next batch run.
        if s == o or (s.is_dir() and o.is_relative_to(s)):
            raise OutputError(f"{outdir}: output folder must not be (inside) the input folder {src}")
    if not cfg.overwrite:
        existing = [p for p in planned_outputs(outdir, cfg) if p.exists()]
        if existing:
            raise OutputError(f"{existing[0]}: already exists (use --overwrite to replace it)")


def write_case_outputs(result: SegmentResult, outdir: str | os.PathLike[str],
                       cfg: OutputConfig) -> list[Path]:
    """Write mask, optional probabilities, mesh, preview and stats; returns the final paths."""
    out = Path(outdir)
    check_outputs(out, cfg)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"{out}: cannot write here ({exc.strerror})") from exc
    try:
        write_image(result.mask, stage / "spine.nii.gz")
        if cfg.probabilities and result.probabilities is not None:
            write_image(result.probabilities, stage / "spine_prob.nii.gz")
        if cfg.mesh_format and result.mesh is not None:
            write_mesh(result.mesh, stage / f"spine.{cfg.mesh_format}")
        if cfg.preview:
            src = result.stats.get("input", {}).get("source", "")
            save_preview(result.canonical_ct, result.canonical_mask, result.mesh,
                         stage / "preview.png", title=Path(src).name if src else "")
        (stage / "stats.json").write_text(json.dumps(result.stats, indent=2) + "\n", encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        # stats.json last: its presence marks a complete case.
        for name in sorted((p.name for p in stage.iterdir()), key=lambda n: n == "stats.json"):
            os.replace(stage / name, out / name)
            written.append(out / name)
        return written
    except OSError as exc:
        raise OutputError(f"{out}: writing outputs failed ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
