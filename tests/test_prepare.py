"""prepare_dataset on small crops of the real cases laid out as VerSe and TotalSegmentator trees.

The check that matters: a prepared mask, put back on the source grid through physical space,
matches the source binary spine (the reference mask), and excluded labels (sacrum, S1) stay out.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from spineseg.data.layouts import VERSE_SPINE
from spineseg.data.manifest import read_manifest, validate_manifest
from spineseg.data.prepare import PrepareConfig, SourceSpec, prepare_dataset, split_patients
from spineseg.errors import DataError, PartialFailure
from spineseg.io import Volume
from spineseg.io.geometry import resample_to
from spineseg.io.read import read_image
from spineseg.io.write import write_image

TS_NAMES = {26: "S1", 27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1", 32: "T12", 33: "T11"}


def crop(v: Volume, z: slice, y: slice = slice(None), x: slice = slice(None)) -> Volume:
    """Crop keeping the physical geometry (SimpleITK slicing updates the origin)."""
    img = v.to_sitk()
    zs, ys, xs = (s.indices(n) for s, n in zip((z, y, x), v.array.shape, strict=True))
    return Volume.from_sitk(img[xs[0]:xs[1], ys[0]:ys[1], zs[0]:zs[1]])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def back_to_source(dataset: Path, case: str, reference: Volume) -> np.ndarray:
    """The prepared mask, on the source image grid (via the meta.json geometry)."""
    d = dataset / "cases" / case
    meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    mask = np.load(d / "mask.npy")
    assert list(mask.shape) == meta["shape_zyx"]
    vol = Volume(mask, tuple(meta["spacing"]), tuple(meta["origin"]), tuple(meta["direction"]))
    return resample_to(vol, reference, interpolation="nearest").array


def build_verse(shared: Path, root: Path, subjects: dict[str, slice]) -> dict[str, tuple]:
    """VerSe BIDS tree of z-crops of verse012 with a fake sacrum (26) block; returns the source
    (image, binary spine) per case for comparison."""
    ct = read_image(shared / "verse012/ct.nii.gz")
    lab = read_image(shared / "verse012/vertebrae.nii.gz")
    truth = {}
    for sub, zs in subjects.items():
        c, m = crop(ct, zs), crop(lab, zs)
        arr = m.array.copy()
        arr[:4, 150:170, 5:30] = 26  # a sacrum-like block in the lowest slices: not spine
        m = m.with_array(arr)
        write_image(c, root / f"rawdata/{sub}/{sub}_ct.nii.gz")
        write_image(m, root / f"derivatives/{sub}/{sub}_seg-vert_msk.nii.gz")
        truth[sub] = (c, np.isin(arr, list(VERSE_SPINE)).astype(np.uint8))
    return truth


@pytest.fixture(scope="module")
def verse_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("verse")
    truth = build_verse(shared_data, root, {"sub-a": slice(110, 130), "sub-b": slice(130, 146),
                                            "sub-c": slice(146, 160), "sub-d": slice(90, 100)})
    return root, truth


@pytest.fixture(scope="module")
def ts_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ts")
    # Abdomen (RAS, 3 mm): the lowest slices with S1/L5 and a few above, as per-structure files.
    ct = read_image(shared_data / "ts_abdomen_3mm/ct.nii.gz")
    vert = read_image(shared_data / "ts_abdomen_3mm/vertebrae.nii.gz")
    spine = read_image(shared_data / "ts_abdomen_3mm/spine.nii.gz")
    zs = np.flatnonzero((vert.array == 26).any(axis=(1, 2)))
    z = slice(int(zs.min()), int(zs.min()) + 16)
    c, v, s = crop(ct, z), crop(vert, z), crop(spine, z)
    assert (v.array == 26).any() and (v.array == 27).any()
    write_image(c, root / "s01/ct.nii.gz")
    for label, name in TS_NAMES.items():
        if (v.array == label).any():
            write_image(v.with_array((v.array == label).astype(np.uint8)),
                        root / f"s01/segmentations/vertebrae_{name}.nii.gz")
    # Chest DICOM (LPS) written as NIfTI, crop around the spine; its multilabel reference keeps
    # its own (A-P flipped) grid, so alignment must go through physical space.
    dcm = read_image(shared_data / "ts_chest_dicom")
    ref_spine = read_image(shared_data / "ts_chest_dicom_ref/spine.nii.gz")
    on_ct = resample_to(ref_spine, dcm).array
    ys, xs = np.nonzero(on_ct.any(axis=0))
    chest = crop(dcm, slice(4, 14), slice(int(ys.min()) - 20, int(ys.max()) + 20),
                 slice(int(xs.min()) - 20, int(xs.max()) + 20))
    write_image(chest, root / "s02/ct.nii.gz")
    ref = read_image(shared_data / "ts_chest_dicom_ref/vertebrae.nii.gz")
    write_image(ref, root / "s02/vertebrae.nii.gz")
    truth = {"s01": (c, s.array), "s02": (chest, resample_to(ref_spine, chest).array)}
    return root, truth


def test_verse_prepared_masks_match_source(verse_tree: tuple[Path, dict], tmp_path: Path) -> None:
    src, truth = verse_tree
    out = tmp_path / "ds"
    result = prepare_dataset([src], out, PrepareConfig(val="1", test="1", seed=3))
    assert sorted(result.prepared) == sorted(truth) and not result.failed
    manifest = read_manifest(out)
    validate_manifest(manifest, out, verify_checksums=True)
    assert manifest.layout == "verse" and manifest.format == "spineseg-dataset/1"
    assert {len(v) for v in manifest.splits.values()} == {1, 2}  # 2 train, 1 val, 1 test
    for case, (image, binary) in truth.items():
        entry = manifest.cases[case]
        img = np.load(out / "cases" / case / "image.npy", mmap_mode="r")
        assert img.dtype == np.int16 and entry.shape == list(img.shape)
        assert entry.spacing[:2] == [1.0, 1.0]  # x was 3 mm in verse012
        back = back_to_source(out, case, image)
        assert dice(back, binary) > 0.97, case
        assert not back[:4, 150:170, 5:30].any()  # the fake sacrum is excluded
        assert entry.fg_slices == int(binary.any(axis=(1, 2)).sum())


def test_totalsegmentator_tree(ts_tree: tuple[Path, dict], tmp_path: Path) -> None:
    src, truth = ts_tree
    out = tmp_path / "ds"
    result = prepare_dataset([SourceSpec(src)], out, PrepareConfig(val="0", test="0"))
    assert sorted(result.prepared) == ["s01", "s02"]
    for case, (image, binary) in truth.items():
        back = back_to_source(out, case, image)
        assert dice(back, binary) > 0.97, (case, dice(back, binary))
        hu = np.load(out / "cases" / case / "image.npy")
        mask = np.load(out / "cases" / case / "mask.npy")
        # The mask lies on bone (a flipped/misaligned mask gives soft-tissue values, < 100 HU).
        assert hu[mask > 0].mean() > 180
    s1 = read_image(src / "s01/segmentations/vertebrae_S1.nii.gz").array > 0
    assert s1.any() and not back_to_source(out, "s01", truth["s01"][0])[s1].any()  # S1 excluded
    meta = json.loads((out / "cases/s01/meta.json").read_text(encoding="utf-8"))
    assert meta["direction"] == [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]  # RAS source -> LPS
    assert meta["source"]["direction"][0] == -1.0


def test_rerun_skips_and_changed_settings_refused(verse_tree: tuple[Path, dict],
                                                  tmp_path: Path) -> None:
    src, truth = verse_tree
    out = tmp_path / "ds"
    cfg = PrepareConfig(val="1", test="0")
    prepare_dataset([src], out, cfg)
    files = sorted((out / "cases").rglob("*.npy"))
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    again = prepare_dataset([src], out, cfg)
    assert again.prepared == [] and sorted(again.skipped) == sorted(truth)
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes
    # A damaged array is detected by its checksum and redone.
    victim = out / "cases" / "sub-a" / "mask.npy"
    victim.write_bytes(b"garbage")
    third = prepare_dataset([src], out, cfg)
    assert third.prepared == ["sub-a"]
    with pytest.raises(DataError, match="different settings"):
        prepare_dataset([src], out, PrepareConfig(val="1", test="0", seed=99))


def test_corrupt_case_reported_others_prepared(verse_tree: tuple[Path, dict],
                                               tmp_path: Path) -> None:
    src, truth = verse_tree
    broken = tmp_path / "src"
    shutil.copytree(src, broken)
    (broken / "rawdata/sub-zz").mkdir()
    (broken / "rawdata/sub-zz/sub-zz_ct.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (broken / "derivatives/sub-zz").mkdir()
    shutil.copy(broken / "derivatives/sub-a/sub-a_seg-vert_msk.nii.gz",
                broken / "derivatives/sub-zz/sub-zz_seg-vert_msk.nii.gz")
    # A mask whose header puts it a metre away from its image: no overlap -> GeometryError.
    far = read_image(broken / "derivatives/sub-a/sub-a_seg-vert_msk.nii.gz")
    far = Volume(far.array, far.spacing, (1000.0, 0.0, 0.0), far.direction)
    shutil.copytree(broken / "rawdata/sub-a", broken / "rawdata/sub-yy")
    (broken / "rawdata/sub-yy/sub-a_ct.nii.gz").rename(broken / "rawdata/sub-yy/sub-yy_ct.nii.gz")
    write_image(far, broken / "derivatives/sub-yy/sub-yy_seg-vert_msk.nii.gz")
    out = tmp_path / "ds"
    with pytest.raises(PartialFailure) as info:
        prepare_dataset([broken], out, PrepareConfig(val="0", test="0"))
    result = info.value.result  # type: ignore[attr-defined]
    assert sorted(result.failed) == ["sub-yy", "sub-zz"]
    assert sorted(result.prepared) == sorted(truth)
    assert "overlap" in result.failed["sub-yy"] and "GeometryError" in result.failed["sub-yy"]
    manifest = read_manifest(out)
    assert sorted(manifest.cases) == sorted(truth)


def test_noise_copies_only_in_train(verse_tree: tuple[Path, dict], tmp_path: Path) -> None:
    src, _ = verse_tree
    out = tmp_path / "ds"
    prepare_dataset([src], out, PrepareConfig(val="1", test="1", noise_copies=2, seed=1))
    manifest = read_manifest(out)
    copies = {k: v for k, v in manifest.cases.items() if v.derived_from}
    train = [k for k, v in manifest.cases.items() if v.split == "train" and not v.derived_from]
    assert sorted(copies) == sorted(f"{t}_aug{k}" for t in train for k in (1, 2))
    for cid, entry in copies.items():
        assert entry.split == "train" and entry.kind == "real"
        assert manifest.cases[entry.derived_from].split == "train"
        assert entry.augmentation
        src_img = np.load(out / "cases" / entry.derived_from / "image.npy")
        img = np.load(out / "cases" / cid / "image.npy")
        assert img.shape == src_img.shape and not np.array_equal(img, src_img)
        assert np.array_equal(np.load(out / "cases" / cid / "mask.npy"),
                              np.load(out / "cases" / entry.derived_from / "mask.npy"))


def test_split_patients_rules() -> None:
    kinds = {f"r{i}": "real" for i in range(4)} | {f"p{i}": "phantom" for i in range(20)}
    s = split_patients(kinds, "0.25", "0", seed=0)
    assert sum(v == "val" for k, v in s.items() if k.startswith("r")) == 1  # stratified by kind
    assert sum(v == "val" for k, v in s.items() if k.startswith("p")) == 5
    assert split_patients(kinds, "0.25", "0", seed=0) == s
    assert split_patients(kinds, "0.25", "0", seed=1) != s
    explicit = split_patients(kinds, "r1,p3", "r2", seed=0)
    assert explicit["r1"] == explicit["p3"] == "val" and explicit["r2"] == "test"
    with pytest.raises(DataError):
        split_patients({"a": "real"}, "1", "0", seed=0)  # nothing left to train on
    with pytest.raises(DataError):
        split_patients(kinds, "nobody", "0", seed=0)


def test_cli_prepare(verse_tree: tuple[Path, dict], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    from spineseg.cli.main import main

    src, truth = verse_tree
    out = tmp_path / "ds"
    assert main(["prepare", str(src), "-o", str(out), "--val", "1", "--no-progress"]) == 0
    assert f"{len(truth)} prepared" in capsys.readouterr().out
    assert main(["prepare", str(src), "-o", str(out), "--val", "1", "--no-progress"]) == 0
    assert f"0 prepared, {len(truth)} already done" in capsys.readouterr().out
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    (bad / "images/x.nii.gz").write_bytes(b"junk")
    (bad / "labels/x.nii.gz").write_bytes(b"junk")
    code = main(["prepare", str(bad), "-o", str(tmp_path / "ds2"), "--val", "0",
                 "--add", str(src), "--no-progress"])
    err = capsys.readouterr().err
    assert code == PartialFailure.exit_code and "failed: x:" in err
