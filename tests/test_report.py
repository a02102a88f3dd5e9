"""Per-case statistics and flags, ``spineseg stats``, and the cohort ``report.html``: a planted
bad case raises its flag, every case has its row, re-runs keep skipped cases."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from spineseg.cli.main import main
from spineseg.io import Volume, reorient, write_image
from spineseg.report.cohort_html import ReportRow, render_report, thumbnail_data_uri
from spineseg.report.flags import (
    GAP_MM,
    LOW_CONFIDENCE_SHARE,
    TINY_ML,
    column_gap_mm,
    confidence_flags,
    mask_flags,
    probability_histogram,
    uncertain_share,
)
from spineseg.report.statistics import measure
from synthetic_ct import ct_volume

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # axes swapped: x points along -y


def _column(shape=(20, 16, 16), spacing=(1.0, 1.0, 2.0), gap=None) -> Volume:
    """A block 'column' along z in the middle of the scan, optionally with empty slices."""
    m = np.zeros(shape, np.uint8)
    m[2:18, 5:11, 6:10] = 1
    if gap is not None:
        m[gap[0]:gap[1]] = 0
    return Volume(m, spacing)


def _codes(flags) -> list[str]:
    return [f.code for f in flags]


def test_measure_counts_boxes_and_hu():
    ct = ct_volume((6, 10, 12), spacing=(0.5, 1.0, 2.0), origin=(10.0, 20.0, 30.0))
    m = np.zeros(ct.array.shape, np.uint8)
    m[1:4, 2:5, 3:9] = 1
    s = measure(ct.with_array(m), ct)
    assert s.voxel_count == 3 * 3 * 6
    assert s.volume_ml == pytest.approx(54 * 0.5 * 1.0 * 2.0 / 1000, abs=1e-3)
    values = ct.array[m > 0].astype(float)
    assert s.intensity_mean_hu == pytest.approx(values.mean(), abs=0.01)
    assert s.intensity_median_hu == pytest.approx(np.median(values), abs=0.01)
    box = s.bounding_box
    assert box.voxel_min == (3, 2, 1) and box.voxel_max == (8, 4, 3)
    assert box.lps_min_mm == pytest.approx((11.5, 22.0, 32.0))
    assert box.lps_max_mm == pytest.approx((14.0, 24.0, 36.0))
    # a turned grid: voxel axis x runs along -y (0.5 mm), y along +x (1 mm)
    turned = Volume(m, (0.5, 1.0, 2.0), (10.0, 20.0, 30.0), OBLIQUE)
    tb = measure(turned).bounding_box
    assert tb.voxel_min == (3, 2, 1)
    assert tb.lps_min_mm == pytest.approx((10.0 + 2.0, 20.0 - 8 * 0.5, 32.0))
    assert tb.lps_max_mm == pytest.approx((10.0 + 4.0, 20.0 - 3 * 0.5, 36.0))
    assert measure(ct.with_array(np.zeros_like(m))).bounding_box is None


def test_flags_for_empty_tiny_gap_and_border():
    assert _codes(mask_flags(Volume(np.zeros((4, 4, 4), np.uint8), (1.0, 1.0, 1.0)), 0.0)) == [
        "empty"]
    whole = _column()
    assert _codes(mask_flags(whole, 50.0)) == []
    assert _codes(mask_flags(whole, TINY_ML / 2)) == ["tiny"]
    # 8 empty slices of 2 mm = 16 mm > GAP_MM; 6 of them (12 mm) is not a gap
    cut = _column(gap=(6, 14))
    assert column_gap_mm(cut) == (16.0, 6, 13)
    assert 16.0 > GAP_MM > 12.0
    assert _codes(mask_flags(cut, 50.0)) == ["gap"]
    assert _codes(mask_flags(_column(gap=(6, 12)), 50.0)) == []
    touching = _column()
    touching.array[8:10, 5:11, 0:3] = 1  # reaches the right-left border
    assert _codes(mask_flags(touching, 50.0)) == ["border"]
    grazing = Volume(np.zeros((40, 40, 40), np.uint8), (1.0, 1.0, 1.0))
    grazing.array[2:38, 10:30, 10:30] = 1
    grazing.array[20, 20, 0:10] = 1  # one voxel on the border out of 14 000: not a cut
    assert _codes(mask_flags(grazing, 50.0)) == []
    top = _column()
    top.array[0:3] = top.array[5]  # the top of the scan: normal, not a flag
    assert _codes(mask_flags(top, 50.0)) == []


def test_the_column_axis_follows_the_direction_not_the_array_order():
    """A sagittal grid stores the column along another array axis: the gap is still found."""
    cut = _column(gap=(6, 14))
    sagittal = reorient(cut, "ASL")  # voxel axes: anterior, superior, left
    assert sagittal.array.shape != cut.array.shape
    assert column_gap_mm(sagittal)[0] == 16.0
    assert _codes(mask_flags(sagittal, 50.0)) == ["gap"]


def test_confidence_from_the_probability_histogram():
    mask = np.zeros((4, 6, 6), bool)
    mask[1:3, 1:4, 1:4] = True
    prob = np.where(mask, 0.95, 0.01).astype(np.float16)
    sure = probability_histogram(prob, mask, slab=1)
    assert sum(sure) == 2 * 3 * 3 and uncertain_share(sure) == 0.0
    assert confidence_flags(sure) == []
    prob[1, 1:4, 1:4] = 0.45  # half the column uncertain
    unsure = probability_histogram(prob, mask, slab=1)
    assert uncertain_share(unsure) == pytest.approx(0.5)
    assert 0.5 > LOW_CONFIDENCE_SHARE
    assert _codes(confidence_flags(unsure)) == ["low_confidence"]
    assert confidence_flags(None) == []
    assert probability_histogram(prob, np.zeros_like(mask)) == [0] * 10


class _Rows(HTMLParser):
    """Rows of the report table: their data attributes, flag codes and external references."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.flags: dict[str, list[str]] = {}
        self.external: list[str] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])
        if tag == "tr" and "data-case" in a:
            self.rows.append(a)
            self.flags[a["data-case"]] = []
        elif tag == "span" and "flag" in a.get("class", "") and self.rows:
            self.flags[self.rows[-1]["data-case"]].append(a["class"].split()[1])
        elif tag == "img":
            self.images += 1


def _parse(text: str) -> _Rows:
    parser = _Rows()
    parser.feed(text)
    return parser


def test_render_report_rows_flags_first_and_self_contained(tmp_path):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8, 2))
    fig.savefig(tmp_path / "preview.png")
    plt.close(fig)
    rows = [
        ReportRow("a_ok", "done", seconds=3.0, preview=tmp_path / "preview.png",
                  record={"spine_volume_ml": 300.0, "craniocaudal_extent_mm": 200,
                          "statistics": {"intensity_mean_hu": 250.0, "intensity_median_hu": 200},
                          "flags": []}),
        ReportRow("b_gap", "skipped", record={"spine_volume_ml": 120.0, "flags": [
            {"code": "gap", "message": "a gap of 30 mm"}]}),
        ReportRow("c_bad", "failed", message="c.nii.gz: not a CT <script>"),
    ]
    text = render_report(rows)
    parsed = _parse(text)
    assert [r["data-case"] for r in parsed.rows] == ["c_bad", "b_gap", "a_ok"]
    assert parsed.flags == {"c_bad": ["failed"], "b_gap": ["gap"], "a_ok": []}
    assert parsed.external == [] and parsed.images == 1
    assert text.count("<script>") == 1  # the sort script only; the message is escaped
    assert "not a CT &lt;script&gt;" in text
    thumb = thumbnail_data_uri(tmp_path / "preview.png")
    assert thumb.startswith("data:image/jpeg;base64,") and thumb in text
    assert thumbnail_data_uri(tmp_path / "missing.png") is None


class _Cells(HTMLParser):
    """Header labels and each row's cell texts, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: list[str] = []
        self.rows: list[list[str]] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr" and dict(attrs).get("data-case"):
            self.rows.append([])
        if tag in ("th", "td"):
            self._in = tag
            (self.heads if tag == "th" else self.rows[-1]).append("")

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self._in = None

    def handle_data(self, data):
        if self._in == "th":
            self.heads[-1] += data
        elif self._in == "td" and self.rows:
            self.rows[-1][-1] += data


def test_report_shows_the_vertebra_count_when_vertebrae_were_computed():
    rows = [ReportRow("a", "done", record={"vertebrae_summary": {"count": 7}, "flags": []}),
            ReportRow("b", "done", record={"vertebrae": {"vertebrae_L1": {}, "vertebrae_L2": {}},
                                           "flags": []}),  # a record without "count"
            ReportRow("c", "done", record={"flags": []})]
    parser = _Cells()
    parser.feed(render_report(rows))
    column = parser.heads.index("Vertebrae")
    assert {r[0]: r[column] for r in parser.rows} == {"a": "7", "b": "2", "c": ""}
    assert [r["data-vertebrae"] for r in _parse(render_report(rows)).rows] == ["7", "2", ""]
    plain = _Cells()
    plain.feed(render_report([rows[2]]))
    assert "Vertebrae" not in plain.heads
    assert all(len(r) == len(plain.heads) for r in plain.rows)
    assert all(len(r) == len(parser.heads) for r in parser.rows)


def _planted_cohort(root: Path) -> Path:
    """Two synthetic cases and a planted failure (an unreadable file)."""
    root.mkdir()
    write_image(ct_volume(seed=1), root / "a.nii.gz")
    write_image(ct_volume(seed=2), root / "b.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"not a nifti")
    return root


def test_batch_writes_report_and_flags_and_rewrites_it_on_rerun(tiny_model_file, tmp_path,
                                                               capfd):
    cohort = _planted_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    argv = ["segment", str(cohort), "-o", str(out), "--model", str(tiny_model_file),
            "--mesh", "none", "--device", "cpu"]
    assert main(argv) == 8  # one case failed
    capfd.readouterr()
    report = out / "report.html"
    parsed = _parse(report.read_text(encoding="utf-8"))
    assert sorted(r["data-case"] for r in parsed.rows) == ["a", "b", "broken"]
    assert parsed.flags["broken"] == ["failed"]
    status = {r["data-case"]: r["data-status"] for r in parsed.rows}
    assert status == {"a": "done", "b": "done", "broken": "failed"}
    assert parsed.external == [] and parsed.images == 2
    record = json.loads((out / "a" / "stats.json").read_text())
    assert {"statistics", "flags", "confidence"} <= set(record)
    assert parsed.flags["a"] == [f["code"] for f in record["flags"]]
    summary = {r["case"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert summary["broken"]["flags"] == "failed"
    assert summary["a"]["flags"] == ";".join(parsed.flags["a"])
    # a re-run skips the finished cases and still shows them, with their flags
    shutil.copy(cohort / "a.nii.gz", cohort / "c.nii.gz")
    before = report.stat().st_mtime_ns
    assert main(argv) == 8
    again = _parse(report.read_text(encoding="utf-8"))
    assert report.stat().st_mtime_ns != before
    status = {r["data-case"]: r["data-status"] for r in again.rows}
    assert status == {"a": "skipped", "b": "skipped", "broken": "failed", "c": "done"}
    assert again.flags["a"] == parsed.flags["a"]
    assert not [p for p in out.iterdir() if p.name.startswith(".report")]  # atomic: no temp left


def test_stats_command_recomputes_from_files_and_refuses_bad_input(tmp_path, capfd):
    ct = ct_volume((10, 16, 16), spacing=(1.0, 1.0, 2.0), origin=(5.0, -3.0, 40.0))
    mask = _column((10, 16, 16))
    mask = ct.with_array(mask.array[:10])
    write_image(ct, tmp_path / "ct.nii.gz")
    write_image(mask, tmp_path / "mask.nii.gz")
    # the same mask stored on a flipped grid (another voxel order, same physical place)
    write_image(reorient(mask, "RAS"), tmp_path / "mask_ras.nrrd")
    assert main(["stats", str(tmp_path / "ct.nii.gz"), str(tmp_path / "mask.nii.gz")]) == 0
    first = json.loads(capfd.readouterr().out)
    expected = measure(mask, ct)
    assert first["statistics"]["voxel_count"] == expected.voxel_count > 0
    assert first["statistics"]["intensity_mean_hu"] == expected.intensity_mean_hu
    rc = main(["stats", str(tmp_path / "ct.nii.gz"), str(tmp_path / "mask_ras.nrrd"),
               "-o", str(tmp_path / "s.json")])
    assert rc == 0 and "wrote" in capfd.readouterr().out
    second = json.loads((tmp_path / "s.json").read_text())
    for key in ("voxel_count", "volume_ml", "intensity_mean_hu", "intensity_median_hu",
                "bounding_box"):
        assert second["statistics"][key] == first["statistics"][key], key
    assert second["statistics"]["notes"]  # says it resampled
    # existing output, a mask elsewhere in space, an unreadable mask: one line, non-zero
    rc = main(["stats", str(tmp_path / "ct.nii.gz"), str(tmp_path / "mask.nii.gz"),
               "-o", str(tmp_path / "s.json")])
    err = capfd.readouterr().err
    assert rc == 4 and err.count("\n") == 1 and "already exists" in err
    far = Volume(mask.array, mask.spacing, (900.0, 900.0, 900.0))
    write_image(far, tmp_path / "far.nii.gz")
    rc = main(["stats", str(tmp_path / "ct.nii.gz"), str(tmp_path / "far.nii.gz")])
    err = capfd.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and "does not overlap" in err
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    rc = main(["stats", str(tmp_path / "ct.nii.gz"), str(tmp_path / "junk.nii.gz")])
    err = capfd.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and "Traceback" not in err
    rc = main(["stats", str(tmp_path / "ct.nii.gz"), str(tmp_path / "mask.nii.gz"),
               "-o", str(tmp_path / "mask.nii.gz"), "--overwrite"])
    assert rc == 4 and "is an input" in capfd.readouterr().err


def _render_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "render_report", Path(__file__).resolve().parents[1] / "tools" / "render_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_renders_in_headless_chromium(tiny_model_file, tmp_path, capfd):
    tool = _render_tool()
    chromium = tool.find_chromium(install=False)
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium to run this check)")
    cohort = _planted_cohort(tmp_path / "cohort")
    out = tmp_path / "out"
    assert main(["segment", str(cohort), "-o", str(out), "--model", str(tiny_model_file),
                 "--mesh", "none", "--device", "cpu"]) == 8
    capfd.readouterr()
    assert tool.check(out / "report.html", chromium, expect_rows=3) == []


def _cut_column(ct: Volume, spine: Volume, first: int, last: int) -> Volume:
    """``ct`` with the vertebrae (and a margin around them) of slices ``first..last`` along the
    column replaced by soft tissue: a scan with a stretch of the spine cut out."""
    from scipy import ndimage

    from spineseg.report.flags import column_axis

    axis = column_axis(ct)
    region = ndimage.binary_dilation(np.asarray(spine.array) > 0, iterations=3)
    keep = np.ones(region.shape, bool)
    index = [slice(None)] * 3
    index[axis] = slice(first, last + 1)
    keep[tuple(index)] = False
    arr = np.asarray(ct.array).copy()
    arr[region & ~keep] = 40
    return ct.with_array(arr)


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_cohort_report_flags_a_scan_with_the_spine_cut_out(shared_data, tmp_path, capfd):
    """The shipped model on real scans: the chest DICOM series, the abdomen, and the abdomen
    with 36 mm of its column replaced by soft tissue, which alone must be flagged "gap"."""
    from spineseg.io import read_image
    from spineseg.report.flags import column_axis

    cohort = tmp_path / "cohort"
    shutil.copytree(shared_data / "ts_chest_dicom", cohort / "chest")
    ct = read_image(shared_data / "ts_abdomen_3mm" / "ct.nii.gz")
    spine = read_image(shared_data / "ts_abdomen_3mm" / "spine.nii.gz")
    axis = column_axis(ct)
    present = np.flatnonzero(np.asarray(spine.array).any(
        axis=tuple(a for a in range(3) if a != axis)))
    middle = int(present[len(present) // 2])
    write_image(ct, cohort / "abdomen.nii.gz")
    write_image(_cut_column(ct, spine, middle - 6, middle + 5), cohort / "abdomen_cut.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(cohort), "-o", str(out), "--mesh", "none", "--device", "cpu"])
    assert rc == 0, capfd.readouterr().err
    parsed = _parse((out / "report.html").read_text(encoding="utf-8"))
    assert sorted(r["data-case"] for r in parsed.rows) == ["abdomen", "abdomen_cut", "chest"]
    assert "gap" in parsed.flags["abdomen_cut"]
    assert "gap" not in parsed.flags["abdomen"] and "gap" not in parsed.flags["chest"]
    assert parsed.rows[0]["data-case"] == "abdomen_cut" or parsed.flags[
        parsed.rows[0]["data-case"]]  # flagged rows come first
    chromium = _render_tool().find_chromium(install=False)
    if chromium is not None:
        assert _render_tool().check(out / "report.html", chromium, expect_rows=3) == []
