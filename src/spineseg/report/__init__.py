"""Per-case statistics and quality flags, and the cohort report that shows them at a glance.

``statistics``: figures of a mask over its CT (``spineseg stats``); ``flags``: results a reader
should look at; ``cohort_html``: the self-contained ``report.html`` of a batch. No torch here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spineseg.io import reorient
from spineseg.report.flags import confidence_flags, mask_flags, uncertain_share
from spineseg.report.statistics import MaskStatistics, measure

if TYPE_CHECKING:
    from spineseg.inference.pipeline import SegmentResult


def result_statistics(result: SegmentResult) -> MaskStatistics:
    """Statistics of a segmentation on the input's grid (what ``spine.nii.gz`` holds).

    The CT on the input grid is the canonical CT with its axes permuted back (exact); for an
    oblique scan, which was segmented on an axis-aligned resampling, the intensities are read on
    that grid instead (the count, volume and box stay those of the input grid).
    """
    ct_back = reorient(result.canonical_ct, result.mask.orientation)
    if ct_back.same_grid(result.mask):
        return measure(result.mask, ct_back)
    geometry = measure(result.mask)
    hu = measure(result.canonical_mask, result.canonical_ct)
    return MaskStatistics(geometry.voxel_count, geometry.volume_ml, hu.intensity_mean_hu,
                          hu.intensity_median_hu, geometry.bounding_box,
                          ["oblique scan: intensities read on the axis-aligned grid it was "
                           "segmented on"])


def case_quality(result: SegmentResult) -> dict[str, Any]:
    """What ``stats.json`` adds for a reader: ``statistics``, ``flags`` and ``confidence``."""
    stats = result_statistics(result)
    flags = mask_flags(result.mask, stats.volume_ml)
    flags += confidence_flags(result.probability_histogram)
    share = (uncertain_share(result.probability_histogram)
             if result.probability_histogram is not None else None)
    return {
        "statistics": stats.to_dict(),
        "flags": [f.to_dict() for f in flags],
        "confidence": {"uncertain_share": None if share is None else round(share, 4),
                       "probability_histogram": result.probability_histogram},
    }
