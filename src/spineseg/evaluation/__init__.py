"""Metrics on masks (paper DSC/IoU, per-volume Dice/IoU/HD95/ASD) and evaluation reports."""

from spineseg.evaluation.evaluate import evaluate_mask_pair, evaluate_masks, evaluate_model
from spineseg.evaluation.metrics import EvaluationResult, VolumeMetrics, volume_metrics

__all__ = [
    "EvaluationResult",
    "VolumeMetrics",
    "evaluate_mask_pair",
    "evaluate_masks",
    "evaluate_model",
    "volume_metrics",
]
