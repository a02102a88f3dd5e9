"""Procedural spine phantom: determinism, anatomy, confounders, noise, speed, CLI output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from spineseg.cli.main import main
from spineseg.data.phantom import PhantomConfig, generate_phantom, write_phantom_case
from spineseg.data.shapes import LEVEL_NAMES, load_templates
from spineseg.data.simulate import soft_tissue_noise_sd
from spineseg.errors import InputError, OutputError
from spineseg.io import read_image, reorient

SMALL = PhantomConfig(shape=(112, 112, 48))


def test_templates_cover_every_level_with_plausible_sizes() -> None:
    tpl = load_templates()
    assert set(tpl) == set(LEVEL_NAMES)
    for name, items in tpl.items():
        for t in items:
            ml = t.mask.sum() * t.spacing_mm**3 / 1000
            assert 8 < ml < 80, (name, t.source, ml)
            if name.startswith("L"):
                assert 35 <= t.body_size[2] <= 55  # lumbar body width (mm)


def test_same_seed_identical_different_seed_differs() -> None:
    a, b, c = (generate_phantom(s, SMALL) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.ct.array, b.ct.array)
    np.testing.assert_array_equal(a.mask.array, b.mask.array)
    assert a.params == b.params
    assert not np.array_equal(a.ct.array, c.ct.array)
    assert a.ct.array.dtype == np.int16 and a.mask.array.dtype == np.uint8
    assert a.ct.same_grid(a.mask) and a.ct.orientation == "LPS"
    assert set(np.unique(a.mask.array)) <= {0, 1}
    json.dumps(a.params)  # JSON-able


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_truth_is_bone_and_spans_levels(seed: int) -> None:
    p = generate_phantom(seed, SMALL)
    ct, m = p.ct.array, p.mask.array.astype(bool)
    assert m.any() and len(p.params["levels"]) >= 2
    assert ct[m].mean() > 150
    assert all(lv in LEVEL_NAMES for lv in p.params["levels"])


def test_ribs_touch_but_are_not_truth() -> None:
    p = generate_phantom(11, PhantomConfig(shape=(112, 112, 48), center_level="T8"))
    ribs = p.structures["ribs"].array.astype(bool)
    m = p.mask.array.astype(bool)
    assert p.params["rib_voxels"] > 0 and ribs.sum() == p.params["rib_voxels"]
    assert not (ribs & m).any()
    # Bone touching bone: some rib voxel is a 6-neighbour of a vertebra voxel.
    from scipy import ndimage

    assert (ndimage.binary_dilation(m) & ribs).any()
    assert (p.ct.array[~m] > 400).sum() > 100  # dense bone outside the truth
    # Ribs are bony tubes (cortex and marrow), not soft tissue: bright on average.
    assert p.ct.array[ribs].mean() > 300


def test_pelvis_is_bone_like_and_outside_truth() -> None:
    # Lumbosacral field with the whole body in view: sacrum below L5, iliac wings beside it.
    p = generate_phantom(12, PhantomConfig(shape=(112, 112, 48), center_level="S1",
                                           crop_prob=0.0, trabecular_hu=(50.0, 60.0)))
    pelvis = p.structures["pelvis"].array.astype(bool)
    m = p.mask.array.astype(bool)
    ct = p.ct.array.astype(float)
    assert p.params["pelvis_voxels"] > 0 and not (pelvis & m).any()
    assert "L5" in p.params["levels"]
    # Bone-like even when the vertebral bodies are osteoporotic (trabecular 50-60 HU): a bright
    # cortex and marrow well above soft tissue.
    assert ct[pelvis].mean() > 250
    assert np.percentile(ct[pelvis], 90) > 600
    # The sacrum continues the column: pelvic bone lies just below the lowest truth voxel,
    # within the width of the L5 body around the column.
    zz, _, xx = np.nonzero(m)
    below = pelvis[max(zz.min() - 8, 0):zz.min()]
    near = below[:, :, max(int(xx.mean()) - 8, 0):int(xx.mean()) + 8]
    assert near.sum() > 50
    # Iliac wings: pelvic bone far lateral to the column (> 60 mm), on both sides.
    x = p.ct.origin[0] + np.arange(ct.shape[2]) * p.ct.spacing[0]
    cx = p.ct.origin[0] + xx.mean() * p.ct.spacing[0]
    lateral = pelvis.any(axis=(0, 1))
    assert lateral[x < cx - 60].any() and lateral[x > cx + 60].any()


def test_thorax_lungs_dark_ribs_and_scapulae() -> None:
    p = generate_phantom(11, PhantomConfig(shape=(112, 112, 48), center_level="T6",
                                           crop_prob=0.0, noise_sd=(15.0, 15.0)))
    ct = p.ct.array.astype(float)
    assert p.params["scapula_voxels"] > 0
    scap = p.structures["scapulae"].array.astype(bool)
    assert not (scap & p.mask.array.astype(bool)).any() and ct[scap].mean() > 200
    # Lungs: a large share of the body interior is air-filled lung, not grey soft tissue.
    lung = (ct > -950) & (ct < -700)
    assert lung.mean() > 0.08
    assert -900 < np.median(ct[lung]) < -750
    ribs = p.structures["ribs"].array.astype(bool)
    assert ct[ribs].mean() > 300


def test_body_has_air_fat_muscle() -> None:
    p = generate_phantom(3, PhantomConfig(shape=(112, 112, 48), crop_prob=0.0))
    ct = p.ct.array.astype(float)
    assert (ct < -900).mean() > 0.05  # air around the body
    fat_hu, muscle_hu = p.params["tissue_hu"]["fat"], p.params["tissue_hu"]["muscle"]
    assert -120 <= fat_hu <= -80 and 35 <= muscle_hu <= 60
    from scipy import ndimage

    smooth = ndimage.uniform_filter(ct, size=(1, 5, 5))  # average the noise away
    assert (np.abs(smooth - fat_hu) < 30).mean() > 0.02
    assert (np.abs(smooth - muscle_hu) < 30).mean() > 0.02


@pytest.mark.parametrize("sd", [15.0, 60.0, 140.0])
def test_noise_sd_tracks_request(sd: float) -> None:
    # A crop keeps the in-plane spacing at 0.6-1 mm, where a 5x5 window sees noise rather than
    # anatomy (full-body fields on a 112-voxel matrix have ~3.5 mm pixels and edges everywhere).
    cfg = PhantomConfig(shape=(112, 112, 24), noise_sd=(sd, sd), soft_kernel_prob=0.0,
                        crop_prob=1.0)
    p = generate_phantom(4, cfg)
    assert p.params["noise_sd"] == pytest.approx(sd)
    measured = soft_tissue_noise_sd(p.ct.array)
    assert 0.8 * sd < measured < 1.25 * sd + 3


def test_generation_speed_256() -> None:
    generate_phantom(0, PhantomConfig(shape=(64, 64, 16)))  # load templates once
    t = time.perf_counter()
    p = generate_phantom(1, PhantomConfig(shape=(256, 256, 100)))
    elapsed = time.perf_counter() - t
    assert p.ct.array.shape == (100, 256, 256)
    assert elapsed < 6.0, f"256x256x100 took {elapsed:.2f} s"  # 2 s budget, slack for CI


def test_reorientation_keeps_physical_space() -> None:
    base = generate_phantom(7, SMALL)
    cfg = PhantomConfig(shape=(112, 112, 48), reorient_prob=1.0, reorient_codes=("PIR",))
    p = generate_phantom(7, cfg)
    assert p.ct.orientation == "PIR" and p.params["orientation"] == "PIR"
    back = reorient(p.ct, "LPS")
    np.testing.assert_array_equal(back.array, base.ct.array)
    np.testing.assert_allclose(back.origin, base.ct.origin, atol=1e-4)


def test_config_validation() -> None:
    with pytest.raises(InputError):
        PhantomConfig(shape=(8, 64, 64))
    with pytest.raises(InputError):
        PhantomConfig(noise_sd=(50.0, 10.0))
    with pytest.raises(InputError):
        PhantomConfig(center_level="X9")


def test_write_case_and_cli(tmp_path: Path) -> None:
    p = generate_phantom(2, PhantomConfig(shape=(64, 64, 24)))
    paths = write_phantom_case(p, tmp_path, "case_a")
    img = read_image(paths["image"])
    assert img.same_grid(p.ct) and np.array_equal(img.array, p.ct.array)
    with pytest.raises(OutputError):
        write_phantom_case(p, tmp_path, "case_a")

    out = tmp_path / "cli"
    assert main(["phantom", "-o", str(out), "--cases", "2", "--seed", "3",
                 "--size", "64", "64", "24", "--dicom"]) == 0
    images = sorted((out / "images").glob("*.nii.gz"))
    assert len(images) == 2
    ct = read_image(images[0])
    mask = read_image(out / "labels" / images[0].name)
    assert ct.same_grid(mask) and ct.shape_xyz == (64, 64, 24)
    ref = generate_phantom(3, PhantomConfig(shape=(64, 64, 24)))
    np.testing.assert_array_equal(ct.array, ref.ct.array)
    dcm = read_image(out / "dicom" / images[0].name.replace(".nii.gz", ""))
    np.testing.assert_allclose(dcm.spacing, ct.spacing, atol=1e-3)
    params = json.loads((out / "params" / images[0].name.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
    assert params["seed"] == 3
    assert main(["phantom", "-o", str(out), "--cases", "1", "--seed", "3",
                 "--size", "64", "64", "24"]) == OutputError.exit_code


def test_spine_is_mostly_cancellous_like_real_ct():
    """Real spine masks are mostly trabecular bone (ts_abdomen: 84% of voxels below 300 HU,
    median 164). A phantom whose spine is mostly bright cortex teaches "bright rim = spine"."""
    from spineseg.data.phantom import PhantomConfig, generate_phantom

    fractions, medians = [], []
    for seed in range(3):
        p = generate_phantom(300 + seed, PhantomConfig(shape=(128, 128, 48)))
        v = p.ct.array[p.mask.array > 0]
        fractions.append(float((v < 300).mean()))
        medians.append(float(np.median(v)))
    assert np.mean(fractions) > 0.5, fractions
    assert np.mean(medians) < 350, medians


def test_excluded_template_subject_is_never_used():
    import numpy as np

    from spineseg.data.phantom.column import build_column
    from spineseg.errors import InputError

    for seed in range(6):
        column = build_column(np.random.default_rng(seed), 1.0, 0.0,
                              exclude_sources=("verse005",))
        assert all(v.template.source != "verse005" for v in column.vertebrae)
    with pytest.raises(InputError, match="leaves no shape"):
        build_column(np.random.default_rng(0), 1.0, 0.0,
                     exclude_sources=("gl003", "gl017", "sample001", "verse004", "verse005",
                                      "verse010"))
