"""Per-vertebra outputs in the formats viewers read: the DICOM-SEG and the .seg.nrrd hold one
named, coded segment per vertebra equal to ``vertebrae.nii.gz == label``, and the label names
travel with the NIfTI (header intent, colour table beside it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seg_readback import read_seg_onto
from spineseg.cli.main import main
from spineseg.export.label_map import NIFTI_INTENT_LABEL, read_colour_table
from spineseg.io import read_image, write_dicom_series
from spineseg.vertebrae.analysis import label_vertebrae
from spineseg.vertebrae.outputs import VertebraeFormats, colour, write_vertebrae_files
from vertebra_column import make_column

ALL_TYPES = ("nifti", "dicom-seg", "seg-nrrd")


@pytest.fixture(scope="module")
def column_series(tmp_path_factory):
    """A named column (pelvis anchor: L5, L4, L3) as a DICOM series, its mask and labels."""
    col = make_column([(26.0, 26.0)] * 3, pelvis=True, spacing=(2.0, 2.0, 2.0),
                      half_width_mm=60.0)
    folder = tmp_path_factory.mktemp("col") / "series"
    write_dicom_series(col.ct, folder)
    ct = read_image(folder)
    mask = ct.with_array(np.asarray(col.mask.array))
    return folder, ct, mask, label_vertebrae(ct, mask, output_grid=ct)


@pytest.fixture(scope="module")
def written(column_series, tmp_path_factory):
    folder, _, _, result = column_series
    out = tmp_path_factory.mktemp("vout")
    write_vertebrae_files(result, out, mesh=False, preview=False,
                          formats=VertebraeFormats(ALL_TYPES, folder))
    return out


def test_vertebrae_dicom_seg_segments_equal_the_label_nifti(column_series, written):
    import pydicom

    _, ct, _, result = column_series
    assert [v.name for v in result.vertebrae] == ["L5", "L4", "L3"]
    labels = read_image(written / "vertebrae.nii.gz")
    assert labels.same_grid(ct)
    ds = pydicom.dcmread(written / "vertebrae.seg.dcm")
    segments = list(ds.SegmentSequence)
    assert [s.SegmentLabel for s in segments] == ["L3", "L4", "L5"]  # from the top down
    expected_codes = {"L3": "36470004", "L4": "11994002", "L5": "49668003"}
    for number, s in enumerate(segments, start=1):
        assert s.SegmentNumber == number
        code = s.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodingSchemeDesignator, code.CodeValue) == ("SCT",
                                                                 expected_codes[s.SegmentLabel])
        assert code.CodeMeaning == f"{s.SegmentLabel} vertebra"
        value = int(s.TrackingID.rsplit("label ", 1)[1].rstrip(")"))
        truth = np.asarray(labels.array) == value
        assert truth.sum() > 100
        np.testing.assert_array_equal(read_seg_onto(written / "vertebrae.seg.dcm", ct, number),
                                      truth)
        assert s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "spineseg"
    assert ds.SeriesDescription == "spineseg vertebrae"


def test_vertebrae_seg_nrrd_has_a_named_segment_per_vertebra(written):
    import nrrd

    data, header = nrrd.read(str(written / "vertebrae.seg.nrrd"))
    labels = read_image(written / "vertebrae.nii.gz")
    np.testing.assert_array_equal(data.T, labels.array)  # label values are the VerSe ids
    table = json.loads((written / "vertebrae.json").read_text())
    assert len(table["labels"]) == 3
    for i, entry in enumerate(table["labels"]):
        key = f"Segment{i}_"
        assert header[key + "Name"] == header[key + "ID"] == entry["name"]
        assert header[key + "LabelValue"] == str(entry["id"])
        assert header[key + "Layer"] == "0"
        assert [float(c) for c in header[key + "Color"].split()] == pytest.approx(
            [c / 255 for c in entry["colour"]], abs=1e-5)
        tags = dict(t.split(":", 1) for t in header[key + "Tags"].split("|") if t)
        parts = tags["TerminologyEntry"].split("~")
        assert parts[1] == "SCT^91723000^Anatomical Structure"
        assert parts[2].endswith(f"^{entry['name']} vertebra")
        zz, yy, xx = np.nonzero(np.asarray(labels.array) == entry["id"])
        assert [int(v) for v in header[key + "Extent"].split()] == [
            xx.min(), xx.max(), yy.min(), yy.max(), zz.min(), zz.max()]
    assert "Segment3_ID" not in header
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"


def test_label_names_travel_with_the_nifti(column_series, written):
    import nibabel as nib

    _, _, _, result = column_series
    header = nib.load(written / "vertebrae.nii.gz").header
    assert int(header["intent_code"]) == NIFTI_INTENT_LABEL
    assert header.get_intent()[0] == "label" and header.get_intent()[2] == "vertebrae"
    aux = header["aux_file"].tobytes().rstrip(b"\0").decode()
    assert aux == "vertebrae.ctbl" and (written / aux).is_file()
    table = read_colour_table(written / aux)
    assert table[0][0] == "Background"
    values = set(np.unique(np.asarray(read_image(written / "vertebrae.nii.gz").array))) - {0}
    assert set(table) - {0} == values
    by_value = {v.label: v.name for v in result.vertebrae}
    for value in values:
        name, rgba = table[int(value)]
        assert name == by_value[int(value)]
        assert rgba == (*colour(int(value)), 255)
    lines = (written / aux).read_text().splitlines()
    assert lines[0].startswith("# Color table file") and lines[1] == "# 4 values"


def test_segment_vertebrae_writes_the_typed_label_files(column_series, tiny_model_file,
                                                         tmp_path, monkeypatch, capsys):
    """The wiring of ``segment --vertebrae --output-type``: the vertebrae come from the known
    column mask (the tiny test model's own mask would not split into vertebrae)."""
    import pydicom

    import spineseg.inference.outputs as inference_outputs

    folder, ct, mask, _ = column_series
    monkeypatch.setattr(inference_outputs, "vertebrae_of_segmentation",
                        lambda res: label_vertebrae(ct, mask, output_grid=res.mask))
    out = tmp_path / "out"
    rc = main(["segment", str(folder), "-o", str(out), "--model", str(tiny_model_file),
               "--mesh", "none", "--no-preview", "--vertebrae", "--device", "cpu",
               "--output-type", "dicom-seg,seg-nrrd"])
    assert rc == 0, capsys.readouterr().err
    stats = json.loads((out / "stats.json").read_text())
    assert {"vertebrae.seg.dcm", "vertebrae.seg.nrrd", "vertebrae.ctbl",
            "spine.seg.dcm"} <= set(stats["outputs"])
    assert stats["vertebrae_summary"]["count"] == 3
    labels = read_image(out / "vertebrae.nii.gz")
    first = int(np.max(labels.array))
    ds = pydicom.dcmread(out / "vertebrae.seg.dcm")
    number = next(s.SegmentNumber for s in ds.SegmentSequence
                  if s.TrackingID.endswith(f"(label {first})"))
    np.testing.assert_array_equal(read_seg_onto(out / "vertebrae.seg.dcm", ct, number),
                                  np.asarray(labels.array) == first)


@pytest.mark.shared_data
def test_vertebrae_of_ts_chest_dicom_read_back_identical(shared_data, tmp_path):
    """The real, anonymised series with its reference spine mask: every vertebra segment of the
    DICOM-SEG and the .seg.nrrd equals the label NIfTI on the source grid."""
    import nrrd
    import pydicom

    from spineseg.io import resample_to

    folder = shared_data / "ts_chest_dicom"
    ct = read_image(folder)
    ref = resample_to(read_image(shared_data / "ts_chest_dicom_ref" / "spine.nii.gz"), ct,
                      interpolation="nearest")
    result = label_vertebrae(ct, ref, output_grid=ct)
    write_vertebrae_files(result, tmp_path, mesh=False, preview=False,
                          formats=VertebraeFormats(ALL_TYPES, folder))
    labels = np.asarray(read_image(tmp_path / "vertebrae.nii.gz").array)
    segments = pydicom.dcmread(tmp_path / "vertebrae.seg.dcm").SegmentSequence
    assert len(segments) == len(result.vertebrae) >= 2
    for s in segments:
        value = int(s.TrackingID.rsplit("label ", 1)[1].rstrip(")"))
        np.testing.assert_array_equal(
            read_seg_onto(tmp_path / "vertebrae.seg.dcm", ct, s.SegmentNumber), labels == value)
    data, _ = nrrd.read(str(tmp_path / "vertebrae.seg.nrrd"))
    np.testing.assert_array_equal(data.T, labels)


def test_vertebrae_command_writes_the_typed_files_and_refuses_dicom_seg_without_a_series(
        column_series, tmp_path, capsys):
    from spineseg.io import write_image

    folder, ct, mask, _ = column_series
    mask_file = write_image(mask, tmp_path / "spine.nii.gz")
    out = tmp_path / "out"
    assert main(["vertebrae", str(folder), str(mask_file), "-o", str(out), "--mesh", "none",
                 "--no-preview", "--output-type", "dicom-seg,seg-nrrd"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert {"vertebrae.seg.dcm", "vertebrae.seg.nrrd", "vertebrae.ctbl"} <= set(stats["outputs"])
    assert stats["vertebrae_summary"]["count"] == 3
    labels = np.asarray(read_image(out / "vertebrae.nii.gz").array)
    table = json.loads((out / "vertebrae.json").read_text())["labels"]
    assert [e["name"] for e in table] == ["L3", "L4", "L5"]
    np.testing.assert_array_equal(read_seg_onto(out / "vertebrae.seg.dcm", ct, 1),
                                  labels == table[0]["id"])  # segment 1: the top vertebra
    capsys.readouterr()
    ct_file = write_image(ct, tmp_path / "ct.nii.gz")
    assert main(["vertebrae", str(ct_file), str(mask_file), "-o", str(tmp_path / "o2"),
                 "--output-type", "dicom-seg"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a DICOM series" in err
    assert not (tmp_path / "o2").exists()
