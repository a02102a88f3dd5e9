"""Axial-slice training samples from a prepared dataset.

Arrays are memory-mapped lazily (in each DataLoader worker, on first use), so neither the main
process nor the workers ever hold the data set in RAM. Every random choice comes from a generator
seeded by ``(seed, epoch, index)``: the same index gives the same sample in any worker, after a
resume, and with any number of workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spineseg.data.manifest import SPLITS, case_dir, read_manifest
from spineseg.data.preprocess import Preprocessing
from spineseg.errors import DataError

PAD_HU = -1000.0  # air: what lies outside any scan
PAD_MULTIPLE = 16  # 2**depth of a 4-level U-Net


class SliceDataset(Dataset[dict[str, Any]]):
    """2D slices (optionally patches) of one split, as dicts ``image, label, case, z``.

    ``image`` has ``preprocessing.channels`` channels: the slice, plus its through-plane context
    for a 2.5-D model; ``label`` is the slice's own mask.

    ``foreground_fraction``: with this probability a sample is drawn from a random spine-bearing
    slice of the same case and its patch centred near a random spine pixel. Most axial slices of a
    CT show no spine or a small speck of it; without this the network mostly learns "background".
    ``patch_size=None`` gives whole slices padded to a multiple of 16 (validation, inference-like).
    """

    def __init__(self, root: str | Path, split: str, *,
                 patch_size: tuple[int, int] | None = (256, 256),
                 preprocessing: Preprocessing | None = None,
                 foreground_fraction: float = 0.5,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 seed: int = 0, kinds: Sequence[str] | None = None) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise DataError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.root = Path(root)
        self.split = split
        self.manifest = read_manifest(self.root)
        self.preprocessing = preprocessing or self.manifest.preprocessing_obj
        self.patch_size = tuple(patch_size) if patch_size is not None else None
        self.foreground_fraction = float(foreground_fraction)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.cases = self.manifest.case_ids(split, tuple(kinds) if kinds else None)
        self._fg: dict[str, np.ndarray] = {}
        index: list[tuple[int, int]] = []
        for ci, cid in enumerate(self.cases):
            entry = self.manifest.cases[cid]
            meta = self._meta(cid)
            self._fg[cid] = np.asarray(meta.get("foreground_slices", []), dtype=np.int64)
            index.extend((ci, z) for z in range(entry.slices))
        self._index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        # Slice spacing (mm) per case, for the through-plane context of 2.5-D models.
        self._spacing_z = {c: float(self.manifest.cases[c].spacing[2]) for c in self.cases}
        self._air = float(self.preprocessing.normalize(np.array([PAD_HU]))[0])
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._index)

    def case_balanced_weights(self, patient_weights: dict[str, float] | None = None
                              ) -> torch.Tensor:
        """Per-index sampling weights that make every case equally likely (sum 1 per case), or
        ``patient_weights[p]`` times as likely for the cases of patient ``p``.

        Raises :class:`DataError` for a weighted patient with no case in this split: a typo
        would otherwise leave the run unweighted without a word.
        """
        counts = np.bincount(self._index[:, 0], minlength=len(self.cases)).astype(np.float64)
        scale = np.ones(len(self.cases))
        if patient_weights:
            patients = [self.manifest.cases[c].patient for c in self.cases]
            missing = sorted(set(patient_weights) - set(patients))
            if missing:
                raise DataError(f"{self.root}: no {self.split} case of patient(s) "
                                f"{', '.join(missing)} to weight")
            scale = np.array([float(patient_weights.get(p, 1.0)) for p in patients])
        return torch.from_numpy((scale / counts)[self._index[:, 0]])

    def set_epoch(self, epoch: int) -> None:
        """New random crops/augmentations per epoch, still reproducible (call before iterating)."""
        self.epoch = int(epoch)

    def _meta(self, case: str) -> dict[str, Any]:
        try:
            return json.loads((case_dir(self.root, case) / "meta.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.root}: case {case} has no readable meta.json ({exc})") from exc

    def arrays(self, case: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped ``(image int16 HU, mask uint8)``, opened once per process."""
        if case not in self._arrays:
            d = case_dir(self.root, case)
            try:
                self._arrays[case] = (np.load(d / "image.npy", mmap_mode="r"),
                                      np.load(d / "mask.npy", mmap_mode="r"))
            except (OSError, ValueError) as exc:
                raise DataError(f"{d}: cannot open the case arrays ({exc})") from exc
        return self._arrays[case]

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are not sent to workers; each worker re-opens them on first use.
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        ci, z = (int(v) for v in self._index[index])
        case = self.cases[ci]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, mask = self.arrays(case)
        fg = self._fg[case]
        centre: tuple[int, int] | None = None
        if self.patch_size is not None and len(fg) and rng.random() < self.foreground_fraction:
            z = int(fg[rng.integers(len(fg))])
            ys, xs = np.nonzero(mask[z])
            if len(ys):
                k = int(rng.integers(len(ys)))
                jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in self.patch_size]
                centre = (int(ys[k]) + jitter[0], int(xs[k]) + jitter[1])
        img = self.preprocessing.network_input(image, [z], self._spacing_z[case])[0]
        lab = np.asarray(mask[z], dtype=np.float32)[None]
        if self.patch_size is None:
            img, lab = _pad_to_multiple(img, lab, PAD_MULTIPLE, self._air)
        else:
            img, lab = _crop(img, lab, self.patch_size, centre, rng, self._air)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(img)),
            "label": torch.from_numpy(np.ascontiguousarray(lab)),
            "case": case,
            "z": z,
        }
        if self.transform is not None:
            seeder = getattr(self.transform, "set_random_state", None)
            if seeder is not None:  # MONAI's own RNGs, reseeded per sample for reproducibility
                seeder(seed=int(rng.integers(2**31 - 1)))
            sample = self.transform(sample)
            for key in ("image", "label"):
                # MONAI returns MetaTensors; plain tensors keep collation and pinning cheap.
                value = sample[key]
                value = value.as_tensor() if hasattr(value, "as_tensor") else value
                sample[key] = torch.as_tensor(value, dtype=torch.float32).contiguous()
        return sample

    def case_slices(self, case: str) -> dict[str, Any]:
        """A whole case for evaluation: ``image`` ``(Z, C, H', W')``, ``label`` ``(Z, 1, H', W')``
        float32, padded to a multiple of 16 at the bottom/right, ``shape`` the unpadded
        ``(Z, H, W)`` to crop back."""
        if case not in self.manifest.cases:
            raise DataError(f"unknown case {case!r}")
        image, mask = self.arrays(case)
        img = self.preprocessing.network_input(image, slice(None), self._spacing_z[case])
        lab = np.asarray(mask, dtype=np.float32)[:, None]
        img, lab = _pad_to_multiple(img, lab, PAD_MULTIPLE, self._air)
        return {"image": torch.from_numpy(img), "label": torch.from_numpy(lab),
                "shape": tuple(int(s) for s in image.shape), "case": case}


def _pad_to_multiple(img: np.ndarray, lab: np.ndarray, m: int,
                     air: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[-2:]
    pad = [(0, 0)] * (img.ndim - 2) + [(0, -h % m), (0, -w % m)]
    return (np.pad(img, pad, constant_values=air), np.pad(lab, pad, constant_values=0))


def _crop(img: np.ndarray, lab: np.ndarray, size: tuple[int, ...],
          centre: tuple[int, int] | None, rng: np.random.Generator, air: float,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Pad ``(C, H, W)`` arrays (air / background) to at least ``size`` and cut a patch, around
    ``centre`` if given."""
    ph, pw = size
    h, w = img.shape[-2:]
    pad_y, pad_x = max(0, ph - h), max(0, pw - w)
    pad = ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
    img = np.pad(img, pad, constant_values=air)
    lab = np.pad(lab, pad, constant_values=0)
    h, w = img.shape[-2:]
    if centre is None:
        y0, x0 = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
    else:
        y0 = int(np.clip(centre[0] + pad[1][0] - ph // 2, 0, h - ph))
        x0 = int(np.clip(centre[1] + pad[2][0] - pw // 2, 0, w - pw))
    return img[:, y0:y0 + ph, x0:x0 + pw], lab[:, y0:y0 + ph, x0:x0 + pw]
