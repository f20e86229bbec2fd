"""The community's audio-visual source localization protocol (cIoU / AUC): the one implementation behind every
number the package reports (the ``avsl_localization`` ``evaluate`` metric, ``python -m xpl_hf.evaluate``, the
trainer's validation). Ground-truth maps come from :mod:`xpl_hf.metrics.ground_truth`.

Protocol (LVS / EZ-VSL / SLAVC evaluation code, reproduced exactly; see docs/evaluation.md):

1. upsample each raw localization map to 224 x 224 with bicubic interpolation, ``align_corners=False``
   (``torch.nn.functional.interpolate``, float32);
2. min-max normalise the map to [0, 1]; a flat map (max == min) is left unchanged;
3. binarise: keep the pixels ``>= sorted(map.flatten())[25088]`` (the top half; ties at the threshold are kept);
4. per-sample cIoU = ``sum(B * G) / (sum(G) + sum(B * (G == 0)))`` with ``G`` the ground-truth map;
5. ``ciou`` = 100 x the fraction of samples with cIoU >= 0.5 (the number reported in papers' tables);
   ``auc`` = 100 x the trapezoid area under the success rate ``s(t) = fraction of samples with cIoU >= t`` over
   the 21 thresholds ``t = 0.05 * i, i = 0..20``.

Empty ground truth (``sum(G) == 0``, e.g. the 2 VGG-SS entries whose only box is corrupt): the cIoU is
``0 / sum(B)``, i.e. 0 -- the sample counts as a failure at every threshold > 0. The denominator cannot be 0 for a
224 x 224 map (the binary map always keeps at least half of the pixels); should it be 0 anyway, the cIoU is
defined as 0 (the reference code would produce NaN, which also fails every threshold).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

EVAL_SIZE = 224
"""Side of the square grid the protocol works on."""

THRESHOLD_INDEX = EVAL_SIZE * EVAL_SIZE // 2
"""Index (25,088) into the sorted upsampled map of the binarisation threshold."""

CIOU_SUCCESS_THRESHOLD = 0.5
"""A sample is a success when its cIoU reaches this value (the tables' ``CIoU``)."""

AUC_THRESHOLDS = 0.05 * np.arange(21)
"""The 21 cIoU thresholds ``0.05 * i`` of the success-rate curve (computed as in the reference code)."""

PROTOCOL = {
    "eval_size": EVAL_SIZE,
    "upsampling": "bicubic",
    "align_corners": False,
    "normalization": "min-max per sample (flat map unchanged)",
    "binarization": f"pixels >= sorted(map)[{THRESHOLD_INDEX}]",
    "ciou": "sum(B*G) / (sum(G) + sum(B*(G==0))); 0 when sum(G) == 0",
    "ciou_success_threshold": CIOU_SUCCESS_THRESHOLD,
    "auc_thresholds": "0.05 * i, i = 0..20 (trapezoid rule)",
}
"""The protocol's choices, recorded in every results file."""

METRIC_PATH = str(Path(__file__).resolve().parent / "avsl_localization")
"""Directory of the ``evaluate`` metric: ``evaluate.load(METRIC_PATH)`` works offline, from any directory."""

_CHUNK = 64  # samples per vectorised step (64 x 224 x 224 float32 = 12.8 MB, reused by the allocator)

METRIC_NUM_THREADS: int | None = 1
"""torch threads used while scoring (restored afterwards; ``None`` keeps torch's setting). The scoring work is
small, memory-bound element-wise passes: on the 2-core development machine, with other processes running, each
step measured 3-5x slower with 2 threads than with 1 (5,158 VGG-SS samples: about 4 s of CPU single-threaded)."""


def upsample_maps(maps: torch.Tensor, size: int = EVAL_SIZE) -> torch.Tensor:
    """(N, h, w) raw maps -> (N, size, size) float32, bicubic, ``align_corners=False``."""
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (N, h, w), got {tuple(maps.shape)}")
    return F.interpolate(maps.float()[:, None], size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max normalisation of (N, H, W) maps to [0, 1]; a flat map is returned unchanged."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    flat_map = span == 0
    normalized = (flat - low) / torch.where(flat_map, torch.ones_like(span), span)
    return torch.where(flat_map, flat, normalized).view_as(maps)


def binarize_maps(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) maps -> (N, H, W) bool, True where ``map >= sorted(map.flatten())[H * W // 2]``."""
    flat = maps.flatten(1)
    threshold = flat.kthvalue(flat.shape[1] // 2 + 1, dim=1, keepdim=True).values
    return (flat >= threshold).view_as(maps)


def ciou_scores(binary_maps: torch.Tensor, ground_truths: torch.Tensor) -> torch.Tensor:
    """Per-sample cIoU of (N, H, W) bool predictions against (N, H, W) ground truths -> float64 (N,).

    ``cIoU = sum(B * G) / (sum(G) + sum(B * (G == 0)))``; 0 where the denominator is 0.
    """
    binary = binary_maps.flatten(1).to(torch.float32)
    gt = ground_truths.flatten(1).to(torch.float32)
    # B is 0/1 and G holds multiples of 0.5: every (partial) sum below 2**24 is exact in float32
    intersection = torch.einsum("nk,nk->n", binary, gt).double()
    outside = (binary.sum(dim=1) - torch.einsum("nk,nk->n", binary, (gt != 0).to(torch.float32))).double()
    denominator = gt.sum(dim=1).double() + outside
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, intersection / safe, torch.zeros_like(denominator))


def success_rates(per_sample_ciou: np.ndarray) -> np.ndarray:
    """Fraction of samples with cIoU >= t for each t in :data:`AUC_THRESHOLDS` -> float64 (21,)."""
    scores = np.asarray(per_sample_ciou, dtype=np.float64)
    return np.array([(scores >= t).mean() for t in AUC_THRESHOLDS], dtype=np.float64)


def summarize_ciou(per_sample_ciou: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``{"ciou", "auc", "mean_ciou"}`` (percentages for ciou / auc) from per-sample cIoU values."""
    scores = np.asarray(per_sample_ciou, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot summarise an empty set of samples")
    rates = success_rates(scores)
    area = float(np.sum((rates[1:] + rates[:-1]) / 2 * np.diff(AUC_THRESHOLDS)))  # trapezoid rule
    return {
        "ciou": 100.0 * float((scores >= CIOU_SUCCESS_THRESHOLD).mean()),
        "auc": 100.0 * area,
        "mean_ciou": float(scores.mean()),
    }


def _as_float_tensor(value: Any, what: str) -> torch.Tensor:
    """Tensor / array / nested list -> float32 CPU tensor; a ValueError names ``what`` when it cannot be read."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32)
    if isinstance(value, (list, tuple)) and all(isinstance(row, (list, tuple, np.ndarray)) for row in value):
        lengths = sorted({len(row) for row in value})
        if len(lengths) > 1:
            raise ValueError(f"{what}: its rows have different lengths {lengths} (a ragged map); expected a 2-D "
                             "array (h, w)")
    try:
        return torch.from_numpy(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: cannot be read as a float array ({error})") from error


def as_prediction_tensor(prediction: Any, index: int) -> torch.Tensor:
    """A raw map (h, w), checked: non-empty, 2-D, finite."""
    tensor = _as_float_tensor(prediction, f"prediction {index}")
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"prediction {index}: expected a non-empty 2-D map (h, w), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"prediction {index}: the map contains NaN or infinite values")
    return tensor


def _ground_truth_tensor(ground_truth: Any, index: int) -> torch.Tensor:
    """A ground-truth map (224, 224), checked: values finite and in [0, 1] (a 0/255 mask would score as if every
    pixel of the box counted 255 times)."""
    tensor = _as_float_tensor(ground_truth, f"ground truth {index}")
    if tuple(tensor.shape) != (EVAL_SIZE, EVAL_SIZE):
        raise ValueError(
            f"ground truth {index}: expected shape ({EVAL_SIZE}, {EVAL_SIZE}), got {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"ground truth {index}: values must lie in [0, 1]; the map holds NaN or infinite values")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0 or high > 1:
        hint = " (a 0/255 mask? divide it by 255)" if high > 1 else ""
        raise ValueError(f"ground truth {index}: values must lie in [0, 1], got [{low:g}, {high:g}]{hint}")
    return tensor


def per_sample_ciou(predictions: Sequence[Any], ground_truths: Sequence[Any]) -> np.ndarray:
    """Per-sample cIoU of raw maps against 224 x 224 ground truths (steps 1-4 of the protocol).

    Args:
        predictions: N raw maps, each a 2-D np.ndarray / torch.Tensor / nested list of any resolution (h, w);
            a (N, h, w) array or tensor also works. Maps of equal shape are processed in vectorised chunks.
        ground_truths: N ground-truth maps of shape (224, 224) with values in [0, 1] (see
            :func:`xpl_hf.metrics.ground_truth.ground_truth_map`).

    Raises:
        ValueError: naming the index of a prediction that is empty, ragged, not 2-D or not finite, or of a ground
            truth that is not (224, 224) or has values outside [0, 1].

    Returns:
        np.float64 array (N,).
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(ground_truths)} ground truths; they must match one to one"
        )
    scores = np.zeros(len(predictions), dtype=np.float64)
    tensors = [as_prediction_tensor(prediction, index) for index, prediction in enumerate(predictions)]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_shape.setdefault(tuple(tensor.shape), []).append(index)
    with _torch_threads(METRIC_NUM_THREADS):
        _score_groups(tensors, ground_truths, by_shape, scores)
    return scores


@contextlib.contextmanager
def _torch_threads(num_threads: int | None):
    """Temporarily run torch's intra-op work on ``num_threads`` threads (``None``: unchanged)."""
    previous = torch.get_num_threads()
    if num_threads is None or num_threads == previous:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _score_groups(
    tensors: list[torch.Tensor],
    ground_truths: Sequence[Any],
    by_shape: Mapping[tuple[int, int], list[int]],
    scores: np.ndarray,
) -> None:
    """Fill ``scores[i]`` for every sample, one vectorised chunk of equal-shape maps at a time."""
    for indices in by_shape.values():
        for start in range(0, len(indices), _CHUNK):
            chunk = indices[start : start + _CHUNK]
            maps = torch.stack([tensors[i] for i in chunk])
            gts = torch.stack([_ground_truth_tensor(ground_truths[i], i) for i in chunk])
            binary = binarize_maps(normalize_maps(upsample_maps(maps)))
            scores[chunk] = ciou_scores(binary, gts).numpy()


def localization_metrics(predictions: Sequence[Any], ground_truths: Sequence[Any]) -> dict[str, Any]:
    """cIoU / AUC of raw localization maps (the full protocol, see the module docstring).

    Args:
        predictions: N raw maps of any resolution (2-D arrays / tensors; or one (N, h, w) array / tensor).
        ground_truths: N ground-truth maps (224, 224).

    Returns:
        ``{"ciou": float, "auc": float, "mean_ciou": float, "per_sample_ciou": np.float64 (N,)}``; ``ciou`` and
        ``auc`` are percentages (the tables' numbers), ``mean_ciou`` is in [0, 1].
    """
    if len(predictions) == 0:
        raise ValueError("localization_metrics needs at least one sample")
    scores = per_sample_ciou(predictions, ground_truths)
    return {**summarize_ciou(scores), "per_sample_ciou": scores}
