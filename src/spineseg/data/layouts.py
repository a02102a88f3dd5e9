"""Finding (image, mask) cases in the public data-set layouts, and what counts as "spine" in each.

Every layout maps its own label ids to our one binary class, spine = the vertebrae C1–L5 plus a
T13/L6 where present; sacrum, coccyx, ribs and hip bones are background (VerSe's definition).

=================  ==============================================================  =================
layout             files                                                           spine labels
=================  ==============================================================  =================
``pairs``          ``<case>.<ext>`` + ``<case>_seg.<ext>`` in one folder, or        any label > 0
                   ``images/<case>.<ext>`` + ``labels/<case>.<ext>``
``verse``          ``rawdata/sub-*/[ses-*/]<name>_ct.nii.gz`` +                    1–25 and 28
                   ``derivatives/sub-*/[ses-*/]<name>_seg-vert_msk.nii.gz``
``totalsegmentator`` ``<case>/ct.nii.gz`` + ``<case>/segmentations/vertebrae_*.nii.gz``  C1–C7, T1–T13,
                   (per-structure files, union) or a multilabel                    L1–L6 files;
                   ``<case>/segmentations.nii.gz`` / ``seg.nii.gz`` /              multilabel 27–50
                   ``vertebrae.nii.gz`` (TotalSegmentator v2 ``total`` ids)
``nnunet``         ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz`` +  labels whose
                   ``dataset.json``                                                name is a vertebra
=================  ==============================================================  =================

``--labels "1-25,28"`` overrides the label set of any label-map layout (not the per-structure
files of TotalSegmentator, which are chosen by file name). A source folder holding ``params/``
(written by the phantom generator) is of kind ``"phantom"``, otherwise ``"real"``.

Why explicit tables instead of "label > 0" everywhere: VerSe and TotalSegmentator label the sacrum
(and TotalSegmentator every other organ), and sacrum/hip confusion is the failure this project
exists to avoid, so silently counting them as spine would poison training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spineseg.errors import DataError, InputError
from spineseg.io.read import image_extension

LAYOUTS: tuple[str, ...] = ("pairs", "verse", "totalsegmentator", "nnunet")

VERSE_SPINE: frozenset[int] = frozenset([*range(1, 26), 28])
TOTALSEG_V2_SPINE: frozenset[int] = frozenset(range(27, 51))
TOTALSEG_MULTILABEL_NAMES: tuple[str, ...] = ("segmentations.nii.gz", "seg.nii.gz",
                                               "vertebrae.nii.gz")
# Vertebra names C1–C7, T1–T13, L1–L6 (T13/L6 are transitional vertebrae that VerSe counts).
_VERTEBRA = r"(C[1-7]|T(1[0-3]|[1-9])|L[1-6])"
_TS_FILE = re.compile(rf"^vertebrae_{_VERTEBRA}\.nii(\.gz)?$")
_NNUNET_NAME = re.compile(rf"^(vertebra(e)?[_ ]?)?{_VERTEBRA}$|^(spine|vertebra|vertebrae|bone_spine)$",
                          re.IGNORECASE)


@dataclass(frozen=True)
class LabelMap:
    """Which label values of a mask are spine; ``values=None`` means "any value > 0"."""

    values: frozenset[int] | None = None
    description: str = "any label > 0"

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Binary uint8 spine mask from a label array."""
        if self.values is None:
            return (labels > 0).astype(np.uint8)
        return np.isin(labels, np.fromiter(self.values, dtype=np.int64)).astype(np.uint8)

    def to_dict(self) -> dict[str, object]:
        return {"values": None if self.values is None else sorted(self.values),
                "description": self.description}


def parse_label_spec(spec: str) -> LabelMap:
    """Parse ``"1-25,28"`` (ranges and single ids, comma-separated) into a :class:`LabelMap`."""
    values: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise DataError(f"invalid label spec {spec!r}: expected e.g. '1-25,28'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or lo < 1:
            raise DataError(f"invalid label range {part!r} in {spec!r}")
        values.update(range(lo, hi + 1))
    return LabelMap(frozenset(values), f"labels {spec}")


@dataclass(frozen=True)
class CaseSource:
    """One case found in a source: an image (file or DICOM folder) and its mask file(s).

    ``masks`` holds one label map, or several binary per-structure files whose union is spine.
    """

    case_id: str
    patient: str
    image: Path
    masks: tuple[Path, ...]
    label_map: LabelMap
    kind: str = "real"
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` from its marker files; DataError if none fits."""
    root = Path(root)
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "nnunet"
    if (root / "rawdata").is_dir() and (root / "derivatives").is_dir():
        return "verse"
    for child in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if (child / "ct.nii.gz").is_file() and (
            (child / "segmentations").is_dir()
            or any((child / n).is_file() for n in TOTALSEG_MULTILABEL_NAMES)
        ):
            return "totalsegmentator"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "pairs"
    if root.is_dir() and any(_stem(p)[1] and _stem(p)[0].endswith("_seg") for p in root.iterdir()):
        return "pairs"
    raise DataError(f"{root}: cannot tell the data-set layout (expected pairs, VerSe, "
                    "TotalSegmentator or nnU-Net files); pass --layout")


def source_kind(root: Path) -> str:
    """``"phantom"`` when the phantom generator's ``params/`` folder is present, else ``"real"``."""
    return "phantom" if (Path(root) / "params").is_dir() else "real"


def find_cases(root: Path, layout: str = "auto", labels: str | None = None,
               kind: str | None = None) -> tuple[str, list[CaseSource]]:
    """All cases of one source folder, as ``(layout, cases)`` sorted by case id.

    Rejects names containing ``..`` and symlinks leading outside ``root`` (InputError): a data
    set downloaded from elsewhere must not make us read, and copy into a data set, arbitrary files.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: source folder not found")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)}, auto)")
    override = parse_label_spec(labels) if labels else None
    kind = kind or source_kind(root)
    finder = {"pairs": _find_pairs, "verse": _find_verse,
              "totalsegmentator": _find_totalseg, "nnunet": _find_nnunet}[layout]
    cases = finder(root, override)
    if not cases:
        raise DataError(f"{root}: no cases found for layout {layout!r}")
    out = []
    for c in cases:
        for p in (c.image, *c.masks):
            check_inside(root, p)
        out.append(CaseSource(c.case_id, c.patient, c.image, c.masks, c.label_map, kind, c.extra))
    ids = [c.case_id for c in out]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"{root}: duplicate case ids {dupes}")
    return layout, sorted(out, key=lambda c: c.case_id)


def check_inside(root: Path, path: Path) -> None:
    """InputError unless ``path`` has no ``..`` part and resolves (symlinks too) inside ``root``."""
    if ".." in Path(path).relative_to(root).parts or ".." in Path(path).name:
        raise InputError(f"{path}: file names containing '..' are not accepted")
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real != real_root and real_root not in real.parents:
        raise InputError(f"{path}: symlink points outside the source folder ({real})")


def _stem(path: Path) -> tuple[str, str]:
    """``(stem, extension)`` for an image file name, extension ``""`` if not an image format."""
    name, ext = path.name, image_extension(path)
    if ext and len(name) > len(ext):
        return name[: -len(ext)], ext
    return name, ""


def _image_files(folder: Path) -> Iterable[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and _stem(p)[1])


def _find_pairs(root: Path, override: LabelMap | None) -> list[CaseSource]:
    lm = override or LabelMap()
    cases = []
    if (root / "images").is_dir() and (root / "labels").is_dir():
        labels = {_stem(p)[0]: p for p in _image_files(root / "labels")}
        for img in _image_files(root / "images"):
            stem = _stem(img)[0]
            if stem in labels:
                cases.append(CaseSource(stem, stem, img, (labels[stem],), lm))
        return cases
    files = {_stem(p)[0]: p for p in _image_files(root)}
    for stem, img in files.items():
        if not stem.endswith("_seg") and f"{stem}_seg" in files:
            cases.append(CaseSource(stem, stem, img, (files[f"{stem}_seg"],), lm))
    return cases


def _find_verse(root: Path, override: LabelMap | None) -> list[CaseSource]:
    lm = override or LabelMap(VERSE_SPINE, "VerSe: 1-25 (C1-L6) and 28 (T13)")
    masks = {p.name: p for p in (root / "derivatives").rglob("*_seg-vert_msk.nii.gz")}
    cases = []
    for img in sorted((root / "rawdata").rglob("*_ct.nii.gz")):
        name = img.name[: -len("_ct.nii.gz")]
        mask = masks.get(f"{name}_seg-vert_msk.nii.gz")
        if mask is None:
            continue
        subject = next((p for p in img.relative_to(root / "rawdata").parts if p.startswith("sub-")),
                       name.split("_")[0])
        cases.append(CaseSource(name, subject, img, (mask,), lm))
    return cases


def _find_totalseg(root: Path, override: LabelMap | None) -> list[CaseSource]:
    cases = []
    for case in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        ct = case / "ct.nii.gz"
        if not ct.is_file():
            continue
        seg_dir = case / "segmentations"
        multilabel = next((case / n for n in TOTALSEG_MULTILABEL_NAMES if (case / n).is_file()),
                          None)
        if seg_dir.is_dir():
            files = tuple(sorted(p for p in seg_dir.iterdir() if _TS_FILE.match(p.name)))
            if not files:
                raise DataError(f"{seg_dir}: no vertebrae_<C1..L5>.nii.gz files")
            lm = LabelMap(None, "TotalSegmentator per-structure files vertebrae_C1..L5 (+T13, L6)")
            cases.append(CaseSource(case.name, case.name, ct, files, lm))
        elif multilabel is not None:
            lm = override or LabelMap(TOTALSEG_V2_SPINE, "TotalSegmentator v2 total: 27-50 (L5-C1)")
            cases.append(CaseSource(case.name, case.name, ct, (multilabel,), lm))
    return cases


def _nnunet_label_map(dataset_json: Path) -> LabelMap:
    try:
        labels = json.loads(dataset_json.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{dataset_json}: unreadable or without a 'labels' entry ({exc})") from exc
    pairs: list[tuple[str, object]] = []
    for k, v in labels.items():
        # nnU-Net v2 writes {name: id}; v1 wrote {"id": name}.
        pairs.append((v, k) if str(k).isdigit() and isinstance(v, str) else (k, v))
    values = set()
    for name, value in pairs:
        if _NNUNET_NAME.match(str(name).strip()):
            if not isinstance(value, int) and not str(value).isdigit():
                raise DataError(f"{dataset_json}: label {name!r} is a region ({value}); "
                                "use --labels")
            values.add(int(value))  # type: ignore[arg-type]
    if not values:
        raise DataError(f"{dataset_json}: no vertebra/spine label names found; use --labels")
    return LabelMap(frozenset(values), f"nnU-Net dataset.json names -> {sorted(values)}")


def _find_nnunet(root: Path, override: LabelMap | None) -> list[CaseSource]:
    lm = override or _nnunet_label_map(root / "dataset.json")
    ending = ".nii.gz"
    try:
        ending = json.loads((root / "dataset.json").read_text(encoding="utf-8")).get(
            "file_ending", ending)
    except (OSError, ValueError):
        pass
    cases = []
    for img in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        case = img.name[: -len(f"_0000{ending}")]
        mask = root / "labelsTr" / f"{case}{ending}"
        if mask.is_file():
            cases.append(CaseSource(case, case, img, (mask,), lm))
    return cases
