"""Evaluation metrics: the community's cIoU / AUC protocol (:mod:`xpl_hf.metrics.protocol`), its ground-truth maps
(:mod:`xpl_hf.metrics.ground_truth`) and its ``evaluate`` metric (``evaluate.load(xpl_hf.metrics.METRIC_PATH)``, a
folder shipped with the package)."""

from .ground_truth import GT_RULES, ground_truth_map
from .protocol import (
    AUC_THRESHOLDS,
    EVAL_SIZE,
    METRIC_PATH,
    PROTOCOL,
    localization_metrics,
    per_sample_ciou,
    summarize_ciou,
)

__all__ = ["AUC_THRESHOLDS", "EVAL_SIZE", "GT_RULES", "METRIC_PATH", "PROTOCOL", "ground_truth_map",
           "localization_metrics", "per_sample_ciou", "summarize_ciou"]
