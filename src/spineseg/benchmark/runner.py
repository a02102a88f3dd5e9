"""``run_benchmark``: the shipped pipeline and two peer networks, one process, one input.

The model timed is the shipped default unless a file or random weights are asked for, and the
report names it (file, SHA-256, parameter count): a figure is only as good as its model.
What is timed is ``spineseg.inference.pipeline.segment`` from a NIfTI file on disk (read →
reorient → resample → slice inference → threshold → clean → mesh), median of ``repeats`` runs
after one warm-up run (the first run pays for oneDNN kernel selection and page faults), with the
coarse-to-fine region (the default) and, in the same run, on whole slices (``segment
--full-slice``), each against the same peer timings. Peers get
the same input; MONAI's BasicUNet runs through the very same pipeline on the middle
``peer_slices`` slices (ours is re-timed on the same slices for its ratio); the nnU-Net 3-D
network runs on the whole volume, because its cost is per 3 mm window, not per slice.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spineseg.benchmark.inputs import build_volume, model_record, prepare_model_file
from spineseg.benchmark.memory import PIPELINE_PHASES, PeakRSS
from spineseg.benchmark.peers import (
    NnUNetFastSpec,
    basic_unet_model,
    build_nnunet_fast,
    run_nnunet_fast,
)
from spineseg.errors import InputError
from spineseg.inference.model_file import SegmentationModel, load_segmentation_model
from spineseg.inference.optimize import configure_threads, physical_cores
from spineseg.inference.pipeline import SegmentConfig, segment
from spineseg.inference.predict import PredictConfig, resolve_precision
from spineseg.inference.region import RegionConfig
from spineseg.io import Volume, write_image
from spineseg.reconstruction import MeshConfig

__all__ = ["BenchmarkConfig", "BenchmarkReport", "machine_info", "run_benchmark"]


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to run: the shipped model unless ``model_path`` is given; ``random_weights`` times
    the shipped architecture untrained instead (``base_width``/``depth`` override its own)."""

    size: int = 512
    slices: int = 300
    repeats: int = 3
    device: str = "cpu"
    model_path: str | None = None
    random_weights: bool = False
    base_width: int | None = None
    depth: int | None = None
    threads: int | None = None
    batch_size: int = 8
    peers: bool = True
    nnunet: bool = True
    peer_slices: int = 48
    peer_repeats: int = 1
    nnunet_spec: NnUNetFastSpec = field(default_factory=NnUNetFastSpec)
    mesh: bool = True
    seed: int = 0
    #: Time the pipeline with the coarse-to-fine region (the default) or on whole slices only.
    region: bool = True
    #: With ``region``: also time whole slices in the same run, for the region's own gain.
    compare_full_slice: bool = True
    #: The network's arithmetic (``segment --precision``). When it resolves to other than
    #: float32, the nnU-Net peer is timed at float32 (how nnU-Net runs on a CPU) and again at
    #: the same precision as ours, so each ratio compares like with like.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.size < 32 or self.slices < 4:
            raise InputError(f"benchmark volume must be at least 32×32×4, got "
                             f"{self.size}×{self.size}×{self.slices}")
        if self.repeats < 1 or self.peer_repeats < 1 or self.peer_slices < 1:
            raise InputError("repeats, peer_repeats and peer_slices must be >= 1")
        if self.model_path is not None and self.random_weights:
            raise InputError("a model file and random weights exclude each other: give one")
        resolve_precision(self.precision, self.device)


@dataclass
class BenchmarkReport:
    """Everything measured; ``to_dict`` is the ``--json`` output."""

    machine: dict[str, Any]
    input: dict[str, Any]
    ours: dict[str, Any]
    peers: dict[str, dict[str, Any]]
    ratios: dict[str, float]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, RAM, torch/MONAI versions, threads, load (other jobs skew timings)."""
    import monai

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
        "ram_bytes": ram, "torch": torch.__version__, "monai": monai.__version__,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _subvolume(vol: Volume, n: int) -> Volume:
    z0 = max((vol.array.shape[0] - n) // 2, 0)
    origin = vol.to_sitk().TransformIndexToPhysicalPoint((0, 0, int(z0)))
    return Volume(np.ascontiguousarray(vol.array[z0:z0 + n]), vol.spacing, tuple(origin),
                  vol.direction)


def _time_segment(path: Path, model: SegmentationModel, cfg: SegmentConfig, repeats: int,
                  ) -> dict[str, Any]:
    """Median wall time, network time and peak RSS of ``segment`` over ``repeats`` runs."""
    totals, nets, peaks, phase_peaks = [], [], [], []
    runtime: dict[str, float] = {}
    for _ in range(repeats):
        with PeakRSS() as mem:
            t = time.perf_counter()
            res = segment(path, model, cfg)
            totals.append(time.perf_counter() - t)
        runtime = dict(res.stats["runtime_s"])
        nets.append(float(runtime["inference_s"]))
        peaks.append(mem.peak_bytes)
        phase_peaks.append(mem.phase_peaks({k: float(runtime.get(k, 0.0))
                                            for k in PIPELINE_PHASES}))
    n = int(res.stats["slices_total"])
    total, net = statistics.median(totals), statistics.median(nets)
    return {"slices": n, "seconds": total, "slices_per_s": n / total,
            "precision": res.stats["precision"],
            "network_seconds": net, "network_slices_per_s": n / net,
            "peak_rss_bytes": max(peaks), "phase_peak_rss_bytes": phase_peaks[-1],
            "phases_s": runtime, "repeats": repeats, "all_seconds": totals}


def _time_nnunet(ct_path: Path, net3d: torch.nn.Module, spec: NnUNetFastSpec, repeats: int,
                 dtype: torch.dtype, slices: int) -> dict[str, Any]:
    """Median wall and network time of the nnU-Net peer on the file, after a one-patch warm-up."""
    from spineseg.io import read_image

    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype,
                                                enabled=dtype != torch.float32):
        net3d(torch.zeros(1, 1, *spec.patch_zyx))  # warm-up: oneDNN picks its kernels
    runs = []
    with PeakRSS() as mem:
        for _ in range(repeats):
            t = time.perf_counter()
            r = run_nnunet_fast(read_image(ct_path), net3d, spec, dtype)
            r["seconds"] = time.perf_counter() - t
            runs.append(r)
    sec = statistics.median(r["seconds"] for r in runs)
    net_s = statistics.median(r["network_s"] for r in runs)
    return {"slices": slices, "seconds": sec, "slices_per_s": slices / sec,
            "network_seconds": net_s, "network_slices_per_s": slices / net_s, "peak_rss_bytes": mem.peak_bytes,
            "windows": runs[-1]["windows"], "grid_zyx": runs[-1]["grid_zyx"],
            "spec": asdict(spec), "repeats": repeats, "precision": str(dtype).removeprefix(
                "torch."), "parameters": sum(p.numel() for p in net3d.parameters())}


def run_benchmark(config: BenchmarkConfig | None = None,
                  progress: Callable[[str], None] | None = None) -> BenchmarkReport:
    """Run the benchmark; ``progress`` (e.g. the CLI's stderr printer) hears each stage."""
    cfg = config or BenchmarkConfig()
    say = progress or (lambda _msg: None)
    threads = configure_threads(cfg.threads)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="spineseg-bench-") as tmp:
        folder = Path(tmp)
        say(f"building a {cfg.size}×{cfg.size}×{cfg.slices} phantom")
        vol, vol_notes = build_volume(cfg.size, cfg.slices, cfg.seed)
        notes += vol_notes
        ct_path = write_image(vol, folder / "ct.nii.gz")
        model_path, source = prepare_model_file(cfg.model_path, folder,
                                                random_weights=cfg.random_weights,
                                                base_width=cfg.base_width, depth=cfg.depth)
        model = load_segmentation_model(model_path, device=cfg.device)
        timed = model_record(model, source)
        seg_cfg = SegmentConfig(device=cfg.device,
                                predict=PredictConfig(batch_size=cfg.batch_size, progress=False,
                                                      precision=cfg.precision),
                                mesh=MeshConfig() if cfg.mesh else None,
                                region=RegionConfig(enabled=cfg.region))
        sub = _subvolume(vol, min(cfg.peer_slices, cfg.slices))
        sub_path = write_image(sub, folder / "ct_sub.nii.gz")

        say("warm-up run (not timed)")
        warm = _subvolume(vol, min(cfg.batch_size, cfg.slices))
        warm_path = write_image(warm, folder / "warm.nii.gz")
        segment(warm_path, model, seg_cfg)
        say(f"timing the spineseg pipeline ({cfg.repeats} runs) with {source} "
            f"{model.model_name}")
        ours = _time_segment(ct_path, model, seg_cfg, cfg.repeats)
        ours["model"] = timed
        ours["region"] = cfg.region
        peers: dict[str, dict[str, Any]] = {}
        ratios: dict[str, float] = {}
        if cfg.region and cfg.compare_full_slice:
            say(f"timing the spineseg pipeline on whole slices ({cfg.repeats} runs)")
            ours["full_slice"] = _time_segment(
                ct_path, model, replace(seg_cfg, region=RegionConfig(enabled=False)),
                cfg.repeats)
            ratios["region_vs_full_slice"] = (ours["slices_per_s"]
                                              / ours["full_slice"]["slices_per_s"])

        if cfg.peers:
            say(f"timing MONAI BasicUNet in the same pipeline on {sub.array.shape[0]} slices")
            ours_sub = _time_segment(sub_path, model, seg_cfg, cfg.peer_repeats)
            basic = basic_unet_model(model.preprocessing, model.threshold)
            variants = {}
            # The peer gets the better of plain eager mode and spineseg's own rewrites.
            for label, fold, cl in (("plain", False, False), ("optimised", True, True)):
                pcfg = SegmentConfig(device=cfg.device, mesh=seg_cfg.mesh, predict=PredictConfig(
                    batch_size=cfg.batch_size, progress=False, fold_batchnorm=fold,
                    channels_last=cl, precision=cfg.precision), region=seg_cfg.region)
                segment(warm_path, basic, pcfg)
                variants[label] = _time_segment(sub_path, basic, pcfg, cfg.peer_repeats)
            best = max(variants.values(), key=lambda v: v["slices_per_s"])
            best["parameters"] = sum(p.numel() for p in basic.network.parameters())
            peers["monai_basicunet"] = {**best, "variants": {k: v["slices_per_s"]
                                                             for k, v in variants.items()},
                                        "ours_same_slices": ours_sub}
            ratios["monai_basicunet"] = ours_sub["slices_per_s"] / best["slices_per_s"]
            notes.append(f"MONAI BasicUNet measured on the middle {sub.array.shape[0]} slices "
                         "(best of plain / BN-folded+channels-last), compared with spineseg on "
                         "the same slices; rates are slices/s")
        if cfg.peers and cfg.nnunet:
            spec = cfg.nnunet_spec
            say("timing nnU-Net 3-D (TotalSegmentator --fast network) on the whole volume")
            net3d = build_nnunet_fast(spec)
            ours_dtype = resolve_precision(cfg.precision, cfg.device)
            dtypes = [torch.float32] + ([ours_dtype] if ours_dtype != torch.float32 else [])
            for dtype in dtypes:
                key = "nnunet_3d_fast" if dtype == torch.float32 else \
                    "nnunet_3d_fast_same_precision"
                peers[key] = _time_nnunet(ct_path, net3d, spec, cfg.peer_repeats, dtype,
                                          int(vol.array.shape[0]))
                theirs = peers[key]["slices_per_s"]
                ratios[key] = ours["slices_per_s"] / theirs
                if "full_slice" in ours and dtype == torch.float32:
                    ratios["nnunet_3d_fast_full_slice"] = (ours["full_slice"]["slices_per_s"]
                                                           / theirs)
            notes.append("nnU-Net 3-D fast measured on the whole volume (read → 3 mm → sliding "
                         "window → argmax → input grid) with random weights, at float32 as "
                         "nnU-Net runs on a CPU" + (f", and again at {ours['precision']} like "
                                                    "ours" if len(dtypes) > 1 else ""))
    if peers:
        notes.append("peer networks run with random weights: the same arithmetic as trained "
                     "weights, so the same time")
    machine = machine_info(cfg.device)
    machine["torch_threads"] = threads
    inp = {"shape_xyz": [int(s) for s in vol.shape_xyz],
           "spacing_mm": [round(float(s), 4) for s in vol.spacing], "dtype": "int16",
           "format": "NIfTI (.nii.gz)"}
    return BenchmarkReport(machine=machine, input=inp, ours=ours, peers=peers, ratios=ratios,
                           notes=notes)
