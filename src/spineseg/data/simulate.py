"""CT image-quality simulation: correlated noise, osteoporotic bone, and the noise measure.

Used by the phantom generator, by augmentation and by robustness tests. Pure numpy/scipy (no
torch), so it runs in DataLoader workers and in the io-free parts of the package alike.

Why these models:
- CT noise is not white: the reconstruction kernel low-passes it, so neighbouring voxels are
  correlated. A sharp bone kernel gives fine grain (Gaussian sigma ~0.5-0.8 voxel), a soft
  tissue kernel coarse blotches (~1.5-2.5 voxel). Correlation acts in-plane (the kernel is a 2D
  filtered back-projection kernel); across slices it is weak for the slice spacings we see.
- A model trained on dense young bone learns "bright = spine" and drops the body of an
  osteoporotic vertebra; :func:`simulate_osteoporosis` makes such bodies from any labelled case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage

from spineseg.errors import InputError

#: In-plane Gaussian sigma (voxels) of the named reconstruction kernels.
KERNEL_SIGMA_VOX: dict[str, float] = {"sharp": 0.65, "soft": 2.0}

#: Smoothed HU above which a voxel inside the spine mask counts as cortical bone.
CORTICAL_HU = 400.0

Kernel = Literal["sharp", "soft"] | float


def _sigmas(ndim: int, corr_sigma_vox: float | Sequence[float]) -> tuple[float, ...]:
    if np.isscalar(corr_sigma_vox):
        sig = (float(corr_sigma_vox),) * ndim  # type: ignore[arg-type]
    else:
        sig = tuple(float(s) for s in corr_sigma_vox)  # type: ignore[union-attr]
    if len(sig) != ndim or any(not np.isfinite(s) or s < 0 for s in sig):
        raise InputError(f"correlation sigma {corr_sigma_vox!r} invalid for a {ndim}D array")
    return sig


def correlated_noise(
    shape: Sequence[int],
    sd: float,
    corr_sigma_vox: float | Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Zero-mean Gaussian noise with standard deviation exactly ``sd`` and Gaussian correlation.

    White noise is low-passed with :func:`scipy.ndimage.gaussian_filter` (``corr_sigma_vox`` per
    axis or one value for all) and then rescaled by its empirical SD, so the requested SD holds
    exactly whatever the filter removed. Works for any dimension (2D slices, 3D volumes).
    """
    if not np.isfinite(sd) or sd < 0:
        raise InputError(f"noise SD must be >= 0, got {sd}")
    shape = tuple(int(s) for s in shape)
    sig = _sigmas(len(shape), corr_sigma_vox)
    if sd == 0 or int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32)
    if any(s > 0 for s in sig):
        noise = ndimage.gaussian_filter(noise, sigma=sig, mode="wrap")
    noise -= noise.mean(dtype=np.float64)
    std = float(noise.std(dtype=np.float64))
    if std > 0:
        noise *= np.float32(sd / std)
    return noise.astype(np.float32, copy=False)


def kernel_sigma(kernel: Kernel) -> float:
    """In-plane correlation sigma (voxels) for a kernel name or an explicit sigma."""
    if isinstance(kernel, str):
        if kernel not in KERNEL_SIGMA_VOX:
            raise InputError(f"unknown kernel {kernel!r}; use one of {sorted(KERNEL_SIGMA_VOX)}")
        return KERNEL_SIGMA_VOX[kernel]
    value = float(kernel)
    if not np.isfinite(value) or value < 0:
        raise InputError(f"kernel sigma must be >= 0, got {kernel}")
    return value


def add_ct_noise(
    hu: np.ndarray,
    sd: float,
    rng: np.random.Generator,
    kernel: Kernel = "sharp",
    z_sigma_vox: float = 0.0,
) -> np.ndarray:
    """Return ``hu`` plus kernel-correlated noise of SD ``sd`` as a new float32 array.

    For 3D ``(z, y, x)`` arrays the kernel acts in-plane (last two axes); ``z_sigma_vox`` adds
    optional through-plane correlation (overlapping thin slices).
    """
    hu = np.asarray(hu)
    if hu.ndim not in (2, 3):
        raise InputError(f"expected a 2D or 3D array, got {hu.ndim} dimensions")
    s = kernel_sigma(kernel)
    sig: tuple[float, ...] = (s, s) if hu.ndim == 2 else (float(z_sigma_vox), s, s)
    return hu.astype(np.float32) + correlated_noise(hu.shape, sd, sig, rng)


def simulate_osteoporosis(
    hu: np.ndarray,
    spine_mask: np.ndarray,
    target_hu: float = 60.0,
    rng: np.random.Generator | None = None,
    cortical_hu: float = CORTICAL_HU,
) -> np.ndarray:
    """Darken the trabecular interior of the vertebrae so its median becomes ``target_hu``.

    Heuristic (no segmentation of body vs. posterior elements is needed):
    1. erode the spine mask by one voxel, so the boundary (partial volume with soft tissue) is
       never touched;
    2. smooth the image (Gaussian, sigma 1 voxel) so noise does not decide the class; interior
       voxels whose smoothed HU is below ``cortical_hu`` are trabecular bone, the rest (cortical
       shell, pedicles, laminae, dense endplates) stays exactly as it was;
    3. shift the trabecular voxels by ``target_hu - median`` — an additive shift keeps the local
       texture and the image noise. The shift is feathered by a blurred copy of the trabecular
       mask, so no artificial step appears against the cortex;
    4. with ``rng``, a smooth random field (SD 10 HU, ~3-voxel blobs) adds the patchy bone loss of
       real osteoporosis.
    A spine whose interior is already at or below the target is returned unchanged (as float32).
    """
    hu = np.asarray(hu)
    mask = np.asarray(spine_mask).astype(bool)
    if mask.shape != hu.shape:
        raise InputError(f"mask shape {mask.shape} does not match image shape {hu.shape}")
    out = hu.astype(np.float32, copy=True)
    interior = ndimage.binary_erosion(mask, iterations=1)
    if not interior.any():
        return out
    smooth = ndimage.gaussian_filter(out, sigma=1.0)
    trab = interior & (smooth < cortical_hu)
    if not trab.any():
        return out
    median = float(np.median(out[trab]))
    delta = float(target_hu) - median
    if delta >= 0:
        return out
    weight = ndimage.gaussian_filter(trab.astype(np.float32), sigma=0.7)
    weight = np.where(trab, np.maximum(weight, 0.5), 0.0).astype(np.float32)
    shift = delta * weight
    if rng is not None:
        shift = shift + np.where(trab, correlated_noise(hu.shape, 10.0, 3.0, rng), 0.0)
    out += shift.astype(np.float32)
    # The feathered rim shifted less than the core: re-centre so the median lands on the target.
    out[trab] += np.float32(float(target_hu) - float(np.median(out[trab])))
    return out


def soft_tissue_noise_sd(hu: np.ndarray, window: int = 5) -> float:
    """Median local SD (HU) over soft tissue: the image-noise measure quoted in anatomy.md.

    The local mean and SD are taken in a ``window``×``window`` in-plane neighbourhood (per slice
    for 3D ``(z, y, x)`` arrays, so slice thickness does not mix in). Voxels whose local mean lies
    in [-100, 150] HU are soft tissue; the median over them ignores the few windows that straddle
    an edge. Returns NaN if the image contains no soft tissue.
    """
    a = np.asarray(hu, dtype=np.float32)
    if a.ndim not in (2, 3):
        raise InputError(f"expected a 2D or 3D array, got {a.ndim} dimensions")
    size = (window, window) if a.ndim == 2 else (1, window, window)
    mean = ndimage.uniform_filter(a, size=size, mode="reflect")
    sq = ndimage.uniform_filter(a * a, size=size, mode="reflect")
    n = window * window
    var = np.maximum(sq - mean * mean, 0.0) * (n / (n - 1))
    soft = (mean >= -100.0) & (mean <= 150.0)
    if not soft.any():
        return float("nan")
    return float(np.median(np.sqrt(var[soft])))
