"""``prepare_dataset``: public data-set layouts -> one prepared dataset (see DEVELOPERS.md).

Per case: read image and mask, map the mask's labels to binary spine (:mod:`.layouts`), align the
mask to the image through physical space (never by array index: masks are often stored with a
flipped axis), reorient both to canonical LPS and resample in-plane to the preprocessing spacing
(z is left alone: slices are the 2D model's samples, and interpolating across thick slices would
invent anatomy). Arrays are stored as ``.npy`` so training can memory-map them.

Resumable: the manifest is rewritten atomically after every finished case; a re-run verifies the
checksums of finished cases and skips them. A failing case is recorded and skipped, the others are
still prepared, and :class:`~spineseg.errors.PartialFailure` is raised at the end.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spineseg import __version__
from spineseg.data.layouts import CaseSource, find_cases
from spineseg.data.manifest import (
    SPLITS,
    CaseEntry,
    Manifest,
    case_dir,
    manifest_path,
    read_manifest,
    sha256_file,
    validate_manifest,
    write_manifest,
)
from spineseg.data.preprocess import Preprocessing
from spineseg.data.simulate import add_ct_noise, simulate_osteoporosis
from spineseg.errors import (
    DataError,
    GeometryError,
    InputError,
    OutputError,
    PartialFailure,
    SpinesegError,
)
from spineseg.io import Volume, atomic_path
from spineseg.io import write_text_atomic as _write_text
from spineseg.io.geometry import reorient, resample_spacing, resample_to
from spineseg.io.read import read_image

CANONICAL = "LPS"
PAD_HU = -1000.0  # air, for resampled points just outside the scan
# Version of split_patients' rule, kept in the manifest's settings: 2 takes real patients first
# for a test count and at least one patient for a fraction that rounds to none.
SPLIT_RULE = 2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """One source folder. ``kind=None``: "phantom" if it holds ``params/``, else "real"."""

    path: Path
    layout: str = "auto"
    labels: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of one preparation; a re-run into the same folder must use the same ones.

    ``val``/``test``: a count ("2"), a fraction ("0.2", stratified by kind) or comma-separated
    patient or case ids ("sub-verse012,s0011"); see :func:`split_patients`. ``noise_copies``:
    extra noisy and/or osteoporotic copies of each real training case (noise SD and target
    density drawn from the ranges).
    """

    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    val: str = "0.2"
    test: str = "0"
    seed: int = 0
    noise_copies: int = 0
    noise_sd_hu: tuple[float, float] = (50.0, 200.0)  # see AugmentConfig.noise_sd_hu
    noise_corr_sigma: tuple[float, float] = (0.5, 2.0)
    osteoporosis_target_hu: tuple[float, float] = (60.0, 110.0)
    progress: bool = False

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("progress")
        d["preprocessing"] = self.preprocessing.to_dict()
        d["split_rule"] = SPLIT_RULE
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from JSON


@dataclass
class PrepareResult:
    """What a run did: case ids prepared now, skipped (already done), failed (id -> reason)."""

    root: Path
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # also logged


def prepare_dataset(sources: Sequence[SourceSpec | str | Path], out: str | Path,
                    config: PrepareConfig | None = None) -> PrepareResult:
    """Prepare all cases of ``sources`` into the dataset folder ``out`` (see module docstring)."""
    config = config or PrepareConfig()
    if config.noise_copies < 0:
        raise DataError(f"noise copies must be >= 0, got {config.noise_copies}")
    spacing = tuple(float(v) for v in config.preprocessing.spacing_xy)
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        # Checked before anything is written: every case would fail, leaving an empty dataset.
        raise InputError(f"in-plane spacing (--spacing) must be a number of mm > 0, got "
                         f"{' x '.join(f'{v:g}' for v in spacing)}")
    specs = [s if isinstance(s, SourceSpec) else SourceSpec(Path(s)) for s in sources]
    if not specs:
        raise DataError("no source folders given")
    root = Path(out)
    found: list[CaseSource] = []
    source_info: list[dict[str, Any]] = []
    label_maps: dict[str, dict[str, Any]] = {}
    for spec in specs:
        layout, cases = find_cases(Path(spec.path), spec.layout, spec.labels, spec.kind)
        found.extend(cases)
        source_info.append({"path": str(Path(spec.path).resolve()), "layout": layout,
                            "kind": cases[0].kind, "cases": len(cases)})
        label_maps[str(Path(spec.path).resolve())] = cases[0].label_map.to_dict()
        for src_root in (Path(spec.path).resolve(),):
            if src_root == root.resolve() or src_root in root.resolve().parents:
                raise OutputError(f"{root}: the dataset cannot be written inside its source")
    ids = [c.case_id for c in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"case ids occur in several sources: {dupes}; rename them")
    patient_split = split_patients({c.patient: c.kind for c in found}, config.val, config.test,
                                   config.seed, {c.case_id: c.patient for c in found})
    manifest = _open_manifest(root, config, source_info, label_maps, patient_split)
    result = PrepareResult(root)
    copies = [(c, k) for c in found if c.kind == "real" and patient_split[c.patient] == "train"
              for k in range(1, config.noise_copies + 1)]
    bar = tqdm(total=len(found) + len(copies), desc="prepare", unit="case", file=sys.stderr,
               disable=not config.progress)
    with bar:
        for case in found:
            split = patient_split[case.patient]
            _run_one(root, manifest, result, case.case_id, split,
                     lambda c=case, s=split: _prepare_case(root, c, s, config.preprocessing))
            bar.update()
        for case, k in copies:
            cid = f"{case.case_id}_aug{k}"
            if case.case_id in result.failed:
                result.failed[cid] = f"source case {case.case_id} failed"
            else:
                _run_one(root, manifest, result, cid, "train",
                         lambda c=case, k=k: _noise_copy(root, c, k, config))
            bar.update()
    expected = {c.case_id for c in found} | {f"{c.case_id}_aug{k}" for c, k in copies}
    manifest.cases = {k: v for k, v in manifest.cases.items() if k in expected}
    manifest.splits = {s: manifest.case_ids(s) for s in SPLITS}
    manifest.updated = _now()
    validate_manifest(manifest, root)
    write_manifest(root, manifest)
    result.splits = manifest.splits
    for split, spec in (("val", config.val), ("test", config.test)):
        if not manifest.splits[split] and _requested(spec):
            drawn = sorted(c.case_id for c in found if patient_split[c.patient] == split)
            why = (f"its case(s) {', '.join(drawn)} failed" if drawn else
                   f"--{split} {spec!r} chose none of the patients left for it")
            result.warnings.append(f"{root}: the {split} split is empty: {why}"
                                   + ("; training needs validation cases" if split == "val"
                                      else ""))
            log.warning(result.warnings[-1])
    if result.failed:
        exc = PartialFailure(f"{len(result.failed)} of {len(found) + len(copies)} cases failed: "
                             + "; ".join(f"{k}: {v}" for k, v in sorted(result.failed.items())))
        exc.result = result  # type: ignore[attr-defined]
        raise exc
    return result


def split_patients(patients: dict[str, str], val: str, test: str, seed: int,
                   case_to_patient: dict[str, str] | None = None) -> dict[str, str]:
    """Assign every patient (id -> kind) to train/val/test; seeded, never one patient in two.

    Test is drawn first, then validation, from one seeded shuffle. Fractions are applied per kind
    so a few real cases among many phantoms still reach every split; a fraction > 0 that rounds
    to none for every kind still takes one patient, of the most numerous kind, as long as one is
    left after it. A test count takes real patients before phantoms (a score on phantoms says
    little about patients); a validation count takes them in shuffled order.
    """
    case_to_patient = case_to_patient or {}
    order = sorted(patients)
    perm = np.random.default_rng(seed).permutation(len(order))
    shuffled = [order[i] for i in perm]
    assigned: dict[str, str] = {}
    for split, spec in (("test", test), ("val", val)):
        free = [p for p in shuffled if p not in assigned]
        for p in _choose(spec, free, patients, case_to_patient, split,
                         real_first=split == "test"):
            if p in assigned:
                raise DataError(f"patient {p} is requested for both {assigned[p]} and {split}")
            assigned[p] = split
    out = {p: assigned.get(p, "train") for p in order}
    if "train" not in out.values():
        raise DataError(f"no patient left for training ({len(order)} patients; val={val!r}, "
                        f"test={test!r})")
    return out


def _requested(spec: str) -> bool:
    """Does a --val/--test value ask for any patient ("0", "0.0" and "" do not)?"""
    try:
        return float(str(spec).strip() or 0) != 0
    except ValueError:
        return True  # ids


def _choose(spec: str, free: list[str], kinds: dict[str, str],
            case_to_patient: dict[str, str], split: str, real_first: bool = False) -> list[str]:
    spec = str(spec).strip()
    if not _requested(spec):
        return []
    try:
        number = float(spec)
    except ValueError:
        number = None
    if number is None:
        chosen = []
        for name in (s.strip() for s in spec.split(",") if s.strip()):
            p = name if name in kinds else case_to_patient.get(name)
            if p is None:
                raise DataError(f"--{split}: unknown patient or case id {name!r}")
            chosen.append(p)
        return chosen
    if not math.isfinite(number) or number < 0 or (not number.is_integer() and number >= 1):
        raise DataError(f"--{split} {spec!r}: use a count, a fraction in (0, 1) or ids")
    if number >= 1 or "." not in spec:
        n = int(number)
        if n > len(free):
            raise DataError(f"--{split} {n}: only {len(free)} patients left to choose from")
        if real_first:
            free = sorted(free, key=lambda p: kinds[p] != "real")  # stable: shuffle order kept
        return free[:n]
    chosen = []
    pools = {kind: [p for p in free if kinds[p] == kind] for kind in sorted(set(kinds.values()))}
    for pool in pools.values():
        chosen.extend(pool[: round(number * len(pool))])
    if not chosen and len(free) > 1:
        chosen = max(pools.values(), key=len)[:1]
    return chosen


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _open_manifest(root: Path, config: PrepareConfig, sources: list[dict[str, Any]],
                   label_maps: dict[str, dict[str, Any]],
                   patient_split: dict[str, str]) -> Manifest:
    fingerprint = {**config.fingerprint(), "sources": [s["path"] for s in sources]}
    if manifest_path(root).exists():
        manifest = read_manifest(root)
        if "split_rule" not in manifest.config and \
                {**manifest.config, "split_rule": SPLIT_RULE} == fingerprint:
            # Prepared before the split rule was recorded: resume only if no patient moves.
            moved = sorted({c.patient for c in manifest.cases.values()
                            if patient_split.get(c.patient, c.split) != c.split})
            if moved:
                raise DataError(f"{root}: prepared by an earlier spineseg whose split rule put "
                                f"patient(s) {', '.join(moved)} in other splits; use a new "
                                "output folder")
            manifest.config = fingerprint
            return manifest
        if manifest.config != fingerprint:
            changed = sorted(k for k in fingerprint if manifest.config.get(k) != fingerprint[k])
            raise DataError(f"{root}: prepared earlier with different settings ({', '.join(changed)}"
                            "); use a new output folder")
        return manifest
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise OutputError(f"{root}: exists and is not an empty folder or a prepared dataset")
    layouts = sorted({s["layout"] for s in sources})
    manifest = Manifest(preprocessing=config.preprocessing.to_dict(), sources=sources,
                        layout=layouts[0] if len(layouts) == 1 else "mixed",
                        label_map=label_maps,
                        config=fingerprint, software_version=__version__, created=_now())
    manifest.updated = manifest.created
    write_manifest(root, manifest)
    return manifest


def _done(root: Path, entry: CaseEntry | None, case_id: str) -> bool:
    if entry is None:
        return False
    d = case_dir(root, case_id)
    try:
        return (sha256_file(d / "image.npy") == entry.image_sha256
                and sha256_file(d / "mask.npy") == entry.mask_sha256
                and (d / "meta.json").is_file())
    except OSError:
        return False


def _run_one(root: Path, manifest: Manifest, result: PrepareResult, case_id: str, split: str,
             work: Any) -> None:
    entry = manifest.cases.get(case_id)
    if entry is not None and entry.split == split and _done(root, entry, case_id):
        result.skipped.append(case_id)
        return
    manifest.cases.pop(case_id, None)
    try:
        manifest.cases[case_id] = work()
    except (SpinesegError, OSError, RuntimeError, ValueError, MemoryError) as exc:
        # RuntimeError: SimpleITK's errors. One bad case must not cost the whole data set.
        result.failed[case_id] = f"{type(exc).__name__}: {exc}"
        return
    manifest.updated = _now()
    write_manifest(root, manifest)
    result.prepared.append(case_id)


def _read_mask(case: CaseSource, image: Volume) -> np.ndarray:
    """Union of the case's mask files, binarised and aligned to the image grid (nearest)."""
    out = np.zeros(image.array.shape, dtype=np.uint8)
    for path in case.masks:
        raw = read_image(path)
        binary = raw.with_array(case.label_map.apply(raw.array))
        if binary.same_grid(image):
            aligned = binary.array
        else:
            aligned = resample_to(binary, image, interpolation="nearest").array
            if binary.array.any() and not aligned.any():
                raise GeometryError(f"{path}: the mask does not overlap the image {case.image} in "
                                    "physical space")
        out |= aligned.astype(np.uint8)
    return out


def canonical_case(image: Volume, mask: np.ndarray, pp: Preprocessing) -> tuple[Volume, Volume]:
    """Reorient to LPS and resample in-plane to ``pp.spacing_xy`` (image linear, mask nearest)."""
    img = reorient(image, CANONICAL)
    msk = reorient(image.with_array(mask), CANONICAL)
    target = (float(pp.spacing_xy[0]), float(pp.spacing_xy[1]), float(img.spacing[2]))
    if not np.allclose(img.spacing, target, atol=1e-4):
        img = resample_spacing(img, target, interpolation="linear", default_value=PAD_HU)
        msk = resample_spacing(msk, target, interpolation="nearest")
    return img, msk


def _geometry(v: Volume) -> dict[str, Any]:
    return {"shape_zyx": list(v.array.shape), "spacing": list(v.spacing),
            "origin": list(v.origin), "direction": list(v.direction)}


def _save_case(root: Path, case_id: str, hu: np.ndarray, mask: np.ndarray,
               meta: dict[str, Any]) -> tuple[str, str, list[int]]:
    d = case_dir(root, case_id)
    for name, arr in (("image.npy", hu), ("mask.npy", mask)):
        with atomic_path(d / name, overwrite=True) as tmp:
            np.save(tmp, np.ascontiguousarray(arr))
    fg = [int(z) for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]
    _write_text(d / "meta.json", json.dumps({**meta, "foreground_slices": fg}, indent=1) + "\n",
                overwrite=True)
    return sha256_file(d / "image.npy"), sha256_file(d / "mask.npy"), fg


def _to_int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def _prepare_case(root: Path, case: CaseSource, split: str, pp: Preprocessing) -> CaseEntry:
    image = read_image(case.image)
    if image.meta.get("nonfinite"):
        # Casting NaN/inf to int16 HU gives arbitrary values: a corrupt case must not become data.
        raise InputError(f"{case.image}: {image.meta['nonfinite']} voxels are NaN or infinite; "
                         "fix or drop this case")
    mask = _read_mask(case, image)
    img, msk = canonical_case(image, mask, pp)
    hu = _to_int16(img.array)
    binary = (msk.array > 0).astype(np.uint8)
    meta = {"case_id": case.case_id, "kind": case.kind, "patient": case.patient,
            **_geometry(img),
            "source": {"image": str(case.image), "masks": [str(m) for m in case.masks],
                       "label_map": case.label_map.to_dict(), **_geometry(image)}}
    img_sha, mask_sha, fg = _save_case(root, case.case_id, hu, binary, meta)
    return CaseEntry(split=split, kind=case.kind, patient=case.patient, source=str(case.image),
                     shape=list(hu.shape), spacing=list(img.spacing), slices=int(hu.shape[0]),
                     fg_slices=len(fg), image_sha256=img_sha, mask_sha256=mask_sha)


def _noise_copy(root: Path, case: CaseSource, k: int, config: PrepareConfig) -> CaseEntry:
    """A noisy and/or osteoporotic copy of a prepared training case (what VerSe-like and elderly
    scans look like), made from the prepared arrays so it shares their grid exactly."""
    src = case_dir(root, case.case_id)
    hu = np.load(src / "image.npy").astype(np.float32)
    mask = np.load(src / "mask.npy")
    meta = json.loads((src / "meta.json").read_text("utf-8"))
    rng = np.random.default_rng((config.seed, zlib.crc32(case.case_id.encode()), k))
    mode = int(rng.integers(3))  # 0 noise, 1 osteoporosis, 2 both
    aug: dict[str, Any] = {}
    if mode in (1, 2):
        target = float(rng.uniform(*config.osteoporosis_target_hu))
        hu = simulate_osteoporosis(hu, mask, target, rng)
        aug["osteoporosis_target_hu"] = round(target, 1)
    if mode in (0, 2):
        sd = float(rng.uniform(*config.noise_sd_hu))
        sigma = float(rng.uniform(*config.noise_corr_sigma))
        hu = add_ct_noise(hu, sd, rng, kernel=sigma)
        aug.update(noise_sd_hu=round(sd, 1), noise_corr_sigma_vox=round(sigma, 2))
    cid = f"{case.case_id}_aug{k}"
    meta.pop("foreground_slices", None)
    meta.update(case_id=cid, derived_from=case.case_id, augmentation=aug)
    img_sha, mask_sha, fg = _save_case(root, cid, _to_int16(hu), mask, meta)
    return CaseEntry(split="train", kind=case.kind, patient=case.patient, source=str(case.image),
                     shape=list(hu.shape), spacing=list(meta["spacing"]), slices=int(hu.shape[0]),
                     fg_slices=len(fg), image_sha256=img_sha, mask_sha256=mask_sha,
                     derived_from=case.case_id, augmentation=aug)
