"""``spineseg segment``: CT (file, DICOM folder, or folder of cases) → mask, mesh, preview, stats."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from spineseg.errors import InputError
from spineseg.io.read import DEFAULT_MAX_VOXELS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment the spine in a CT (file, DICOM folder or cohort)",
                       description="Segment the spine: writes spine.nii.gz in the input's "
                       "geometry, a mesh, preview.png and stats.json per case.")
    p.add_argument("input", type=Path, help="CT file (NIfTI/NRRD/MHA), DICOM series folder, "
                   "or a folder of such cases")
    p.add_argument("-o", "--output", type=_output_folder, required=True, help="output folder")
    p.add_argument("--model", type=Path, default=None, help="model file (default: shipped model)")
    p.add_argument("--mesh", choices=["stl", "obj", "ply", "none"], default="stl")
    p.add_argument("--mesh-space", choices=["lps", "ras"], default="lps",
                   help="mesh coordinates (3D Slicer assumes LPS for STL/OBJ)")
    p.add_argument("--max-faces", type=int, default=200_000, help="mesh face budget")
    p.add_argument("--output-type", action="append", default=[], metavar="TYPE",
                   help="mask formats besides spine.nii.gz (always written): dicom-seg "
                        "(spine.seg.dcm, DICOM series input only), seg-nrrd (spine.seg.nrrd, "
                        "3D Slicer); repeat or comma-separate, e.g. dicom-seg,seg-nrrd")
    p.add_argument("--probabilities", action="store_true", help="also write spine_prob.nii.gz")
    p.add_argument("--no-preview", action="store_true", help="skip preview.png")
    p.add_argument("--vertebrae", action="store_true",
                   help="also split the mask into named vertebrae (vertebrae.nii.gz, .ctbl, "
                        ".json, .csv, .ply, vertebrae_preview.png, and vertebrae.seg.dcm/"
                        ".seg.nrrd with --output-type; see docs/vertebrae.md)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="keep every thresholded voxel (no island removal)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads for inference (default: torch's choice, all cores)")
    p.add_argument("--full-slice", "--no-region", dest="full_slice", action="store_true",
                   help="run the network on whole slices instead of locating the column first "
                        "and segmenting only the region around it")
    # spineseg.inference.predict.PRECISIONS, spelled out so that --help needs no torch import.
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"),
                   default="auto",
                   help="network arithmetic: auto = bfloat16 on CPUs with native support "
                        "(AVX-512 BF16/AMX; about 2x faster) and float16 on CUDA, else float32")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average with the left-right mirrored slices "
                        "(twice the inference time)")
    p.add_argument("--series", default=None, help="DICOM SeriesInstanceUID to use")
    p.add_argument("--max-voxels", type=int, default=DEFAULT_MAX_VOXELS, metavar="N",
                   help="refuse images (as declared or after resampling to the model's spacing) "
                        "with more voxels, before allocating them (default %(default)s)")
    p.add_argument("--shard", default="0/1", help="I/N: process every N-th case from I (0-based)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA GPU is available")
    return name


def _output_folder(text: str) -> Path:
    # Path("") is Path("."): an empty -o (an unset shell variable) would write into the cwd.
    if not text.strip():
        raise argparse.ArgumentTypeError("empty output folder (use -o . for the current folder)")
    return Path(text)


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise InputError(f"invalid --shard {text!r}: expected I/N, e.g. 0/4") from exc
    if n < 1 or not 0 <= i < n:
        raise InputError(f"invalid --shard {text!r}: need 0 <= I < N, e.g. 0/4")
    return i, n


def run(args: argparse.Namespace) -> int:
    from spineseg.export import check_output_types, parse_output_types
    from spineseg.inference.batch import is_dicom_folder, segment_batch
    from spineseg.inference.claim import claim_output_folder
    from spineseg.inference.model_file import load_segmentation_model
    from spineseg.inference.outputs import (
        OutputConfig,
        check_outputs,
        read_record,
        run_settings,
        vertebrae_of_segmentation,
        write_case_outputs,
    )
    from spineseg.inference.pipeline import SegmentConfig, segment
    from spineseg.inference.postprocess import PostprocessConfig
    from spineseg.inference.predict import PredictConfig, resolve_precision
    from spineseg.inference.region import RegionConfig
    from spineseg.reconstruction import MeshConfig

    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if args.max_voxels < 1:
        raise InputError("--max-voxels must be at least 1")
    if args.max_faces < 1:
        raise InputError("--max-faces must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be at least 1")
    shard = _shard(args.shard)
    device = _device(args.device)
    try:
        resolve_precision(args.precision, device)
    except InputError as exc:
        raise InputError(f"--precision {args.precision}: {exc}") from exc
    src: Path = args.input
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    mesh_fmt = None if args.mesh == "none" else args.mesh
    ocfg = OutputConfig(mesh_format=mesh_fmt, probabilities=args.probabilities,
                        preview=not args.no_preview, overwrite=args.overwrite,
                        output_types=parse_output_types(args.output_type),
                        vertebrae=args.vertebrae)
    batch = src.is_dir() and not is_dicom_folder(src)
    if not batch and shard != (0, 1):
        raise InputError(f"--shard {args.shard} splits a folder of cases; {src} is a single CT")
    if not batch:
        check_output_types(ocfg.output_types, [src])
        check_outputs(args.output, ocfg, [src])
    # Bars only on a terminal: in a log file or a pipe they are escape-code noise.
    progress = not args.quiet and sys.stderr.isatty()
    model = load_segmentation_model(args.model, device=device)
    cfg = SegmentConfig(
        device=device,
        series_uid=args.series,
        predict=PredictConfig(batch_size=args.batch_size, progress=progress,
                              mirror=args.tta, precision=args.precision),
        postprocess=PostprocessConfig(enabled=not args.no_postprocess),
        mesh=MeshConfig(space=args.mesh_space, max_faces=args.max_faces) if mesh_fmt else None,
        keep_probabilities=args.probabilities,
        max_voxels=args.max_voxels,
        threads=args.threads,
        region=RegionConfig(enabled=not args.full_slice),
    )
    if not batch:
        # Claimed for the whole run, so a second run into the same folder is refused at once.
        with claim_output_folder(args.output):
            check_outputs(args.output, ocfg, [src])
            res = segment(src, model, cfg)
            vertebrae = vertebrae_of_segmentation(res) if args.vertebrae else None
            written = write_case_outputs(res, args.output, ocfg, run_settings(model, cfg, ocfg),
                                         vertebrae)
        s = res.stats
        print(f"spine: {s['spine_volume_ml']:.1f} mL over {s['craniocaudal_extent_mm']:.0f} mm "
              f"({s['slices_with_spine']} slices) in {s['runtime_s']['total_s']:.1f} s")
        for path in written:
            print(f"wrote {path}")
        for flag in (read_record(args.output) or {}).get("flags", []):
            print(f"look at: {flag.get('code')}: {flag.get('message')}")
        return 0

    bars: list[tqdm] = []  # made once the batch has passed its up-front checks

    def start(n_cases: int) -> None:
        bars.append(tqdm(total=n_cases, desc="cases", unit="case", disable=not progress,
                         file=sys.stderr))

    def report(outcome) -> None:  # type: ignore[no-untyped-def]
        if bars:
            bars[0].update(1)
        if outcome.status == "failed":
            tqdm.write(f"failed: {outcome.case}: {outcome.message}", file=sys.stderr)

    try:
        result = segment_batch(src, args.output, model, cfg, ocfg, shard, on_case=report,
                               on_start=start)
    finally:
        for bar in bars:
            bar.close()
    done = sum(o.status == "done" for o in result.outcomes)
    skipped = sum(o.status == "skipped" for o in result.outcomes)
    flagged = sum(bool(o.flags) for o in result.outcomes)
    print(f"{done} segmented, {skipped} skipped (already done), {flagged} flagged for a look; "
          f"summary: {result.summary_path}; report: {result.report_path}")
    return 0
