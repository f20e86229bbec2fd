"""Evaluation metrics: the community's cIoU / AUC protocol (:mod:`xpl_hf.metrics.protocol`) and its ``evaluate``
metric (``evaluate.load(xpl_hf.metrics.METRIC_PATH)``, a folder shipped with the package)."""

from .protocol import (
    AUC_THRESHOLDS,
    EVAL_SIZE,
    METRIC_PATH,
    PROTOCOL,
    localization_metrics,
    per_sample_ciou,
    summarize_ciou,
)

__all__ = ["AUC_THRESHOLDS", "EVAL_SIZE", "METRIC_PATH", "PROTOCOL", "localization_metrics", "per_sample_ciou",
           "summarize_ciou"]
