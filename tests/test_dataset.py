"""SliceDataset on a tiny prepared dataset made from a crop of the real abdominal CT."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spineseg.data.dataset import SliceDataset
from spineseg.data.prepare import PrepareConfig, prepare_dataset
from spineseg.errors import DataError
from spineseg.io import Volume
from spineseg.io.read import read_image
from spineseg.io.write import write_image

FG_SLICES = (3, 9, 10)  # spine kept on these slices only, so most slices have none
N_SLICES = 20


def crop(v: Volume, z: slice) -> Volume:
    img = v.to_sitk()
    return Volume.from_sitk(img[:, :, z.start:z.stop])


@pytest.fixture(scope="module")
def dataset_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("pairs")
    ct = read_image(shared_data / "ts_abdomen_3mm/ct.nii.gz")
    spine = read_image(shared_data / "ts_abdomen_3mm/spine.nii.gz")
    z0 = int(np.flatnonzero(spine.array.any(axis=(1, 2)))[0]) + 5
    for name, z in (("abd1", z0), ("abd2", z0 + N_SLICES)):
        c, s = crop(ct, slice(z, z + N_SLICES)), crop(spine, slice(z, z + N_SLICES))
        keep = np.zeros_like(s.array)
        for k in FG_SLICES:
            keep[k] = s.array[k]
        assert all(keep[k].any() for k in FG_SLICES)
        write_image(c, src / "images" / f"{name}.nii.gz")
        write_image(s.with_array(keep), src / "labels" / f"{name}.nii.gz")
    out = tmp_path_factory.mktemp("ds") / "ds"
    prepare_dataset([src], out, PrepareConfig(val="abd2", test="0"))
    return out


def test_shapes_dtypes_and_padding(dataset_root: Path) -> None:
    ds = SliceDataset(dataset_root, "train", patch_size=(96, 80))
    assert len(ds) == N_SLICES and ds.cases == ["abd1"]
    s = ds[0]
    assert s["image"].shape == (1, 96, 80) and s["image"].dtype == torch.float32
    assert s["label"].shape == (1, 96, 80) and s["label"].dtype == torch.float32
    assert isinstance(s["case"], str) and isinstance(s["z"], int)
    assert set(s["label"].unique().tolist()) <= {0.0, 1.0}
    assert float(s["image"].min()) >= -1.0 and float(s["image"].max()) <= 1.0
    shape = np.load(dataset_root / "cases/abd1/image.npy", mmap_mode="r").shape
    big = SliceDataset(dataset_root, "train", patch_size=(shape[1] + 40, shape[2] + 40),
                       foreground_fraction=0.0)[1]
    # Padding: air (-1000 HU -> -1) around the slice, background in the label.
    assert float(big["image"][0, 0, 0]) == -1.0 and float(big["image"][0, -1, -1]) == -1.0
    whole = SliceDataset(dataset_root, "val", patch_size=None)[4]
    h, w = whole["image"].shape[-2:]
    assert h % 16 == 0 and w % 16 == 0 and h - shape[1] < 16 and w - shape[2] < 16
    assert whole["case"] == "abd2" and whole["z"] == 4


def test_foreground_fraction_honoured(dataset_root: Path) -> None:
    def fg_rate(fraction: float) -> float:
        ds = SliceDataset(dataset_root, "train", patch_size=(64, 64),
                          foreground_fraction=fraction)
        hits = []
        for epoch in range(10):
            ds.set_epoch(epoch)
            hits.extend(ds[i]["z"] in FG_SLICES for i in range(len(ds)))
        return float(np.mean(hits))

    base = len(FG_SLICES) / N_SLICES
    assert fg_rate(0.0) == pytest.approx(base)
    assert fg_rate(0.5) == pytest.approx(0.5 + 0.5 * base, abs=0.1)
    ds = SliceDataset(dataset_root, "train", patch_size=(64, 64), foreground_fraction=1.0)
    samples = [ds[i] for i in range(len(ds))]
    assert all(s["z"] in FG_SLICES for s in samples)
    # Centred near spine: the patch contains spine almost always.
    assert np.mean([bool(s["label"].any()) for s in samples]) > 0.9


def test_deterministic_per_index_and_workers(dataset_root: Path) -> None:
    a = SliceDataset(dataset_root, "train", patch_size=(64, 64), seed=7)
    b = SliceDataset(dataset_root, "train", patch_size=(64, 64), seed=7)
    c = SliceDataset(dataset_root, "train", patch_size=(64, 64), seed=8)
    for i in (0, 5, 13):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["z"] == b[i]["z"]
    assert any(not torch.equal(a[i]["image"], c[i]["image"]) for i in range(len(a)))
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    a.set_epoch(0)
    loader = DataLoader(a, batch_size=4, num_workers=1, shuffle=False)
    first = next(iter(loader))
    direct = torch.stack([a[i]["image"] for i in range(4)])
    assert torch.equal(first["image"], direct)


def test_memory_mapped_and_picklable(dataset_root: Path) -> None:
    ds = SliceDataset(dataset_root, "train", patch_size=(64, 64))
    ds[0]
    image, mask = ds.arrays("abd1")
    assert isinstance(image, np.memmap) and isinstance(mask, np.memmap)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays == {}  # workers re-open their own maps
    assert torch.equal(clone[3]["image"], ds[3]["image"])


def test_case_slices_and_filters(dataset_root: Path) -> None:
    ds = SliceDataset(dataset_root, "val", patch_size=None)
    whole = ds.case_slices("abd2")
    z, h, w = whole["shape"]
    assert whole["image"].shape[:2] == (z, 1) and whole["image"].shape[2] % 16 == 0
    mask = np.load(dataset_root / "cases/abd2/mask.npy")
    assert np.array_equal(whole["label"][:, 0, :h, :w].numpy(), mask.astype(np.float32))
    assert len(SliceDataset(dataset_root, "train", kinds=("phantom",))) == 0
    with pytest.raises(DataError):
        SliceDataset(dataset_root, "training")
    with pytest.raises(DataError):
        ds.case_slices("nope")


def test_with_augmentation_transform(dataset_root: Path) -> None:
    from spineseg.data.augment import AugmentConfig, train_transforms

    cfg = AugmentConfig(prob_affine=1, prob_correlated_noise=1, prob_osteoporosis=1)
    a = SliceDataset(dataset_root, "train", patch_size=(64, 64), transform=train_transforms(cfg))
    b = SliceDataset(dataset_root, "train", patch_size=(64, 64), transform=train_transforms(cfg))
    plain = SliceDataset(dataset_root, "train", patch_size=(64, 64))
    s = a[3]
    assert type(s["image"]) is torch.Tensor and type(s["label"]) is torch.Tensor
    assert s["image"].shape == (1, 64, 64) and s["image"].dtype == torch.float32
    assert torch.equal(s["image"], b[3]["image"])  # per-index reseeding of MONAI's RNGs
    assert not torch.equal(s["image"], plain[3]["image"])
    assert set(s["label"].unique().tolist()) <= {0.0, 1.0}
