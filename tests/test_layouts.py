"""Finding cases and label maps in the public layouts (file discovery only: no image reading)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spineseg.data.layouts import (
    TOTALSEG_V2_SPINE,
    VERSE_SPINE,
    detect_layout,
    find_cases,
    parse_label_spec,
)
from spineseg.errors import DataError, InputError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_label_spec_and_apply() -> None:
    lm = parse_label_spec("1-3, 7")
    assert lm.values == frozenset({1, 2, 3, 7})
    arr = np.arange(10).reshape(2, 5)
    assert lm.apply(arr).tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    for bad in ("", "a-b", "5-2", "0-3"):
        with pytest.raises(DataError):
            parse_label_spec(bad)


def test_documented_label_sets() -> None:
    # VerSe: C1..L6 and T13, never the sacrum (26); TotalSegmentator v2: L5 (27) .. C1 (50).
    assert VERSE_SPINE == frozenset([*range(1, 26), 28]) and 26 not in VERSE_SPINE
    assert min(TOTALSEG_V2_SPINE) == 27 and max(TOTALSEG_V2_SPINE) == 50
    assert 25 not in TOTALSEG_V2_SPINE and 26 not in TOTALSEG_V2_SPINE


def test_pairs_both_forms(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    touch(flat / "a.nii.gz"), touch(flat / "a_seg.nii.gz"), touch(flat / "b.nrrd")
    touch(flat / "b_seg.nrrd"), touch(flat / "lonely.nii.gz")
    layout, cases = find_cases(flat)
    assert layout == "pairs" and [c.case_id for c in cases] == ["a", "b"]
    assert cases[0].masks == (flat / "a_seg.nii.gz",) and cases[0].label_map.values is None
    two = tmp_path / "two"
    for name in ("p1", "p2"):
        touch(two / "images" / f"{name}.nii.gz"), touch(two / "labels" / f"{name}.nii.gz")
    touch(two / "params" / "p1.json")
    layout, cases = find_cases(two, labels="1-5")
    assert layout == "pairs" and [c.kind for c in cases] == ["phantom", "phantom"]
    assert cases[0].label_map.values == frozenset(range(1, 6))
    assert find_cases(two, kind="real")[1][0].kind == "real"


def test_verse_bids(tmp_path: Path) -> None:
    touch(tmp_path / "rawdata/sub-gl003/sub-gl003_dir-ax_ct.nii.gz")
    touch(tmp_path / "derivatives/sub-gl003/sub-gl003_dir-ax_seg-vert_msk.nii.gz")
    touch(tmp_path / "rawdata/sub-v1/ses-2/sub-v1_ses-2_ct.nii.gz")
    touch(tmp_path / "derivatives/sub-v1/ses-2/sub-v1_ses-2_seg-vert_msk.nii.gz")
    touch(tmp_path / "rawdata/sub-nomask/sub-nomask_ct.nii.gz")
    assert detect_layout(tmp_path) == "verse"
    _, cases = find_cases(tmp_path)
    assert [(c.case_id, c.patient) for c in cases] == [("sub-gl003_dir-ax", "sub-gl003"),
                                                       ("sub-v1_ses-2", "sub-v1")]
    assert cases[0].label_map.values == VERSE_SPINE


def test_totalsegmentator_structures_exclude_sacrum(tmp_path: Path) -> None:
    for name in ("L5", "L6", "T13", "C1", "S1", "sacrum"):
        touch(tmp_path / "s01/segmentations" / f"vertebrae_{name}.nii.gz")
    touch(tmp_path / "s01/segmentations/rib_left_1.nii.gz")
    touch(tmp_path / "s01/ct.nii.gz")
    touch(tmp_path / "s02/ct.nii.gz"), touch(tmp_path / "s02/segmentations.nii.gz")
    assert detect_layout(tmp_path) == "totalsegmentator"
    _, cases = find_cases(tmp_path)
    names = sorted(p.name for p in cases[0].masks)
    assert names == [f"vertebrae_{n}.nii.gz" for n in ("C1", "L5", "L6", "T13")]
    assert cases[1].label_map.values == TOTALSEG_V2_SPINE


@pytest.mark.parametrize("labels", [
    {"background": 0, "vertebrae_L1": 1, "sacrum": 2, "T12": 3},  # nnU-Net v2: name -> id
    {"0": "background", "1": "vertebrae_L1", "2": "sacrum", "3": "T12"},  # v1: id -> name
])
def test_nnunet_labels_by_name(tmp_path: Path, labels: dict[str, object]) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels,
                                                       "file_ending": ".nii.gz"}), encoding="utf-8")
    touch(tmp_path / "imagesTr/c1_0000.nii.gz"), touch(tmp_path / "imagesTr/c1_0001.nii.gz")
    touch(tmp_path / "labelsTr/c1.nii.gz")
    layout, cases = find_cases(tmp_path)
    assert layout == "nnunet" and [c.case_id for c in cases] == ["c1"]
    assert cases[0].label_map.values == frozenset({1, 3})


def test_unsafe_paths_rejected(tmp_path: Path) -> None:
    outside = touch(tmp_path / "outside" / "secret.nii.gz")
    src = tmp_path / "src"
    touch(src / "a.nii.gz")
    (src / "a_seg.nii.gz").symlink_to(outside)
    with pytest.raises(InputError, match="outside"):
        find_cases(src)
    src2 = tmp_path / "src2"
    touch(src2 / "x..y.nii.gz"), touch(src2 / "x..y_seg.nii.gz")
    with pytest.raises(InputError, match=r"\.\."):
        find_cases(src2)


def test_unknown_layout_errors(tmp_path: Path) -> None:
    touch(tmp_path / "readme.txt")
    with pytest.raises(DataError):
        detect_layout(tmp_path)
    with pytest.raises(DataError):
        find_cases(tmp_path, layout="bids")
    with pytest.raises(InputError):
        find_cases(tmp_path / "missing")
