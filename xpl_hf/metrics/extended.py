"""The extended localization protocol (SLAVC, NeurIPS 2022; FNAC and ACL-SSL report it): does a model say *whether*
something in the frame makes the sound, and where?

Every test frame is scored twice: with its own sound (a *positive*: it has a visible source, and a cIoU against its
ground truth) and with another clip's sound (a *negative*: nothing in the frame makes that sound; silence and noise
give further negatives, reported as separate rows). Each map carries a confidence ``c``
(:func:`xpl_hf.maps.map_confidence`). At a confidence threshold ``tau``:

- a negative with ``c >= tau`` is a false positive;
- a positive with ``c >= tau`` is a true positive if its cIoU >= ``theta`` (0.5; also 0.75), else a false positive;
- a positive with ``c < tau`` is a false negative.

``precision = TP / (TP + FP)`` (1 when nothing is detected, as in SLAVC's code) and ``recall = TP / (TP + FN)`` (0 when
``TP + FN == 0``). Lowering ``tau`` past a sample never lowers the recall, so the (recall, precision) points over
every distinct confidence value form a curve; **AP** is the area under its monotone precision envelope (all-point
interpolation, from recall 0): ``AP = sum_k (r_k - r_{k-1}) * max_{j >= k} p_j``, ``r_0 = 0``. **max-F1** is the
largest ``2 p r / (p + r)`` over those thresholds. The box-size subsets score the positives' cIoU / AUC by ground-truth
area at 224 px: small < 32², medium < 96², large < 144², huge >= 144².

Every function here is a pure numpy function of per-sample arrays, so the same numbers come out of
:func:`xpl_hf.evaluation.evaluate_model`, the ``avsl_localization`` metric and any script holding plain arrays. See
docs/evaluation.md for how these relate to SLAVC's published numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .protocol import summarize_ciou

IOU_THRESHOLDS = (0.5, 0.75)
"""cIoU thresholds ``theta`` of AP and max-F1 (AP@0.5 is SLAVC's headline number)."""

DEFAULT_CONFIDENCE_THRESHOLD = 0.5
"""The confidence threshold ``tau`` of the precision / recall / F1 reported at one operating point."""

SIZE_SUBSETS: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 144.0**2),
    "huge": (144.0**2, math.inf),
}
"""Box-size subsets: ``low <= area < high``, area = sum of the 224 x 224 ground-truth map (SLAVC's ``gt.sum()``)."""

EXTENDED_PROTOCOL = {
    "positives": "each frame with its own sound",
    "negatives": "the same frames with another clip's sound (swapped); silence and noise as separate rows",
    "confidence": "mean of the top quarter of each branch's probability map P = sigmoid(w S + b) on its (h, w) grid; "
                  "fused: mean of the branches' confidences",
    "true_positive": "positive with confidence >= tau and cIoU >= theta",
    "false_positive": "negative with confidence >= tau, or positive with confidence >= tau and cIoU < theta",
    "false_negative": "positive with confidence < tau",
    "ap": "area under the monotone precision envelope over every distinct confidence (all-point, from recall 0)",
    "max_f1": "max of 2PR / (P + R) over every distinct confidence",
    "iou_thresholds": list(IOU_THRESHOLDS),
    "confidence_threshold": DEFAULT_CONFIDENCE_THRESHOLD,
    "size_subsets": "area of the 224 x 224 ground truth: small < 32^2, medium < 96^2, large < 144^2, huge >= 144^2",
}
"""The extended protocol's choices, recorded with its results."""


def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return array


def _checked(conf_pos: Any, ciou_pos: Any, conf_neg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf_pos, ciou_pos = _vector(conf_pos, "conf_pos"), _vector(ciou_pos, "ciou_pos")
    conf_neg = _vector(conf_neg, "conf_neg")
    if len(conf_pos) != len(ciou_pos):
        raise ValueError(f"got {len(conf_pos)} positive confidences but {len(ciou_pos)} cIoU values; they must match "
                         "one to one")
    if len(conf_pos) == 0:
        raise ValueError("the extended protocol needs at least one positive")
    return conf_pos, ciou_pos, conf_neg


def _key(iou_threshold: float) -> str:
    return f"{round(100 * iou_threshold)}"


def precision_recall_curve(conf_pos: Any, ciou_pos: Any, conf_neg: Any, iou_threshold: float = 0.5
                           ) -> dict[str, np.ndarray]:
    """Precision and recall at every distinct confidence value, highest first (the module docstring's rules).

    Args:
        conf_pos: (P,) confidences of the positives (frames with their own sound).
        ciou_pos: (P,) their cIoU against the ground truth, in [0, 1].
        conf_neg: (M,) confidences of the negatives (may be empty).
        iou_threshold: ``theta``, the cIoU a detected positive needs to count as a true positive.

    Returns:
        ``{"thresholds", "precision", "recall"}``: float64 arrays (T,), thresholds strictly decreasing, recall
        non-decreasing. Threshold ``thresholds[t]`` detects every sample with confidence ``>= thresholds[t]``.
    """
    conf_pos, ciou_pos, conf_neg = _checked(conf_pos, ciou_pos, conf_neg)
    confidence = np.concatenate([conf_pos, conf_neg])
    correct = np.concatenate([ciou_pos >= iou_threshold, np.zeros(len(conf_neg), dtype=bool)])
    positive = np.concatenate([np.ones(len(conf_pos), dtype=bool), np.zeros(len(conf_neg), dtype=bool)])
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    last_of_tie = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))  # threshold = each distinct value
    true_pos = np.cumsum(correct[order])[last_of_tie]
    detected = (last_of_tie + 1).astype(np.int64)
    false_neg = len(conf_pos) - np.cumsum(positive[order])[last_of_tie]
    precision = true_pos / detected
    found = true_pos + false_neg
    recall = np.divide(true_pos, found, out=np.zeros(len(found)), where=found > 0)
    return {"thresholds": ranked[last_of_tie], "precision": precision.astype(np.float64), "recall": recall}


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the monotone precision envelope: ``sum_k (r_k - r_{k-1}) * max_{j >= k} p_j`` with ``r_0 = 0``.

    Args:
        precision, recall: (T,) points of :func:`precision_recall_curve` (recall non-decreasing).

    Returns:
        AP in [0, 1].
    """
    precision, recall = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    if len(precision) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def f1_scores(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """``2 p r / (p + r)`` pointwise (0 where ``p + r == 0``)."""
    precision, recall = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros(len(total)), where=total > 0)


def precision_recall_at(conf_pos: Any, ciou_pos: Any, conf_neg: Any, confidence_threshold: float,
                        iou_threshold: float = 0.5) -> tuple[float, float]:
    """``(precision, recall)`` at one confidence threshold ``tau`` (samples with ``c >= tau`` are detected)."""
    conf_pos, ciou_pos, conf_neg = _checked(conf_pos, ciou_pos, conf_neg)
    detected = conf_pos >= confidence_threshold
    true_pos = int(np.sum(detected & (ciou_pos >= iou_threshold)))
    false_pos = int(np.sum(detected & (ciou_pos < iou_threshold)) + np.sum(conf_neg >= confidence_threshold))
    false_neg = int(np.sum(~detected))
    precision = 1.0 if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)
    recall = 0.0 if true_pos + false_neg == 0 else true_pos / (true_pos + false_neg)
    return precision, recall


def roc_auc(conf_pos: Any, conf_neg: Any) -> float:
    """How well the confidence alone separates positives from negatives: ``P(c_pos > c_neg) + P(c_pos == c_neg) / 2``
    (the area under the ROC curve; 0.5 for a confidence that ignores the sound, 1 for a perfect separation)."""
    conf_pos, conf_neg = _vector(conf_pos, "conf_pos"), np.sort(_vector(conf_neg, "conf_neg"))
    if len(conf_pos) == 0 or len(conf_neg) == 0:
        raise ValueError("roc_auc needs at least one positive and one negative")
    below = np.searchsorted(conf_neg, conf_pos, side="left")
    tied = np.searchsorted(conf_neg, conf_pos, side="right") - below
    return float(np.sum(below + 0.5 * tied) / (len(conf_pos) * len(conf_neg)))


def extended_protocol(conf_pos: Any, ciou_pos: Any, conf_neg: Any, iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                      confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD) -> dict[str, float | int]:
    """The extended protocol's numbers for one map (a branch or the fused map) and one kind of negative.

    Args:
        conf_pos: (P,) confidences of the frames with their own sound.
        ciou_pos: (P,) their per-sample cIoU (:func:`xpl_hf.metrics.protocol.per_sample_ciou`).
        conf_neg: (M,) confidences of the negatives (e.g. the same frames with a swapped sound).
        iou_thresholds: the ``theta`` values; each gives its own keys (``50`` for 0.5, ``75`` for 0.75).
        confidence_threshold: ``tau`` of the single operating point (``precision_50``, ``recall_50``, ``f1_50``).

    Returns:
        Percentages (0-100, as the papers' tables): ``ap50``, ``max_f1_50``, ``precision_50``, ``recall_50``,
        ``f1_50`` (and the same with ``75``), ``roc_auc`` (separation of positives from negatives by confidence
        alone, :func:`roc_auc`; absent without negatives); ``num_positives``, ``num_negatives`` and
        ``confidence_threshold``.
    """
    conf_pos, ciou_pos, conf_neg = _checked(conf_pos, ciou_pos, conf_neg)
    out: dict[str, float | int] = {}
    for theta in iou_thresholds:
        key = _key(theta)
        curve = precision_recall_curve(conf_pos, ciou_pos, conf_neg, theta)
        out[f"ap{key}"] = 100.0 * average_precision(curve["precision"], curve["recall"])
        out[f"max_f1_{key}"] = 100.0 * float(f1_scores(curve["precision"], curve["recall"]).max())
        precision, recall = precision_recall_at(conf_pos, ciou_pos, conf_neg, confidence_threshold, theta)
        out[f"precision_{key}"] = 100.0 * precision
        out[f"recall_{key}"] = 100.0 * recall
        out[f"f1_{key}"] = 100.0 * float(f1_scores([precision], [recall])[0])
    if len(conf_neg):
        out["roc_auc"] = 100.0 * roc_auc(conf_pos, conf_neg)
    out.update(num_positives=len(conf_pos), num_negatives=len(conf_neg), confidence_threshold=confidence_threshold)
    return out


def ground_truth_areas(ground_truths: Any) -> np.ndarray:
    """Area of each ground truth at 224 px: ``sum(G)`` of (N, 224, 224) maps -> float64 (N,) (a Flickr map's
    half-weighted pixels count half, as in SLAVC's ``gt.sum()``). The maps keep their own dtype (bool maps of 2,000
    scenes: 100 MB, not the 800 MB of a float64 copy); the sums accumulate in float64."""
    maps = np.asarray(ground_truths)
    if maps.ndim != 3:
        raise ValueError(f"expected ground truths of shape (N, 224, 224), got {maps.shape}")
    return maps.reshape(len(maps), -1).sum(axis=1, dtype=np.float64)


def size_masks(areas: Any) -> dict[str, np.ndarray]:
    """``{"small" | "medium" | "large" | "huge": bool (N,)}``: each sample's box-size subset (:data:`SIZE_SUBSETS`)."""
    areas = _vector(areas, "areas")
    return {name: (areas >= low) & (areas < high) for name, (low, high) in SIZE_SUBSETS.items()}


def size_subsets(ciou: Any, areas: Any) -> dict[str, dict[str, float | int]]:
    """cIoU / AUC per box-size subset.

    Args:
        ciou: (N,) per-sample cIoU of the frames with their own sound.
        areas: (N,) ground-truth areas at 224 px (:func:`ground_truth_areas`).

    Returns:
        ``{subset: {"ciou", "auc", "mean_ciou", "num_samples"}}`` (:func:`xpl_hf.metrics.protocol.summarize_ciou`;
        only ``num_samples`` = 0 for an empty subset).
    """
    ciou = _vector(ciou, "ciou")
    masks = size_masks(areas)
    if len(ciou) != len(next(iter(masks.values()))):
        raise ValueError(f"got {len(ciou)} cIoU values but {len(next(iter(masks.values())))} areas")
    return {name: {**(summarize_ciou(ciou[mask]) if mask.any() else {}), "num_samples": int(mask.sum())}
            for name, mask in masks.items()}


def extended_rows(confidences: Mapping[str, Mapping[str, np.ndarray]], ciou: Mapping[str, np.ndarray],
                  mask: np.ndarray | None = None) -> dict[str, dict[str, dict[str, float | int]]]:
    """:func:`extended_protocol` for every kind of negative and every map.

    Args:
        confidences: ``{"true" | "swapped" | "silence" | "noise": {branch: (N,)}}``; ``"true"`` gives the positives,
            every other key a row of negatives (the same N frames with that sound).
        ciou: ``{branch: (N,)}`` cIoU of the frames with their own sound.
        mask: (N,) bool: score only these frames (e.g. a heard / unheard subset); None = all.

    Returns:
        ``{negative kind: {branch: extended_protocol(...)}}``.
    """
    keep = slice(None) if mask is None else np.asarray(mask, dtype=bool)
    positives = confidences["true"]
    return {variant: {branch: extended_protocol(positives[branch][keep], ciou[branch][keep], values[keep])
                      for branch, values in per_branch.items()}
            for variant, per_branch in confidences.items() if variant != "true"}


__all__ = ["DEFAULT_CONFIDENCE_THRESHOLD", "EXTENDED_PROTOCOL", "IOU_THRESHOLDS", "SIZE_SUBSETS", "average_precision",
           "extended_protocol", "extended_rows", "f1_scores", "ground_truth_areas", "precision_recall_at",
           "precision_recall_curve", "roc_auc", "size_masks", "size_subsets"]
