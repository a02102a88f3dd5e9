"""The prepared-dataset manifest (``DATASET/manifest.json``, format ``spineseg-dataset/1``).

One JSON file describes the whole data set: where it came from, the preprocessing, the patient
splits and, per case, its shape, spacing and the SHA-256 of its arrays. Training, evaluation and a
re-run of ``prepare`` trust the arrays only through these checksums.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spineseg.data.preprocess import Preprocessing
from spineseg.errors import DataError
from spineseg.io import write_text_atomic

FORMAT = "spineseg-dataset/1"
SPLITS: tuple[str, ...] = ("train", "val", "test")
KINDS: tuple[str, ...] = ("real", "phantom")


@dataclass
class CaseEntry:
    """One prepared case. ``derived_from`` names the case a noise/density copy was made from."""

    split: str
    kind: str
    patient: str
    source: str
    shape: list[int]
    spacing: list[float]
    slices: int
    fg_slices: int
    image_sha256: str
    mask_sha256: str
    derived_from: str | None = None
    augmentation: dict[str, Any] | None = None


@dataclass
class Manifest:
    """Everything in ``manifest.json``; ``cases`` maps case id to :class:`CaseEntry`."""

    preprocessing: dict[str, Any]
    sources: list[dict[str, Any]] = field(default_factory=list)
    layout: str = ""
    label_map: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    cases: dict[str, CaseEntry] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    software_version: str = ""
    created: str = ""
    updated: str = ""
    format: str = FORMAT

    @property
    def preprocessing_obj(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    def case_ids(self, split: str | None = None, kinds: tuple[str, ...] | None = None) -> list[str]:
        """Case ids of a split (all if None), optionally only of the given kinds, sorted."""
        return sorted(cid for cid, c in self.cases.items()
                      if (split is None or c.split == split) and (kinds is None or c.kind in kinds))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cases"] = {k: asdict(v) for k, v in sorted(self.cases.items())}
        return {"format": d.pop("format"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format") != FORMAT:
            raise DataError(f"not a spineseg dataset manifest (format {d.get('format')!r}, "
                            f"expected {FORMAT!r})")
        try:
            cases = {k: CaseEntry(**v) for k, v in d.get("cases", {}).items()}
            fields = {k: v for k, v in d.items() if k not in ("cases", "format")}
            return cls(cases=cases, **fields)
        except TypeError as exc:
            raise DataError(f"malformed manifest: {exc}") from exc


def manifest_path(root: Path) -> Path:
    return Path(root) / "manifest.json"


def case_dir(root: Path, case_id: str) -> Path:
    return Path(root) / "cases" / case_id


def read_manifest(root: Path) -> Manifest:
    """Read and structurally validate ``root/manifest.json`` (DataError if missing or malformed)."""
    path = manifest_path(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{root}: no manifest.json (not a prepared dataset?)") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from exc
    manifest = Manifest.from_dict(data)
    validate_manifest(manifest)
    return manifest


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write atomically (a crash leaves the previous manifest, never a truncated one)."""
    return write_text_atomic(manifest_path(root), json.dumps(manifest.to_dict(), indent=1) + "\n",
                             overwrite=True)


def validate_manifest(manifest: Manifest, root: Path | None = None,
                      verify_checksums: bool = False) -> None:
    """DataError on any inconsistency: unknown split/kind, a case in two splits, a split listing an
    unknown case, a patient in two splits; with ``root`` also missing files and, if asked, wrong
    checksums."""
    Preprocessing.from_dict(manifest.preprocessing)
    seen: dict[str, str] = {}
    for split, ids in manifest.splits.items():
        if split not in SPLITS:
            raise DataError(f"manifest: unknown split {split!r}")
        for cid in ids:
            if cid in seen:
                raise DataError(f"manifest: case {cid} is in splits {seen[cid]} and {split}")
            seen[cid] = split
            if cid not in manifest.cases:
                raise DataError(f"manifest: split {split} lists unknown case {cid}")
    patient_split: dict[str, str] = {}
    for cid, c in manifest.cases.items():
        if c.split not in SPLITS or c.kind not in KINDS:
            raise DataError(f"manifest: case {cid} has split {c.split!r}, kind {c.kind!r}")
        if seen.get(cid, c.split) != c.split:
            raise DataError(f"manifest: case {cid} split disagrees with the split lists")
        other = patient_split.setdefault(c.patient, c.split)
        if other != c.split:
            raise DataError(f"manifest: patient {c.patient} is in splits {other} and {c.split}")
        if c.derived_from is not None and c.split != "train":
            raise DataError(f"manifest: augmented copy {cid} is outside the training split")
        if root is not None:
            for name, digest in (("image.npy", c.image_sha256), ("mask.npy", c.mask_sha256)):
                f = case_dir(root, cid) / name
                if not f.is_file():
                    raise DataError(f"{f}: missing")
                if verify_checksums and sha256_file(f) != digest:
                    raise DataError(f"{f}: checksum mismatch (file changed or corrupt)")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
