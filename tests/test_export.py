"""DICOM-SEG and .seg.nrrd outputs: read back independently, they must equal spine.nii.gz voxel
for voxel on the source grid (oblique and flipped grids included), and carry the fields DICOM
viewers and 3D Slicer read."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import spineseg
from seg_readback import read_seg_onto
from spineseg.cli.main import main
from spineseg.errors import InputError, OutputError
from spineseg.export import parse_output_types
from spineseg.export.dicom_seg import DicomSegInfo, write_dicom_seg, write_dicom_seg_labels
from spineseg.export.seg_nrrd import write_seg_nrrd
from spineseg.export.terminology import Code, LabelSegment, vertebra_term
from spineseg.inference.model_file import load_segmentation_model
from spineseg.inference.pipeline import SegmentConfig
from spineseg.inference.predict import PredictConfig
from spineseg.io import Volume, read_image, resample_to, write_dicom_series, write_image
from spineseg.io.dicom import dicom_series_files
from synthetic_ct import ct_volume


def _rotation_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


# Tilted 25° in-plane (oblique: segmented on an axis-aligned resampling) with the row axis
# flipped (anterior-to-posterior reversed, as in ts_chest_dicom_ref): every way to misplace
# frames shows.
OBLIQUE_FLIPPED = tuple((_rotation_z(25.0) @ np.diag([1.0, -1.0, -1.0])).ravel())


def _read_seg_onto(path, reference: Volume) -> np.ndarray:
    """A DICOM-SEG's only segment on ``reference``'s grid, frames placed by position."""
    import highdicom as hd

    assert len(hd.seg.segread(path).SegmentSequence) == 1
    return read_seg_onto(path, reference, segment=1)


def _asymmetric_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """An L-shaped block, different under every flip and transpose of the axes."""
    m = np.zeros(shape, np.uint8)
    z, y, x = shape
    m[1:z - 2, y // 4:y // 2, x // 5:x // 2] = 1
    m[1:3, y // 4:3 * y // 4, x // 5:x // 3] = 1
    return m


@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom") / "series"
    vol = ct_volume((6, 24, 20), spacing=(1.5, 1.2, 2.5), origin=(-20.0, 30.0, 100.0))
    write_dicom_series(Volume(vol.array, vol.spacing, vol.origin, OBLIQUE_FLIPPED), folder)
    return folder, read_image(folder)


def test_dicom_seg_places_every_voxel_on_an_oblique_flipped_series(oblique_series, tmp_path):
    import pydicom

    folder, ct = oblique_series
    assert np.linalg.det(np.asarray(OBLIQUE_FLIPPED).reshape(3, 3)) > 0
    mask = ct.with_array(_asymmetric_mask(ct.array.shape))
    path = write_dicom_seg(mask, folder, tmp_path / "m.seg.dcm",
                           info=DicomSegInfo(model_sha256="ab" * 32, model_name="msrunet"))
    np.testing.assert_array_equal(_read_seg_onto(path, ct), mask.array)

    seg = pydicom.dcmread(path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(folder)]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    referenced = {r.ReferencedSOPInstanceUID
                  for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert referenced == {s.SOPInstanceUID for s in sources}
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "spine"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == "spineseg"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "91723000")
    assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
        "SCT", "421060004", "Spine")
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "spineseg"
    assert algorithm.AlgorithmVersion == spineseg.__version__
    assert "ab" * 32 in algorithm.AlgorithmParameters


def test_dicom_seg_refuses_a_mask_off_the_series_grid(oblique_series, tmp_path):
    folder, ct = oblique_series
    shifted = Volume(_asymmetric_mask(ct.array.shape), ct.spacing,
                     tuple(np.asarray(ct.origin) + np.array([0.0, 0.0, 1.0])), ct.direction)
    with pytest.raises(OutputError, match="does not lie where"):
        write_dicom_seg(shifted, folder, tmp_path / "m.seg.dcm")
    with pytest.raises(OutputError, match="slices"):
        write_dicom_seg(Volume(np.zeros((3, 24, 20), np.uint8), ct.spacing, ct.origin,
                               ct.direction), folder, tmp_path / "m.seg.dcm")
    assert not list(tmp_path.iterdir())


def test_dicom_seg_of_a_label_map_has_one_coded_segment_per_label(oblique_series, tmp_path):
    """Non-contiguous label values (VerSe ids, an unnamed 101) become segments 1, 2, …, each
    read back onto the oblique, flipped source grid equal to ``labels == value``."""
    import pydicom

    folder, ct = oblique_series
    labels = np.zeros(ct.array.shape, np.uint16)
    labels[1:3, 4:12, 3:9] = 20   # L1
    labels[3:5, 6:14, 5:11] = 19  # T12
    labels[0, 14:20, 10:16] = 25  # L6: no CID 7151 entry
    labels[5, 2:6, 12:18] = 101   # unnamed
    labels[4, 0:2, 0:2] = 7       # a value no segment lists: left out
    segments = [LabelSegment(v, vertebra_term(n, (10 * i, 20, 30)))
                for i, (v, n) in enumerate([(19, "T12"), (20, "L1"), (25, "L6"), (101, "V1")])]
    path = write_dicom_seg_labels(ct.with_array(labels), folder, tmp_path / "v.seg.dcm",
                                  segments, info=DicomSegInfo(model_sha256="cd" * 32))
    for number, seg in enumerate(segments, start=1):
        np.testing.assert_array_equal(read_seg_onto(path, ct, number), labels == seg.value)
    ds = pydicom.dcmread(path)
    got = [(s.SegmentNumber, s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning, s.TrackingID)
           for s in ds.SegmentSequence]
    assert got == [(1, "T12", "23215003", "T12 vertebra", "T12 (label 19)"),
                   (2, "L1", "66794005", "L1 vertebra", "L1 (label 20)"),
                   (3, "L6", "51282000", "Vertebra", "L6 (label 25)"),
                   (4, "V1", "51282000", "Vertebra", "V1 (label 101)")]
    for s in ds.SegmentSequence:
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
        algorithm = s.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "spineseg" and "cd" * 32 in algorithm.AlgorithmParameters


def test_vertebra_codes_are_those_of_dicom_cid_7151():
    from pydicom.sr.codedict import codes

    assert vertebra_term("L1", (0, 0, 0)).type == Code("SCT", "66794005", "L1 vertebra")
    assert vertebra_term("C2", (0, 0, 0)).type.value == codes.cid7151.C2Vertebra.value
    for name in ("L6", "T13", "V3", "L1 "):
        assert vertebra_term(name, (0, 0, 0)).type == Code("SCT", "51282000", "Vertebra")


@pytest.fixture(scope="module")
def segmented_series(oblique_series, tiny_model_file, tmp_path_factory):
    """The pipeline on the oblique series with a tiny model whose threshold makes a partial mask,
    saved with every output type."""
    folder, ct = oblique_series
    net = load_segmentation_model(tiny_model_file)
    cfg = SegmentConfig(predict=PredictConfig(progress=False), mesh=None,
                        keep_probabilities=True)
    probe = spineseg.segment(folder, net, cfg)
    net.threshold = float(np.percentile(probe.probabilities.array, 80))
    result = spineseg.segment(folder, net, dataclasses.replace(cfg, keep_probabilities=False))
    out = tmp_path_factory.mktemp("out") / "case"
    result.save(out, mesh_format=None, preview=False, output_types=("dicom-seg", "seg-nrrd"))
    return folder, ct, out


def test_segment_dicom_seg_equals_the_nifti_on_the_source_grid(segmented_series):
    _, ct, out = segmented_series
    nifti = read_image(out / "spine.nii.gz")
    on_ct = resample_to(nifti, ct, interpolation="nearest")  # through physical space
    assert 0 < on_ct.array.sum() < on_ct.array.size  # a partial mask: misplacement would show
    np.testing.assert_array_equal(_read_seg_onto(out / "spine.seg.dcm", ct), on_ct.array)
    record = json.loads((out / "stats.json").read_text())
    assert {"spine.seg.dcm", "spine.seg.nrrd", "spine.nii.gz"} <= set(record["outputs"])


def test_seg_nrrd_has_slicer_fields_and_the_nifti_voxels_and_grid(segmented_series):
    import nrrd

    _, _, out = segmented_series
    data, header = nrrd.read(str(out / "spine.seg.nrrd"))
    nifti = read_image(out / "spine.nii.gz")
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space origin"], nifti.origin, atol=1e-6)
    np.testing.assert_allclose(np.asarray(header["space directions"]).T,
                               nifti.direction_matrix * np.asarray(nifti.spacing), atol=1e-6)
    np.testing.assert_array_equal(data.T, nifti.array)  # pynrrd: (x, y, z)
    assert header["Segment0_Name"] == header["Segment0_ID"] == "spine"
    assert header["Segment0_LabelValue"] == "1" and header["Segment0_Layer"] == "0"
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert header["Segmentation_ContainedRepresentationNames"].split("|")[0] == "Binary labelmap"
    assert header["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    assert [float(c) for c in header["Segment0_Color"].split()] == pytest.approx(
        [241 / 255, 214 / 255, 145 / 255], abs=1e-5)
    tags = dict(t.split(":", 1) for t in header["Segment0_Tags"].split("|") if t)
    parts = tags["TerminologyEntry"].split("~")
    assert len(parts) == 7
    assert parts[1] == "SCT^91723000^Anatomical Structure" and parts[2] == "SCT^421060004^Spine"
    zz, yy, xx = np.nonzero(nifti.array)
    extent = [int(v) for v in header["Segment0_Extent"].split()]
    assert extent == [xx.min(), xx.max(), yy.min(), yy.max(), zz.min(), zz.max()]
    # and another reader (ITK) sees the same grid and voxels
    again = read_image(out / "spine.seg.nrrd")
    assert again.same_grid(nifti, tol=1e-6)
    np.testing.assert_array_equal(again.array, nifti.array)


def test_an_empty_mask_is_a_dicom_seg_with_empty_frames(oblique_series, tmp_path):
    import highdicom as hd

    folder, ct = oblique_series
    path = write_dicom_seg(ct.with_array(np.zeros(ct.array.shape, np.uint8)), folder,
                           tmp_path / "e.seg.dcm")
    seg = hd.seg.segread(path)
    assert seg.NumberOfFrames == ct.array.shape[0] and not seg.pixel_array.any()


def test_seg_nrrd_of_an_empty_mask_says_so(tmp_path):
    import nrrd

    path = write_seg_nrrd(Volume(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 1.0)),
                          tmp_path / "e.seg.nrrd")
    assert nrrd.read_header(str(path))["Segment0_Extent"] == "0 -1 0 -1 0 -1"


def test_output_types_parse_and_refuse():
    assert parse_output_types([]) == ("nifti",)
    assert parse_output_types(["seg-nrrd,dicom-seg", "SEG-NRRD"]) == (
        "nifti", "dicom-seg", "seg-nrrd")
    with pytest.raises(InputError, match="unknown output type 'rtstruct'"):
        parse_output_types(["rtstruct"])


def test_dicom_seg_for_a_nifti_input_is_one_line_before_any_work(tiny_model_file, tmp_path,
                                                                   capfd):
    ct = write_image(ct_volume(), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(ct), "-o", str(out), "--model", str(tiny_model_file),
               "--output-type", "dicom-seg"])
    err = capfd.readouterr().err
    assert rc == 3
    assert err.count("\n") == 1 and "dicom-seg needs a DICOM series" in err
    assert not out.exists()
    rc = main(["segment", str(ct), "-o", str(out), "--output-type", "stl"])
    assert rc == 3 and "unknown output type 'stl'" in capfd.readouterr().err


def test_dicom_seg_for_a_cohort_with_a_nifti_case_is_refused_up_front(
        oblique_series, tiny_model_file, tmp_path, capfd):
    import shutil

    folder, _ = oblique_series
    cohort = tmp_path / "cohort"
    shutil.copytree(folder, cohort / "dicomcase")
    write_image(ct_volume(), cohort / "nifticase.nii.gz")
    out = tmp_path / "out"
    rc = main(["segment", str(cohort), "-o", str(out), "--model", str(tiny_model_file),
               "--output-type", "dicom-seg"])
    err = capfd.readouterr().err
    assert rc == 3 and "nifticase.nii.gz" in err and "dicom-seg needs" in err
    assert not out.exists() or not any(out.rglob("spine*"))


@pytest.mark.shared_data
def test_reference_mask_of_ts_chest_dicom_as_dicom_seg_reads_back_identical(shared_data,
                                                                            tmp_path):
    """The real, anonymised series (empty Study/Series/SOP UIDs in its datasets) and its
    reference mask, whose NIfTI grid flips the A-P axis: aligned through physical space, written,
    read back by position."""
    import pydicom

    folder = shared_data / "ts_chest_dicom"
    ct = read_image(folder)
    ref = read_image(shared_data / "ts_chest_dicom_ref" / "spine.nii.gz")
    aligned = resample_to(ref, ct, interpolation="nearest")
    assert aligned.array.sum() > 1000
    path = write_dicom_seg(aligned, folder, tmp_path / "ref.seg.dcm")
    np.testing.assert_array_equal(_read_seg_onto(path, ct), aligned.array > 0)
    seg = pydicom.dcmread(path)
    files = dicom_series_files(folder)
    referenced = [r.ReferencedSOPInstanceUID
                  for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert set(referenced) == {pydicom.dcmread(f, stop_before_pixels=True)
                               .file_meta.MediaStorageSOPInstanceUID for f in files}
    assert seg.FrameOfReferenceUID == pydicom.dcmread(files[0]).FrameOfReferenceUID


@pytest.mark.shared_data
@pytest.mark.slow
def test_segment_ts_chest_dicom_writes_a_dicom_seg_identical_to_the_nifti(shared_data,
                                                                           tmp_path, capfd):
    folder = shared_data / "ts_chest_dicom"
    out = tmp_path / "out"
    rc = main(["segment", str(folder), "-o", str(out), "--mesh", "none", "--no-preview",
               "--device", "cpu", "--output-type", "dicom-seg", "--output-type", "seg-nrrd"])
    assert rc == 0, capfd.readouterr().err
    ct = read_image(folder)
    nifti = resample_to(read_image(out / "spine.nii.gz"), ct, interpolation="nearest")
    assert nifti.array.sum() > 1000
    np.testing.assert_array_equal(_read_seg_onto(out / "spine.seg.dcm", ct), nifti.array)
    nrrd_mask = read_image(out / "spine.seg.nrrd")
    np.testing.assert_array_equal(resample_to(nrrd_mask, ct).array, nifti.array)
