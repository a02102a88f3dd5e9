"""Vertebra instances, level names, measurements and outputs on columns of known geometry."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from spineseg.cli.main import main
from spineseg.errors import GeometryError, InputError
from spineseg.io import Volume, read_image, reorient, write_image
from spineseg.vertebrae.analysis import label_vertebrae
from spineseg.vertebrae.instances import InstanceConfig, split_vertebrae
from spineseg.vertebrae.levels import UNNAMED_BASE, VERSE_IDS
from vertebra_column import make_column


def _dice_per_truth(col, result) -> list[float]:
    lab = np.asarray(result.canonical_labels.array)
    out = []
    for k in range(1, int(col.truth.max()) + 1):
        t = col.truth == k
        vals, counts = np.unique(lab[t], return_counts=True)
        best = vals[np.argmax(counts)]
        out.append(2 * float((t & (lab == best)).sum()) / (t.sum() + (lab == best).sum()))
    return out


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (3.0, 1.5, 1.5)], ids=["iso", "sagittal"])
def test_instances_match_each_vertebra(spacing):
    col = make_column([(26.0, 26.0)] * 4, spacing=spacing)
    result = label_vertebrae(col.ct, col.mask)
    assert len(result.vertebrae) == 4
    assert min(_dice_per_truth(col, result)) >= 0.95


def test_tilted_column_is_split_and_measured_across_its_endplates():
    col = make_column([(24.0, 24.0)] * 4, tilt_deg=20.0)
    result = label_vertebrae(col.ct, col.mask)
    assert len(result.vertebrae) == 4
    assert min(_dice_per_truth(col, result)) >= 0.9
    inner = [v.measures for v in result.vertebrae[1:3]]  # a z-axis height would read 25.5+
    for m in inner:
        assert m.height_middle_mm == pytest.approx(24.0, abs=2.0)


def test_heights_and_trabecular_hu_match_the_phantom():
    heights = [(26.0, 26.0), (26.0, 26.0), (16.0, 26.0), (26.0, 26.0)]
    col = make_column(heights, trabecular_hu=120.0)
    result = label_vertebrae(col.ct, col.mask)
    for v, (h_ant, h_post) in zip(result.vertebrae, heights, strict=True):
        m = v.measures
        expect = [h_ant + (h_post - h_ant) * f for f in (0.15, 0.5, 0.85)]
        got = [m.height_anterior_mm, m.height_middle_mm, m.height_posterior_mm]
        assert got == pytest.approx(expect, abs=1.6)
        assert m.hu_median == pytest.approx(120.0, abs=1.0)  # the 700 HU cortex is eroded away
    flags = [v.measures.height_flag for v in result.vertebrae]
    assert flags == [False, False, True, False]
    assert result.vertebrae[2].measures.ratio_anterior_posterior < 0.8


def test_names_from_the_pelvis_and_the_last_rib():
    col = make_column([(26.0, 26.0)] * 7, rib_levels=(5, 6), pelvis=True)
    result = label_vertebrae(col.ct, col.mask)
    names = [v.name for v in result.vertebrae]
    assert names == ["L5", "L4", "L3", "L2", "L1", "T12", "T11"]
    assert {a["kind"] for a in result.report.anchors} == {"pelvis", "last rib"}
    assert not result.report.transitional
    assert min(v.level.confidence for v in result.vertebrae) >= 0.8
    labels = np.unique(np.asarray(result.labels.array))
    assert set(labels) == {0, *(VERSE_IDS[n] for n in names)}


def test_a_count_across_a_merged_instance_is_not_confident():
    # A 60 mm "vertebra" is what two bodies merged by an imperfect mask look like: the names
    # counted from the last rib across it could be one off, so they lose their confidence;
    # the vertebrae between the anchor and it keep theirs.
    col = make_column([(26.0, 26.0), (60.0, 60.0)] + [(26.0, 26.0)] * 5, rib_levels=(5, 6))
    result = label_vertebrae(col.ct, col.mask)
    conf = [v.level.confidence for v in result.vertebrae]
    at = result.config.levels.confident
    assert [v.name for v in result.vertebrae][2:6] == ["L3", "L2", "L1", "T12"]
    assert max(conf[:2]) < at and min(conf[2:]) >= at


def _thin_ribs(col, keep_mm: float = 4.0):
    """The column's CT with each rib only ``keep_mm`` thick: bone beside a vertebra between the
    rib and the pelvis amounts (here ~0.7 mL per cm of body height)."""
    hu = np.asarray(col.ct.array).copy()
    sy = col.ct.spacing[1]
    y_mm = np.arange(hu.shape[1]) * sy - 40.0  # make_column's y axis
    rib = (hu == 600) & (y_mm > 3.0 + keep_mm)[None, :, None]
    hu[rib] = 40
    return Volume(hu, col.ct.spacing, col.ct.origin)


def test_the_first_rib_needs_ribs_below_it():
    # Bone beside only the lowest vertebra of a crop is as likely the iliac crests beside L5
    # (short of the pelvis rule) as T1's ribs: no anchor. With a second rib-bearing vertebra
    # below, the upper one is T1.
    col = make_column([(22.0, 22.0)] * 4, rib_levels=(0,))
    lowest = label_vertebrae(_thin_ribs(col), col.mask)
    assert not lowest.named
    assert not lowest.report.anchors
    col = make_column([(22.0, 22.0)] * 4, rib_levels=(0, 1))
    two = label_vertebrae(_thin_ribs(col), col.mask)
    assert [v.name for v in two.vertebrae] == ["T2", "T1", "C7", "C6"]
    assert [a["kind"] for a in two.report.anchors] == ["first rib"]


def test_without_an_anchor_vertebrae_stay_unnamed():
    col = make_column([(26.0, 26.0)] * 3)
    result = label_vertebrae(col.ct, col.mask)
    assert not result.named
    assert [v.name for v in result.vertebrae] == ["V3", "V2", "V1"]  # V1 the highest
    assert all(v.label > UNNAMED_BASE and v.level.confidence == 0.0 for v in result.vertebrae)
    assert "no anchor" in result.report.note


def test_six_rib_free_vertebrae_are_reported_not_forced():
    col = make_column([(24.0, 24.0)] * 8, rib_levels=(6, 7), pelvis=True, disc_mm=6.0)
    result = label_vertebrae(col.ct, col.mask)
    assert result.vertebrae[0].name == "L6"
    assert any("L6" in note for note in result.report.transitional)
    assert all(v.level.confidence < result.config.levels.confident for v in result.vertebrae)


def test_vertebra_cut_by_the_scan_is_partial_without_heights():
    col = make_column([(26.0, 26.0)] * 3, margin_mm=10.0)
    top = int(np.flatnonzero(col.truth.max(axis=(1, 2)) == 3)[0]) + 8  # cut through the top body
    ct = Volume(col.ct.array[:top], col.ct.spacing, col.ct.origin)
    mask = Volume(col.mask.array[:top], col.ct.spacing, col.ct.origin)
    result = label_vertebrae(ct, mask)
    top_v = result.vertebrae[-1]
    assert top_v.measures.partial and top_v.measures.height_middle_mm is None
    assert not result.vertebrae[0].measures.partial


def test_mask_in_another_voxel_order_lines_up_through_physical_space():
    col = make_column([(26.0, 26.0)] * 3)
    flipped = reorient(col.mask, "RAI")
    assert not np.array_equal(flipped.array.shape, col.mask.array.shape) or \
        not np.array_equal(flipped.array, col.mask.array)
    a = label_vertebrae(col.ct, col.mask)
    b = label_vertebrae(col.ct, flipped)
    assert np.array_equal(a.labels.array, b.labels.array)


def test_bad_masks_are_refused():
    col = make_column([(26.0, 26.0)] * 2)
    with pytest.raises(InputError, match="empty"):
        label_vertebrae(col.ct, col.mask.with_array(np.zeros_like(col.mask.array)))
    far = Volume(col.mask.array, col.mask.spacing, (5000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="overlap"):
        label_vertebrae(col.ct, far)


@pytest.fixture
def column_files(tmp_path):
    col = make_column([(26.0, 26.0)] * 7, rib_levels=(5, 6), pelvis=True)
    ct, mask = tmp_path / "ct.nii.gz", tmp_path / "spine.nii.gz"
    write_image(col.ct, ct)
    write_image(col.mask, mask)
    return ct, mask


def test_cli_writes_every_output(column_files, tmp_path, capsys):
    ct, mask = column_files
    out = tmp_path / "out"
    assert main(["vertebrae", str(ct), str(mask), "-o", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"vertebrae.nii.gz", "vertebrae.ctbl", "vertebrae.json", "vertebrae.csv",
                     "vertebrae.ply", "vertebrae_preview.png", "stats.json"}
    table = json.loads((out / "vertebrae.json").read_text())
    assert [e["name"] for e in table["labels"]][:2] == ["T11", "T12"]
    assert table["named"] and all(len(e["colour"]) == 3 for e in table["labels"])
    stats = json.loads((out / "stats.json").read_text())
    assert stats["vertebrae"]["vertebrae_L1"]["height_middle_mm"] > 20
    labels = read_image(out / "vertebrae.nii.gz")
    assert labels.same_grid(read_image(ct))
    assert "L5" in capsys.readouterr().out
    csv = (out / "vertebrae.csv").read_text().splitlines()
    assert len(csv) == 8 and csv[0].startswith("structure,label,name")


def test_cli_bad_input_one_line_and_nothing_overwritten(column_files, tmp_path, capsys):
    ct, mask = column_files
    out = tmp_path / "out"
    assert main(["vertebrae", str(ct), str(tmp_path / "missing.nii.gz"), "-o", str(out)]) == 3
    assert not out.exists()
    assert main(["vertebrae", str(ct), str(mask), "-o", str(out), "--mesh", "none",
                 "--no-preview"]) == 0
    before = (out / "vertebrae.json").read_bytes()
    capsys.readouterr()
    assert main(["vertebrae", str(ct), str(mask), "-o", str(out), "--mesh", "none",
                 "--no-preview"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert (out / "vertebrae.json").read_bytes() == before
    empty = tmp_path / "empty.nii.gz"
    write_image(read_image(mask).with_array(np.zeros_like(read_image(mask).array)), empty)
    assert main(["vertebrae", str(ct), str(empty), "-o", str(tmp_path / "o2")]) == 3
    assert not (tmp_path / "o2" / "vertebrae.nii.gz").exists()


def test_vertebrae_package_needs_no_torch():
    code = ("import sys, spineseg.vertebrae.outputs, spineseg.cli.vertebrae; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_public_api_exports_label_vertebrae():
    import spineseg

    assert spineseg.label_vertebrae is label_vertebrae


def test_segment_vertebrae_on_a_folder_of_cases(tmp_path, tiny_model_file, monkeypatch,
                                               capsys):
    """Every case of a cohort gets its vertebra files and its count in the report; a case whose
    vertebrae fail fails alone; a re-run without --vertebrae is a change of settings. The
    vertebrae come from the known column mask (the tiny model's mask would not split)."""
    import spineseg.inference.batch as batch

    col = make_column([(26.0, 26.0)] * 3, pelvis=True, spacing=(2.0, 2.0, 2.0),
                      half_width_mm=60.0)
    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("a", "b", "c"):
        write_image(col.ct, cases / f"{name}.nii.gz")

    def known_column(res):
        if "c.nii" in res.stats["input"]["source"]:
            raise GeometryError("this case's vertebrae fail")
        return label_vertebrae(col.ct, col.mask, output_grid=res.mask)

    monkeypatch.setattr(batch, "vertebrae_of_segmentation", known_column)
    out = tmp_path / "out"
    argv = ["segment", str(cases), "-o", str(out), "--model", str(tiny_model_file), "--mesh",
            "none", "--no-preview", "--device", "cpu", "--quiet"]
    assert main([*argv, "--vertebrae"]) == 8  # one case failed
    capsys.readouterr()
    for name in ("a", "b"):
        stats = json.loads((out / name / "stats.json").read_text(encoding="utf-8"))
        assert stats["vertebrae_summary"]["count"] == 3
        assert (out / name / "vertebrae.nii.gz").is_file()
        assert stats["settings"]["outputs"]["vertebrae"] is True
    assert not (out / "c" / "vertebrae.nii.gz").exists()
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Vertebrae" in report and "this case&#x27;s vertebrae fail" in report
    assert main(argv) == 4  # the same cohort without --vertebrae: other settings
    err = capsys.readouterr().err
    assert "--vertebrae" in err and err.count("\n") == 1


def _fused_joint(sheet_z: int) -> tuple[np.ndarray, np.ndarray]:
    """Two bodies joined behind by a bar of bone the mask fuses; the CT's joint space (a dark
    one-voxel sheet across the bar) lies at ``sheet_z``, below the bar's geodesic midpoint."""
    mask = np.zeros((70, 50, 30), dtype=bool)
    mask[2:26, 5:29, 3:27] = True   # lower body
    mask[42:66, 5:29, 3:27] = True  # upper body
    mask[10:58, 29:35, 12:18] = True  # the fused arches
    ct = np.where(mask, 1000.0, 0.0).astype(np.float32)
    ct[sheet_z, 29:35, 12:18] = 0.0
    return mask, ct


def test_a_joint_space_the_mask_fuses_separates_the_vertebrae():
    mask, ct = _fused_joint(sheet_z=30)
    bar = (slice(31, 34), slice(29, 35), slice(12, 18))  # between the sheet and the midpoint
    plain = split_vertebrae(mask, (1.0, 1.0, 1.0))
    with_ct = split_vertebrae(mask, (1.0, 1.0, 1.0), ct=ct)
    assert plain.count == with_ct.count == 2
    assert np.all(plain.labels[bar] == 1)  # nearest seed along the mask: the lower body
    assert np.all(with_ct.labels[bar] == 2)  # the joint space puts it with the upper one
    assert np.all(with_ct.labels[10:30, 29:35, 12:18] == 1)
    # Without a dark gap the CT changes nothing.
    solid = split_vertebrae(mask, (1.0, 1.0, 1.0), ct=np.where(mask, 1000.0, 0.0))
    assert np.array_equal(solid.labels, plain.labels)


def _arch_on_a_thread() -> np.ndarray:
    """Two vertebrae as a network's mask often has them: the upper body's pedicle broken down to
    a thread, its arch fused to the lower arch by a thick bar where the facet joint was."""
    mask = np.zeros((72, 64, 30), dtype=bool)
    mask[2:26, 5:29, 3:27] = True     # lower body
    mask[40:64, 5:29, 3:27] = True    # upper body
    mask[8:20, 29:42, 8:22] = True    # the lower pedicles, solid
    mask[4:22, 42:54, 6:24] = True    # the lower arch
    mask[50:53, 29:42, 14:16] = True  # the upper pedicle, a thread
    mask[42:62, 42:54, 6:24] = True   # the upper arch, at its body's height
    mask[22:42, 44:52, 8:22] = True   # the fused facet joint
    return mask


def test_an_arch_stays_in_its_own_slab_of_the_column():
    mask = _arch_on_a_thread()
    upper_arch, lower_arch = np.s_[46:60, 44:52, 8:22], np.s_[6:20, 44:52, 8:22]
    shortest = split_vertebrae(mask, (1.0, 1.0, 1.0), config=InstanceConfig(slab_cost=0.0))
    assert shortest.count == 2 and np.all(shortest.labels[upper_arch] == 1)  # via the bar
    inst = split_vertebrae(mask, (1.0, 1.0, 1.0))
    assert inst.count == 2
    assert np.all(inst.labels[upper_arch] == 2) and np.all(inst.labels[lower_arch] == 1)
