"""Name vertebra instances C1–L5 (VerSe ids) from anatomical anchors visible in the CT.

Counting vertebrae is only meaningful from a landmark, and the spine mask holds none: it excludes
the ribs and the sacrum by definition. The anchors therefore come from the CT itself, as bone
(smoothed HU above ``bone_hu``) outside the mask, measured in millimetres on the CT's grid:

- **ribs**: bone in the costovertebral region beside each body, on both sides; the lowest
  rib-bearing vertebra that has a rib-free vertebra below it is T12, the highest one with a
  rib-free vertebra above it is T1;
- **pelvis**: the lowest vertebra flanked on both sides by much more bone than a rib gives
  (sacral alae and iliac bones) while the vertebra above is rib-free is L5.

Without an anchor the vertebrae stay unnamed (relative numbers from the top), because any name
would be a guess. Two anchors that disagree with 12 + 5 (six or four rib-free vertebrae between
the last rib and the pelvis, 11 or 13 rib-bearing ones) are reported as transitional anatomy.
Confidence falls with the number of vertebrae counted from the anchor, and a count that crosses
an irregular step between neighbouring bodies (two vertebrae merged into one instance, or one
split in two, by an imperfect mask) names what lies beyond it without confidence. The thresholds were set
on the labelled cases the project holds (docs/vertebrae.md) and are not validated beyond them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from spineseg.vertebrae.instances import Instances

#: VerSe level ids by name, in the order along the column from the skull down.
COLUMN = [*(f"C{i}" for i in range(1, 8)), *(f"T{i}" for i in range(1, 13)),
          *(f"L{i}" for i in range(1, 6))]
VERSE_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(COLUMN)}
VERSE_IDS.update({"L6": 25, "T13": 28})
VERSE_NAMES: dict[int, str] = {v: k for k, v in VERSE_IDS.items()}
#: Label values of unnamed vertebrae: UNNAMED_BASE + 1 for the highest in view, and so on down.
UNNAMED_BASE = 100


@dataclass(frozen=True)
class LevelConfig:
    bone_hu: float = 150.0
    smooth_mm: float = 1.0
    #: Costovertebral search zone beside each body: lateral distance from the body centre (mm)
    #: and how far behind / in front of it (mm).
    lateral_mm: tuple[float, float] = (18.0, 70.0)
    posterior_mm: float = 45.0
    anterior_mm: float = 5.0
    #: Bone outside the mask (mL per cm of body height, on the weaker side) that makes a
    #: vertebra rib-bearing, and that makes the lowest vertebra pelvis-flanked.
    rib_ml_per_cm: float = 0.35
    pelvis_ml_per_cm: float = 1.2
    #: Names at or above this confidence count as confident.
    confident: float = 0.7
    #: Distances between neighbouring body centres outside this band around their median (on
    #: the reference masks they stay within 0.82–1.15) mark a merge or a split; a name counted
    #: across one gets at most ``irregular_confidence``.
    pitch_band: tuple[float, float] = (0.75, 1.3)
    irregular_confidence: float = 0.5


@dataclass
class VertebraLevel:
    """The name of one instance: ``label`` is its VerSe id, or above :data:`UNNAMED_BASE`."""

    instance: int
    label: int
    name: str
    confidence: float
    rib_bearing: bool
    #: Bone beside the body outside the mask, mL per cm of height, (right, left).
    lateral_bone_ml_per_cm: tuple[float, float]

    @property
    def named(self) -> bool:
        return self.label < UNNAMED_BASE


@dataclass
class LevelReport:
    levels: list[VertebraLevel]
    anchors: list[dict[str, Any]] = field(default_factory=list)
    transitional: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def named(self) -> bool:
        return any(v.named for v in self.levels)


def _lateral_bone(ct: np.ndarray, mask: np.ndarray, inst: Instances,
                  spacing_zyx: np.ndarray, cfg: LevelConfig) -> np.ndarray:
    """Per instance, (right, left) rib-like bone beside its body, mL per cm of body height.

    Counted is bone outside the mask (and more than 2 mm from it) in the costovertebral zone
    that belongs to a piece leaving the zone laterally (beyond ``lateral_mm[1]``) or leaving the
    field of view (a rib of a short scan runs out of it before it runs out sideways): a rib does, while a transverse process or body edge the mask missed is an
    island within reach of the vertebra.
    """
    out = np.zeros((inst.count, 2))
    lo_mm, hi_mm = cfg.lateral_mm
    sz, sy, sx = spacing_zyx
    reach = hi_mm + 15.0
    margin = np.ceil(np.array([cfg.posterior_mm + 10, reach]) / spacing_zyx[1:]).astype(int)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    for k, o in enumerate(ndimage.find_objects(inst.bodies), start=1):
        if o is None:
            continue
        _, cy, cx = inst.body_centroids[k - 1]
        z0 = max(0, o[0].start - round(3.0 / sz))
        # Ribs descend as they run out: follow them 25 mm above and below the body.
        zb0, zb1 = max(0, z0 - round(25.0 / sz)), min(ct.shape[0], o[0].stop + round(25.0 / sz))
        x0, x1 = max(0, int(cx) - margin[1]), min(ct.shape[2], int(cx) + margin[1] + 1)
        box = (slice(zb0, zb1),
               slice(max(0, int(cy) - margin[0]), int(cy) + margin[0] + 1), slice(x0, x1))
        hu = ndimage.gaussian_filter(np.asarray(ct[box], dtype=np.float32),
                                     sigma=cfg.smooth_mm / spacing_zyx)
        near_mask = ndimage.distance_transform_edt(~mask[box], sampling=spacing_zyx) <= 2.0
        bone = (hu > cfg.bone_hu) & ~near_mask
        yy = (np.arange(box[1].start, box[1].start + bone.shape[1]) - cy) * sy
        xx = (np.arange(x0, x1) - cx) * sx
        pieces, _ = ndimage.label(bone, structure=np.ones((3, 3, 3), dtype=bool))
        outer = np.abs(xx) >= hi_mm
        if x0 == 0:
            outer[0] = True
        if x1 == ct.shape[2]:
            outer[-1] = True
        leaving = [np.unique(pieces[:, :, outer])]
        if zb0 == 0:  # a piece cut by the scan's first or last slice may leave there
            leaving.append(np.unique(pieces[0]))
        if zb1 == ct.shape[0]:
            leaving.append(np.unique(pieces[-1]))
        leaving = np.concatenate(leaving)
        ribs = np.isin(pieces, leaving[leaving > 0])
        ribs = ribs[z0 - zb0: o[0].stop - zb0]
        in_y = (yy >= -cfg.anterior_mm) & (yy <= cfg.posterior_mm)
        height_cm = ribs.shape[0] * sz / 10.0
        for side, sel in enumerate(((xx <= -lo_mm) & (xx >= -hi_mm),
                                    (xx >= lo_mm) & (xx <= hi_mm))):
            zone = in_y[:, None] & sel[None, :]
            out[k - 1, side] = (ribs & zone[None]).sum() * voxel_ml / height_cm
    return out


def _at_edge(inst: Instances, depth_z: int) -> np.ndarray:
    """Per instance: its body touches the first or last slice (cut by the field of view)."""
    edge = np.zeros(inst.count, dtype=bool)
    for k, o in enumerate(ndimage.find_objects(inst.bodies), start=1):
        if o is not None:
            edge[k - 1] = o[0].start == 0 or o[0].stop >= depth_z
    return edge


def irregular_steps(inst: Instances, spacing_zyx: np.ndarray,
                    band: tuple[float, float]) -> np.ndarray:
    """Per step between instances i and i + 1: its centre distance (mm) lies outside ``band``
    times the median step. Needs three steps for a median; with fewer, none is irregular."""
    centres = np.asarray(inst.body_centroids, dtype=float).reshape(-1, 3) * spacing_zyx
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    if steps.size < 3:
        return np.zeros(steps.size, dtype=bool)
    ratio = steps / np.median(steps)
    return (ratio < band[0]) | (ratio > band[1])


def _name_from(position: int, extra_below: bool) -> str | None:
    """Column name at ``position`` in :data:`COLUMN` (one past L5 is L6 where allowed)."""
    if 0 <= position < len(COLUMN):
        return COLUMN[position]
    if position == len(COLUMN) and extra_below:
        return "L6"
    return None


def name_levels(ct: np.ndarray, mask: np.ndarray, inst: Instances,
                spacing_xyz: tuple[float, float, float],
                config: LevelConfig | None = None) -> LevelReport:
    """Name each instance on a canonical grid (``ct``, ``mask`` and instances share it)."""
    cfg = config or LevelConfig()
    n = inst.count
    if n == 0:
        return LevelReport([], note="no vertebrae found")
    spacing_zyx = np.asarray(spacing_xyz, dtype=float)[::-1]
    lateral = _lateral_bone(ct, np.asarray(mask) > 0, inst, spacing_zyx, cfg)
    weak = lateral.min(axis=1)
    edge = _at_edge(inst, mask.shape[0])
    ribs = weak >= cfg.rib_ml_per_cm
    anchors: list[dict[str, Any]] = []
    # Index i = instance i + 1, from the lowest up.
    pelvis = n >= 1 and weak[0] >= cfg.pelvis_ml_per_cm and (n == 1 or not ribs[1])
    if pelvis:
        ribs[0] = False  # the bone beside it is pelvis, not rib
        anchors.append({"kind": "pelvis", "instance": 1, "name": "L5",
                        "detail": f"bone beside the lowest vertebra {weak[0]:.1f} mL/cm"})
    last_rib = next((i for i in range(1, n) if ribs[i] and not ribs[i - 1] and not edge[i - 1]),
                    None)
    if last_rib is not None:
        anchors.append({"kind": "last rib", "instance": last_rib + 1, "name": "T12",
                        "detail": "lowest rib-bearing vertebra above a rib-free one"})
    # T1 has T2's ribs below it; without them, a lowest vertebra with bone beside it is as
    # likely L5 between the iliac crests (a lumbar crop just short of the pelvis rule).
    first_rib = next((i for i in range(n - 2, 0, -1) if ribs[i] and ribs[i - 1]
                      and not ribs[i + 1] and not edge[i + 1]), None)
    if first_rib is not None and (last_rib is None or first_rib > last_rib):
        anchors.append({"kind": "first rib", "instance": first_rib + 1, "name": "T1",
                        "detail": "highest rib-bearing vertebra below a rib-free one"})
    else:
        first_rib = None

    transitional: list[str] = []
    # (instance index, column position) of the anchor the names count from; L5 is position 23.
    base: tuple[int, int] | None = None
    agree = False
    extra_below = False
    first_only = False
    if last_rib is not None:
        base = (last_rib, COLUMN.index("T12"))
        if pelvis:
            lumbar = last_rib  # rib-free vertebrae between the last rib and the pelvis, L5 incl.
            agree = lumbar == 5
            if lumbar == 6:
                extra_below = True
                transitional.append("six rib-free vertebrae above the pelvis: L6, or T12 "
                                    "without ribs (11 rib pairs)")
            elif lumbar != 5:
                transitional.append(f"{lumbar} rib-free vertebrae above the pelvis (5 expected):"
                                    " a sacralised L5, or a 13th rib pair (T13)")
        if first_rib is not None:
            pairs = first_rib - last_rib + 1
            if pairs != 12:
                transitional.append(f"{pairs} rib-bearing vertebrae (12 expected)")
    elif pelvis:
        base = (0, COLUMN.index("L5"))
    elif first_rib is not None:
        base = (first_rib, COLUMN.index("T1"))
        first_only = True

    levels: list[VertebraLevel] = []
    lat = [(round(float(a), 2), round(float(b), 2)) for a, b in lateral]
    if base is None:
        for i in range(n):
            levels.append(VertebraLevel(i + 1, UNNAMED_BASE + n - i, f"V{n - i}", 0.0,
                                        bool(ribs[i]), lat[i]))
        note = ("no anchor in view (no sacrum or pelvis, no transition between rib-bearing and "
                "rib-free vertebrae): vertebrae are numbered V1, V2, … from the top, not named")
        return LevelReport(levels, anchors, transitional, note)
    k0, p0 = base
    irregular = irregular_steps(inst, spacing_zyx, cfg.pitch_band)
    # Steps whose count two agreeing anchors confirm (pelvis up to the last rib) need no check.
    checked = irregular.copy()
    if agree and last_rib is not None:
        checked[:last_rib] = False
    start = 0.95 if agree else 0.85
    if transitional:
        start = 0.6  # two anchors, anatomy other than 12 + 5: either count could be the right one
    elif first_only:
        start = 0.65  # the cervicothoracic transition alone: not yet checked on labelled scans
    for i in range(n):
        name = _name_from(p0 + (k0 - i), extra_below)
        conf = max(0.0, start - 0.03 * abs(k0 - i))
        if checked[min(i, k0):max(i, k0)].any():
            conf = min(conf, cfg.irregular_confidence)
        if name is None:
            levels.append(VertebraLevel(i + 1, UNNAMED_BASE + n - i, f"V{n - i}", 0.0,
                                        bool(ribs[i]), lat[i]))
        else:
            levels.append(VertebraLevel(i + 1, VERSE_IDS[name], name, round(conf, 2),
                                        bool(ribs[i]), lat[i]))
    used = ", ".join(a["kind"] for a in anchors)
    return LevelReport(levels, anchors, transitional, f"named from: {used}")
