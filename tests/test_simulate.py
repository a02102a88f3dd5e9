"""CT noise, osteoporosis simulation and the soft-tissue noise measure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spineseg.data.simulate import (
    CORTICAL_HU,
    add_ct_noise,
    correlated_noise,
    simulate_osteoporosis,
    soft_tissue_noise_sd,
)
from spineseg.errors import InputError


def _neighbour_corr(a: np.ndarray, axis: int) -> float:
    a0 = np.moveaxis(a, axis, 0)
    return float(np.corrcoef(a0[1:].ravel(), a0[:-1].ravel())[0, 1])


@pytest.mark.parametrize("shape", [(64, 64), (24, 48, 48)])
def test_correlated_noise_sd_and_correlation(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    soft = correlated_noise(shape, 30.0, 2.0, rng)
    assert soft.dtype == np.float32 and soft.shape == shape
    assert soft.std() == pytest.approx(30.0, rel=1e-3)
    assert _neighbour_corr(soft, -1) > 0.3
    white = correlated_noise(shape, 30.0, 0.0, rng)
    assert abs(_neighbour_corr(white, -1)) < 0.1
    sharp = correlated_noise(shape, 30.0, 0.6, rng)
    assert _neighbour_corr(white, -1) < _neighbour_corr(sharp, -1) < _neighbour_corr(soft, -1)


def test_correlated_noise_per_axis_sigma_and_determinism() -> None:
    a = correlated_noise((16, 40, 40), 10.0, (0.0, 2.0, 2.0), np.random.default_rng(3))
    b = correlated_noise((16, 40, 40), 10.0, (0.0, 2.0, 2.0), np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert _neighbour_corr(a, 2) > 0.3 and abs(_neighbour_corr(a, 0)) < 0.1
    with pytest.raises(InputError):
        correlated_noise((8, 8), -1.0, 1.0, np.random.default_rng(0))
    with pytest.raises(InputError):
        correlated_noise((8, 8), 1.0, (1.0, 1.0, 1.0), np.random.default_rng(0))


def test_add_ct_noise_kernels() -> None:
    hu = np.full((8, 64, 64), 40, dtype=np.int16)
    out = add_ct_noise(hu, 25.0, np.random.default_rng(1), kernel="soft")
    assert out.dtype == np.float32 and hu[0, 0, 0] == 40  # input untouched
    assert (out - 40).std() == pytest.approx(25.0, rel=1e-3)
    # In-plane correlation only by default: slices stay independent.
    assert _neighbour_corr(out, 2) > 0.3 and abs(_neighbour_corr(out, 0)) < 0.1
    with pytest.raises(InputError):
        add_ct_noise(hu, 10.0, np.random.default_rng(1), kernel="blurry")  # type: ignore[arg-type]


def test_soft_tissue_noise_sd_tracks_white_noise() -> None:
    rng = np.random.default_rng(2)
    img = np.full((6, 80, 80), 40.0, np.float32)
    img[:, :, :20] = -1000  # air is not soft tissue
    for sd in (10.0, 40.0):
        measured = soft_tissue_noise_sd(add_ct_noise(img, sd, rng, kernel=0.0))
        assert measured == pytest.approx(sd, rel=0.15)
    assert np.isnan(soft_tissue_noise_sd(np.full((20, 20), -1000.0)))


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)


@pytest.mark.shared_data
def test_soft_tissue_noise_sd_on_real_cases(shared_data: Path) -> None:
    abdomen = soft_tissue_noise_sd(_read(shared_data / "ts_abdomen_3mm" / "ct.nii.gz"))
    verse = soft_tissue_noise_sd(_read(shared_data / "verse012" / "ct.nii.gz"))
    assert 10 < abdomen < 60
    assert verse > 90
    assert verse > 2 * abdomen


@pytest.mark.shared_data
def test_osteoporosis_on_real_case(shared_data: Path) -> None:
    ct = _read(shared_data / "ts_abdomen_3mm" / "ct.nii.gz")
    spine = _read(shared_data / "ts_abdomen_3mm" / "spine.nii.gz") > 0
    from scipy import ndimage

    interior = ndimage.binary_erosion(spine)
    smooth = ndimage.gaussian_filter(ct, 1.0)
    trab = interior & (smooth < CORTICAL_HU)
    cortical = spine & (smooth >= CORTICAL_HU)
    before = float(np.median(ct[trab]))
    assert before > 100  # dense young bone to start with
    out = simulate_osteoporosis(ct, spine, target_hu=60.0, rng=np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == ct.shape
    assert abs(float(np.median(out[trab])) - 60.0) < 10
    np.testing.assert_array_equal(out[cortical], ct[cortical])
    assert (out[cortical] > CORTICAL_HU - 150).mean() > 0.9
    np.testing.assert_array_equal(out[~spine], ct[~spine])  # nothing outside the spine moves
    # Already below the target: unchanged.
    again = simulate_osteoporosis(out, spine, target_hu=200.0)
    np.testing.assert_array_equal(again, out)
    with pytest.raises(InputError):
        simulate_osteoporosis(ct, spine[:-1])
