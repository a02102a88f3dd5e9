"""Rebuild ``src/spineseg/data/shape_templates/vertebrae.npz`` from real VerSe label maps.

Usage: ``python tools/build_shape_templates.py [SHAPES_DIR] [-o OUT.npz]``
(default ``../shared/data/vertebra_shapes``).

Each labelled vertebra (VerSe ids 1-24, C1-L5) is cut out, *straightened* into its own upright
frame and resampled to isotropic 1 mm, so the phantom generator can place it along any curve:
- the local z axis is the column tangent at that vertebra, estimated from the centroids of its
  neighbours in the source scan (the source's own lordosis/kyphosis is removed);
- y is the patient's posterior direction made orthogonal to z, x = y × z (patient left), so an
  upright template is in canonical LPS;
- vertebrae touching the border of their source volume are incomplete and skipped.
Per template we also record the vertebral-body centre, its height/depth/width and the tips of the
transverse processes (where the ribs attach), all in millimetres in the template's crop.

Orientation check of ``verse005`` (its header was rewritten to identity by its source): after
reading it as LPS, L1 lies superior to L5 and every vertebra's centre of mass sits in the anterior
~37 % of its extent and the superior ~58 % (the body is anterior, the spinous process hangs down),
exactly as in the verified ``verse010`` and ``verse004``. So z and y are right; left-right cannot
be told, and does not matter for shapes (a mirrored vertebra is still a vertebra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

LEVEL_NAMES = [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [
    f"L{i}" for i in range(1, 6)
]
SPACING_MM = 1.0
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data" / "vertebra_shapes"
DEFAULT_OUT = REPO / "src" / "spineseg" / "data" / "shape_templates" / "vertebrae.npz"


def _frame(tangent: np.ndarray) -> np.ndarray:
    """Columns x, y, z of an LPS-like frame whose z is ``tangent`` (xyz physical)."""
    z = tangent / np.linalg.norm(tangent)
    y = np.array([0.0, 1.0, 0.0]) - z[1] * z
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=1)


def _run_through(line: np.ndarray, centre: int) -> int:
    """Length of the run of True in a 1D array that contains index ``centre``."""
    if not line[centre]:
        return 0
    lo = centre
    while lo > 0 and line[lo - 1]:
        lo -= 1
    hi = centre
    while hi < len(line) - 1 and line[hi + 1]:
        hi += 1
    return hi - lo + 1


def _measure(mask: np.ndarray, level: int) -> dict[str, np.ndarray]:
    """Body centre/size and transverse-process tips of an upright template (zyx mm)."""
    edt = ndimage.distance_transform_edt(mask)
    idx = np.argwhere(mask)
    if level == 1:  # C1 has no body: use the centre of the ring
        centre = (idx.min(0) + idx.max(0)) / 2.0
    else:
        core = edt >= 0.5 * edt.max()
        lab, n = ndimage.label(core)
        sizes = ndimage.sum(core, lab, range(1, n + 1))
        centre = np.array(ndimage.center_of_mass(core, lab, int(np.argmax(sizes)) + 1))
    cz, cy, cx = (int(np.rint(c)) for c in centre)
    column = mask[:, max(cy - 3, 0): cy + 4, max(cx - 3, 0): cx + 4].any(axis=(1, 2))
    height = _run_through(column, cz)
    depth = _run_through(mask[cz, :, cx], cy)
    width = _run_through(mask[cz, cy, :], cx)
    x = idx[:, 2]
    left = idx[x >= x.max() - 3].mean(0)
    right = idx[x <= x.min() + 3].mean(0)
    return {
        "body_center": centre * SPACING_MM,
        "body_size": np.array([height, depth, width], float) * SPACING_MM,
        "tp_left": left * SPACING_MM,
        "tp_right": right * SPACING_MM,
    }


def extract(path: Path) -> list[dict[str, object]]:
    """All complete vertebrae of one label map, straightened and resampled."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    labels = sitk.GetArrayFromImage(image).astype(np.int16)
    present = [int(v) for v in np.unique(labels) if 1 <= v <= 24]
    centroids = {}
    for lv in present:
        idx = np.argwhere(labels == lv)[:, ::-1].mean(0)  # x, y, z index
        centroids[lv] = np.array(image.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
    out = []
    subject = path.name.split("_")[0]
    for lv in present:
        sel = labels == lv
        idx = np.argwhere(sel)
        if (idx.min(0) == 0).any() or (idx.max(0) == np.array(labels.shape) - 1).any():
            print(f"  skip {subject} {LEVEL_NAMES[lv - 1]}: touches the volume border")
            continue
        above, below = centroids.get(lv - 1), centroids.get(lv + 1)  # lower id = superior
        a = above if above is not None else centroids[lv]
        b = below if below is not None else centroids[lv]
        if above is None and below is None:
            tangent = np.array([0.0, 0.0, 1.0])
        else:
            tangent = a - b
        rot = _frame(tangent)
        # Physical corners of the vertebra's voxels, expressed in the local frame.
        lo, hi = idx.min(0), idx.max(0)
        corners = np.array([[x, y, z] for z in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for x in (lo[2], hi[2])], float)
        phys = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist())
                         for c in corners])
        local = (phys - centroids[lv]) @ rot
        qmin = local.min(0) - 3.0
        size = np.ceil((local.max(0) + 3.0 - qmin) / SPACING_MM).astype(int) + 1
        origin = centroids[lv] + rot @ qmin
        binary = sitk.Cast(sitk.Equal(image, lv), sitk.sitkFloat32)
        res = sitk.Resample(binary, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear,
                            origin.tolist(), [SPACING_MM] * 3, rot.flatten().tolist(), 0.0)
        arr = ndimage.gaussian_filter(sitk.GetArrayFromImage(res), 0.6) >= 0.5
        lab, n = ndimage.label(arr)
        if n > 1:  # keep the largest piece: resampling can leave specks of the neighbour's edge
            sizes = ndimage.sum(arr, lab, range(1, n + 1))
            arr = lab == int(np.argmax(sizes)) + 1
        zz, yy, xx = np.nonzero(arr)
        arr = arr[zz.min(): zz.max() + 1, yy.min(): yy.max() + 1, xx.min(): xx.max() + 1]
        rec: dict[str, object] = {
            "level": lv, "name": LEVEL_NAMES[lv - 1], "source": subject, "mask": arr,
            "centroid": np.array(ndimage.center_of_mass(arr)) * SPACING_MM,
        }
        rec.update(_measure(arr, lv))
        out.append(rec)
        bs = rec["body_size"]
        print(f"  {subject} {rec['name']:>3}: {arr.shape} body h/d/w {bs} mm, "
              f"{arr.sum() / 1000:.1f} mL")
    return out


def build(src: Path, out: Path) -> None:
    records = []
    for path in sorted(src.glob("*_vert.nii.gz")):
        print(path.name)
        records.extend(extract(path))
    records.sort(key=lambda r: (r["level"], r["source"]))
    masks = [np.asarray(r["mask"]) for r in records]
    packed = [np.packbits(m.ravel()) for m in masks]
    offsets = np.cumsum([0] + [len(p) for p in packed])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        format=np.array("spineseg-vertebra-templates/1"),
        spacing_mm=np.array(SPACING_MM),
        level=np.array([r["level"] for r in records], np.int16),
        name=np.array([r["name"] for r in records]),
        source=np.array([r["source"] for r in records]),
        shape=np.array([m.shape for m in masks], np.int32),
        offset=offsets.astype(np.int64),
        bits=np.concatenate(packed),
        **{k: np.array([r[k] for r in records], np.float32)
           for k in ("centroid", "body_center", "body_size", "tp_left", "tp_right")},
    )
    print(f"wrote {len(records)} templates to {out} ({out.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", nargs="?", type=Path, default=DEFAULT_SRC)
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    build(args.src, args.out)


if __name__ == "__main__":
    main()
