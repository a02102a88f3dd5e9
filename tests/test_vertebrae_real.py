"""Vertebra names and outputs on real scans (needs ../shared/data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spineseg.cli.main import main
from spineseg.io import read_image, resample_to
from spineseg.vertebrae.analysis import label_vertebrae

pytestmark = pytest.mark.shared_data
# TotalSegmentator ids of ts_abdomen_3mm's reference: 27 L5 ... 31 L1, 32 T12.
TS_NAMES = {27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1", 32: "T12"}


def test_abdomen_reference_mask_is_named_from_pelvis_and_last_rib(shared_data):
    case = shared_data / "ts_abdomen_3mm"
    ct = read_image(case / "ct.nii.gz")
    result = label_vertebrae(ct, read_image(case / "spine.nii.gz"))
    assert {a["kind"] for a in result.report.anchors} == {"pelvis", "last rib"}
    ref = np.asarray(read_image(case / "vertebrae.nii.gz").array)
    got = np.asarray(result.labels.array)
    names = {v.label: v.name for v in result.vertebrae}
    for ts_id, name in TS_NAMES.items():
        under = got[ref == ts_id]
        assert names[int(np.bincount(under[under > 0]).argmax())] == name


def test_chest_slab_without_an_anchor_gets_no_confident_name(shared_data):
    ct = read_image(shared_data / "ts_chest_dicom")
    result = label_vertebrae(ct, read_image(shared_data / "ts_chest_dicom_ref" / "spine.nii.gz"))
    assert not result.named
    assert all(v.level.confidence == 0.0 for v in result.vertebrae)
    # The mask is stored in another voxel order: the label map must still lie on bone.
    labels = resample_to(result.labels, ct, interpolation="nearest").array > 0
    assert float(np.asarray(ct.array)[labels].mean()) > 200


def test_cli_on_a_sagittal_case(shared_data, tmp_path, capsys):
    case = shared_data / "verse008"
    out = tmp_path / "v8"
    assert main(["vertebrae", str(case / "ct.nii.gz"), str(case / "spine.nii.gz"),
                 "-o", str(out)]) == 0
    table = json.loads((out / "vertebrae.json").read_text())
    assert [e["name"] for e in table["labels"]] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    stats = json.loads((out / "stats.json").read_text())
    l1 = stats["vertebrae"]["vertebrae_L1"]
    assert 20 < l1["height_posterior_mm"] < 35 and 30 < l1["volume_ml"] < 80
    assert (out / "vertebrae.ply").stat().st_size > 0


def test_segment_with_vertebrae_adds_them_to_the_case(shared_data, tmp_path):
    out = tmp_path / "case"
    ct = shared_data / "verse005" / "ct.nii.gz"
    assert main(["segment", str(ct), "-o", str(out), "--vertebrae", "--device", "cpu",
                 "--threads", "1", "--quiet"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    # The coloured mesh is PLY whatever --mesh names for spine.<fmt> (STL has no colours).
    for name in ("vertebrae.nii.gz", "vertebrae.json", "vertebrae.csv", "vertebrae.ply",
                 "vertebrae_preview.png"):
        assert name in stats["outputs"] and (out / name).is_file()
    assert stats["vertebrae"] and "vertebrae_summary" in stats
    assert read_image(out / "vertebrae.nii.gz").same_grid(read_image(out / "spine.nii.gz"))

