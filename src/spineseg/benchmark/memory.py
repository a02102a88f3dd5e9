"""Peak resident memory of a block of code, and the 512×512×800 memory check.

``ru_maxrss`` is the peak over the whole life of a process, so after the phantom is generated it
says nothing about the pipeline. Two ways round that, both used:

* Linux lets a process reset its own high-water mark (``echo 5 > /proc/self/clear_refs``), after
  which ``VmHWM`` in /proc/self/status is the exact peak from that moment on.
* a sampling thread reads ``VmRSS`` every few milliseconds, which also says *when* the peak
  happened, so it can be attributed to a pipeline phase.

The memory check runs ``segment()`` in a freshly spawned process, so the figure it reports is
what a user's ``spineseg segment`` would need, not what the benchmark's own arrays occupy.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from types import TracebackType
from typing import Any

from spineseg.benchmark.inputs import (
    build_volume,
    model_record,
    prepare_model_file,
)
from spineseg.errors import InputError, ResourceError
from spineseg.inference.model_file import load_segmentation_model
from spineseg.io import write_image

GIB = 1024**3
_STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text(encoding="utf-8").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux /proc), or None where it cannot be read."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def lifetime_peak_rss_bytes() -> int:
    """``ru_maxrss`` of this process (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if peak > 1 << 40 else int(peak) * 1024


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakRSS:
    """Context manager: peak resident memory of the enclosed block, and an RSS timeline.

    ``peak_bytes`` is the reset VmHWM where available (exact), else the sampled maximum;
    ``samples`` are ``(seconds since entry, rss bytes)``.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self.peak_bytes = 0
        self.exact = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = current_rss_bytes()
            if rss is not None:
                self.samples.append((time.perf_counter() - self._t0, rss))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.exact = reset_peak_rss()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        sampled = max((r for _, r in self.samples), default=0)
        hwm = _status_kib("VmHWM") if self.exact else None
        self.peak_bytes = max(sampled, hwm * 1024) if hwm is not None else sampled

    def phase_peaks(self, phases_s: dict[str, float]) -> dict[str, int]:
        """Sampled peak RSS within each of consecutive phases given as ``{name: duration}``."""
        out: dict[str, int] = {}
        start = 0.0
        for name, dur in phases_s.items():
            inside = [r for t, r in self.samples if start <= t < start + dur]
            out[name] = max(inside, default=0)
            start += dur
        return out


# Phases of segment() in execution order, as named in its stats["runtime_s"].
PIPELINE_PHASES = ("read_s", "load_model_s", "preprocess_s", "locate_s", "inference_s",
                   "postprocess_s", "mesh_s")


@dataclass(frozen=True)
class MemoryConfig:
    """The memory check: a (size × size × slices) int16 volume, segmented in a fresh process
    by the shipped model, ``model_path``, or (``random_weights``) the untrained architecture."""

    size: int = 512
    slices: int = 800
    limit_gib: float = 4.0
    model_path: str | None = None
    random_weights: bool = False
    threads: int | None = None
    batch_size: int = 8
    seed: int = 0
    mesh: bool = True
    region: bool = True  # coarse-to-fine region (segment's default) or whole slices

    def __post_init__(self) -> None:
        if self.model_path is not None and self.random_weights:
            raise InputError("a model file and random weights exclude each other: give one")


@dataclass
class MemoryReport:
    """Peak RSS of one ``segment()`` call and the phase where it happened."""

    shape_xyz: list[int]
    input_bytes: int
    peak_rss_bytes: int
    peak_rss_exact: bool
    lifetime_peak_rss_bytes: int
    phase_peaks_bytes: dict[str, int]
    peak_phase: str
    runtime_s: dict[str, float]
    limit_bytes: int
    within_limit: bool
    notes: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _child_segment(ct_path: str, model_path: str, batch_size: int, threads: int | None,
                   mesh: bool, region: bool, queue: Any) -> None:
    """Spawned-process body: segment once, send back peaks and timings (or the error)."""
    # The child is a process of its own: its warnings get the CLI's one-line form, not bare text.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        from spineseg.inference.optimize import configure_threads
        from spineseg.inference.pipeline import SegmentConfig, segment
        from spineseg.inference.predict import PredictConfig
        from spineseg.inference.region import RegionConfig
        from spineseg.reconstruction import MeshConfig

        configure_threads(threads)
        model = load_segmentation_model(model_path)
        cfg = SegmentConfig(predict=PredictConfig(batch_size=batch_size, progress=False),
                            mesh=MeshConfig() if mesh else None,
                            region=RegionConfig(enabled=region))
        # Model loading happens before the measurement: it is a fixed ~10 MB, not per-volume.
        with PeakRSS() as mem:
            result = segment(ct_path, model, cfg)
        runtime = dict(result.stats["runtime_s"])
        phases = {k: float(runtime.get(k, 0.0)) for k in PIPELINE_PHASES}
        queue.put({"peak": mem.peak_bytes, "exact": mem.exact,
                   "lifetime": lifetime_peak_rss_bytes(), "phases": mem.phase_peaks(phases),
                   "runtime": runtime})
    except BaseException as exc:  # reported to the parent, which raises a library error
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def wait_for_child(proc: Any, queue: Any, poll_s: float = 1.0) -> dict[str, Any]:
    """The child's one message; a child that dies without sending one (killed for running out
    of memory, say) is an error instead of a wait that never ends."""
    try:
        while True:
            try:
                return dict(queue.get(timeout=poll_s))
            except Empty:
                if not proc.is_alive():
                    try:  # it may have sent its message just before exiting
                        return dict(queue.get(timeout=poll_s))
                    except Empty:
                        raise ResourceError(
                            f"memory check failed: the child process exited with code "
                            f"{proc.exitcode} without a result (a negative code is the signal "
                            "that killed it, -9 often the out-of-memory killer)") from None
    finally:
        proc.join()


def measure_segment_memory(config: MemoryConfig | None = None) -> MemoryReport:
    """Build a large mirror-tiled phantom, segment it in a fresh process, report peak RSS."""
    cfg = config or MemoryConfig()
    with tempfile.TemporaryDirectory(prefix="spineseg-mem-") as tmp:
        vol, notes = build_volume(cfg.size, cfg.slices, cfg.seed)
        ct_path = write_image(vol, Path(tmp) / "ct.nii.gz")
        shape = [int(s) for s in vol.shape_xyz]
        nbytes = int(vol.array.nbytes)
        del vol
        model_path, source = prepare_model_file(cfg.model_path, Path(tmp),
                                                random_weights=cfg.random_weights)
        timed = model_record(load_segmentation_model(model_path), source)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_segment, args=(
            str(ct_path), str(model_path), cfg.batch_size, cfg.threads, cfg.mesh, cfg.region,
            queue))
        proc.start()
        msg = wait_for_child(proc, queue)
    if "error" in msg:
        raise ResourceError(f"memory check failed in the child process: {msg['error']}")
    phases: dict[str, int] = msg["phases"]
    peak_phase = max(phases, key=lambda k: phases[k]) if phases else ""
    limit = int(cfg.limit_gib * GIB)
    return MemoryReport(
        shape_xyz=shape, input_bytes=nbytes, peak_rss_bytes=int(msg["peak"]),
        peak_rss_exact=bool(msg["exact"]), lifetime_peak_rss_bytes=int(msg["lifetime"]),
        phase_peaks_bytes={k: int(v) for k, v in phases.items()}, peak_phase=peak_phase,
        runtime_s={k: float(v) for k, v in msg["runtime"].items()}, limit_bytes=limit,
        within_limit=int(msg["peak"]) <= limit, notes=notes, model=timed)

