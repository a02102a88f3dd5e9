"""``label_vertebrae``: one call from a CT and its spine mask to named, measured vertebrae.

Everything runs on the CT's grid reoriented to canonical LPS, the grid the anchors are found on
(the ribs and the sacrum are in the CT, not in the mask). The mask (and probabilities) are
resampled onto it through physical space, so a mask stored in another voxel order or grid still
lines up. The label map is returned on the CT's own input grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spineseg.errors import GeometryError, InputError
from spineseg.io import CANONICAL, Volume, reorient, resample_to
from spineseg.reconstruction.mesh import voxel_to_physical
from spineseg.vertebrae.instances import InstanceConfig, Instances, split_vertebrae
from spineseg.vertebrae.levels import (
    UNNAMED_BASE,
    LevelConfig,
    LevelReport,
    VertebraLevel,
    name_levels,
)
from spineseg.vertebrae.measures import MeasureConfig, VertebraMeasures, measure_vertebrae

RESEARCH_NOTE = ("height ratios and the height flag (ratio below 0.8, after Genant) are for "
                 "research and screening only, not a fracture diagnosis")


@dataclass(frozen=True)
class VertebraeConfig:
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    levels: LevelConfig = field(default_factory=LevelConfig)
    measures: MeasureConfig = field(default_factory=MeasureConfig)


@dataclass
class Vertebra:
    """One vertebra: its label value, name, confidence and measurements."""

    level: VertebraLevel
    measures: VertebraMeasures
    centroid_lps_mm: tuple[float, float, float]

    @property
    def label(self) -> int:
        return self.level.label

    @property
    def name(self) -> str:
        return self.level.name

    def row(self, confident: float) -> dict[str, Any]:
        """Flat TotalSegmentator-style record (``vertebrae_<name>``, volume, intensity …)."""
        m = self.measures

        def r(v: float | None, nd: int = 2) -> float | None:
            return None if v is None else round(float(v), nd)

        return {
            "structure": f"vertebrae_{self.name}", "label": self.label, "name": self.name,
            "confidence": self.level.confidence,
            "confident": self.level.named and self.level.confidence >= confident,
            "rib_bearing": self.level.rib_bearing, "partial": m.partial,
            "volume_ml": r(m.volume_ml), "volume": r(m.volume_ml * 1000.0, 1),
            "centroid_lps_mm": [round(float(v), 2) for v in self.centroid_lps_mm],
            "intensity": r(m.hu_mean, 1), "hu_mean": r(m.hu_mean, 1),
            "hu_median": r(m.hu_median, 1), "trabecular_ml": r(m.trabecular_ml),
            "height_anterior_mm": r(m.height_anterior_mm),
            "height_middle_mm": r(m.height_middle_mm),
            "height_posterior_mm": r(m.height_posterior_mm),
            "ratio_anterior_posterior": r(m.ratio_anterior_posterior, 3),
            "ratio_middle_posterior": r(m.ratio_middle_posterior, 3),
            "ratio_posterior_neighbours": r(m.ratio_posterior_neighbours, 3),
            "height_flag": m.height_flag,
        }


@dataclass
class VertebraeResult:
    """Named vertebrae of one scan. ``labels`` (uint16) shares the CT's input grid."""

    labels: Volume
    vertebrae: list[Vertebra]
    report: LevelReport
    canonical_ct: Volume
    canonical_labels: Volume
    config: VertebraeConfig

    @property
    def named(self) -> bool:
        return self.report.named

    def by_name(self) -> dict[str, Vertebra]:
        return {v.name: v for v in self.vertebrae}

    def rows(self) -> list[dict[str, Any]]:
        """One record per vertebra from the top down (as a report lists them)."""
        return [v.row(self.config.levels.confident) for v in reversed(self.vertebrae)]

    def summary(self) -> dict[str, Any]:
        """The scan-level part of the label table: naming state, anchors, anomalies."""
        return {"named": self.named, "anchors": self.report.anchors,
                "transitional": self.report.transitional, "note": self.report.note,
                "unnamed_labels": f"values above {UNNAMED_BASE} are unnamed vertebrae, "
                                  f"{UNNAMED_BASE + 1} the highest in view",
                "confident_at": self.config.levels.confident, "research_use": RESEARCH_NOTE}

    def __repr__(self) -> str:
        names = ", ".join(v.name for v in reversed(self.vertebrae))
        return f"VertebraeResult({len(self.vertebrae)} vertebrae: {names})"


def _on_grid(vol: Volume, reference: Volume, interpolation: str, what: str) -> np.ndarray:
    if vol.same_grid(reference):
        return np.asarray(vol.array)
    canon = reorient(vol, CANONICAL)
    if canon.same_grid(reference):
        return np.asarray(canon.array)
    if what == "mask":
        vol = vol.with_array((np.asarray(vol.array) > 0).astype(np.uint8))
    return np.asarray(resample_to(vol, reference, interpolation=interpolation).array)


def label_vertebrae(ct: Volume, mask: Volume, probabilities: Volume | None = None,
                    config: VertebraeConfig | None = None, *,
                    output_grid: Volume | None = None) -> VertebraeResult:
    """Split ``mask`` into vertebrae, name them from anchors in ``ct`` and measure them.

    ``mask`` is a binary spine mask (any non-zero voxel is spine) on any grid overlapping the
    CT; ``probabilities`` (the network's, optional) restrict body cores to confident voxels.
    The label map comes back on ``output_grid`` (default: the CT's own grid).
    Raises :class:`InputError` for an empty mask, :class:`GeometryError` when it misses the CT.
    """
    cfg = config or VertebraeConfig()
    if not np.asarray(mask.array).any():
        raise InputError(f"{mask.meta.get('source', 'mask')}: the spine mask is empty; "
                         "there are no vertebrae to label")
    canon = reorient(ct, CANONICAL)
    m = _on_grid(mask, canon, "nearest", "mask") > 0
    if not m.any():
        raise GeometryError(f"{mask.meta.get('source', 'mask')}: the mask does not overlap the "
                            f"CT {ct.meta.get('source', '')} in physical space")
    prob = None
    if probabilities is not None:
        prob = _on_grid(probabilities.with_array(
            np.asarray(probabilities.array, dtype=np.float32)), canon, "linear", "prob")
    hu = np.asarray(canon.array)
    inst: Instances = split_vertebrae(m, canon.spacing, prob, cfg.instances, ct=hu)
    report = name_levels(hu, m, inst, canon.spacing, cfg.levels)
    measures = measure_vertebrae(hu, inst, canon.spacing, cfg.measures)
    value = np.zeros(inst.count + 1, dtype=np.uint16)
    vertebrae = []
    for lev, mea in zip(report.levels, measures, strict=True):
        value[lev.instance] = lev.label
        xyz = np.asarray(mea.centroid_voxel_zyx)[::-1][None, :]
        lps = voxel_to_physical(canon, xyz)[0]
        vertebrae.append(Vertebra(lev, mea, (float(lps[0]), float(lps[1]), float(lps[2]))))
    canon_labels = canon.with_array(value[inst.labels])
    target = output_grid if output_grid is not None else ct
    back = reorient(canon_labels, target.orientation)
    labels = target.with_array(back.array) if back.same_grid(target) else resample_to(
        canon_labels, target, interpolation="nearest")
    labels.meta.pop("source", None)
    return VertebraeResult(labels, vertebrae, report, canon, canon_labels, cfg)
