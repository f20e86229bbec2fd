"""Evaluation metrics: the community's cIoU / AUC protocol (:mod:`xpl_hf.metrics.protocol`), its ground-truth maps
(:mod:`xpl_hf.metrics.ground_truth`), the extended protocol with negatives (AP, max-F1, box-size subsets:
:mod:`xpl_hf.metrics.extended`) and the ``evaluate`` metric (``evaluate.load(xpl_hf.metrics.METRIC_PATH)``, a
folder shipped with the package)."""

from .extended import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    EXTENDED_PROTOCOL,
    IOU_THRESHOLDS,
    SIZE_SUBSETS,
    average_precision,
    extended_protocol,
    ground_truth_areas,
    precision_recall_curve,
    roc_auc,
    size_subsets,
)
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

__all__ = ["AUC_THRESHOLDS", "DEFAULT_CONFIDENCE_THRESHOLD", "EVAL_SIZE", "EXTENDED_PROTOCOL", "GT_RULES",
           "IOU_THRESHOLDS", "METRIC_PATH", "PROTOCOL", "SIZE_SUBSETS", "average_precision", "extended_protocol",
           "ground_truth_areas", "ground_truth_map", "localization_metrics", "per_sample_ciou",
           "precision_recall_curve", "roc_auc", "size_subsets", "summarize_ciou"]
