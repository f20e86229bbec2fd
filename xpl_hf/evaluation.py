"""The community's audio-visual source localization protocol (cIoU / AUC), and ground-truth maps.

This module is the one implementation of the evaluation protocol used by every number the package reports
(the ``avsl_localization`` ``evaluate`` metric, ``python -m xpl_hf.evaluate``, the trainer's validation) and of
the box -> ground-truth-map rules (the data layer imports :func:`ground_truth_map` from here).

Protocol (LVS / EZ-VSL / SLAVC evaluation code, reproduced exactly):

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

Ground truth (224 x 224, float32):

- ``"union"`` (VGG-SS): each normalised box ``b = [x0, y0, x1, y1]`` becomes ``(clip(b, 0, 1) * 224).astype(int)``
  and ``G[y0:y1, x0:x1] = 1`` (union of the boxes);
- ``"flickr"`` (Flickr-SoundNet): the boxes of all annotators, in 256-px coordinates ``v``, become
  ``int(224 * v / 256)``; ``G`` is the sum of the filled boxes ``[ymin:ymax, xmin:xmax]``, then ``G / 2`` clipped
  to 1 (so one annotator gives 0.5, two or more give 1). Boxes are stored normalised (``v / 256``, exact in
  floating point), and ``int(224 * (v / 256)) == int(224 * v / 256)`` for every integer ``v``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
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

FLICKR_ANNOTATION_SIZE = 256
"""Flickr-SoundNet annotations are given in coordinates of a 256 x 256 image."""

GT_RULES = ("union", "flickr", "none")

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

METRIC_PATH = str(Path(__file__).resolve().parent / "metrics" / "avsl_localization")
"""Directory of the ``evaluate`` metric: ``evaluate.load(METRIC_PATH)`` works offline."""

_CHUNK = 64  # samples per vectorised step (64 x 224 x 224 float32 = 12.8 MB, reused by the allocator)

METRIC_NUM_THREADS: int | None = 1
"""torch threads used while scoring (restored afterwards; ``None`` keeps torch's setting). The scoring work is
small, memory-bound element-wise passes: on the 2-core development machine, with other processes running, each
step measured 3-5x slower with 2 threads than with 1 (5,158 VGG-SS samples: about 4 s of CPU single-threaded)."""


# ---------------------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------------------


def _as_box_array(boxes: Any) -> np.ndarray:
    """Boxes (list of [x0, y0, x1, y1] or an array) -> float64 array (K, 4); raises ValueError otherwise."""
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 4:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be a list of [x0, y0, x1, y1], got an array of shape {array.shape}")
    return array


def ground_truth_map(boxes: Any, rule: str, size: int = EVAL_SIZE) -> np.ndarray:
    """Ground-truth map of a sample from its normalised boxes.

    Args:
        boxes: sequence of ``[x0, y0, x1, y1]`` in [0, 1] (relative to the image width / height), or an array of
            shape (K, 4). Empty -> an all-zero map. For ``"flickr"``, the boxes of all annotators, i.e. the
            256-px annotation coordinates divided by 256.
        rule: ``"union"`` (VGG-SS: union of the boxes), ``"flickr"`` (sum of the annotators' boxes / 2, clipped
            to 1) or ``"none"`` (unlabeled sample: all zeros).
        size: side of the map (the protocol uses 224).

    Returns:
        np.float32 array (size, size) with values in {0, 1} (``"flickr"``: {0, 0.5, 1}).
    """
    if rule not in GT_RULES:
        raise ValueError(f"unknown ground-truth rule {rule!r}; expected one of {GT_RULES}")
    boxes = _as_box_array(boxes)
    if rule == "none":
        return np.zeros((size, size), dtype=np.float32)
    gt = np.zeros((size, size), dtype=np.float64)
    if rule == "union":
        for box in boxes:
            x0, y0, x1, y1 = (np.clip(box, 0, 1) * size).astype(int)
            gt[y0:y1, x0:x1] = 1
    else:  # flickr
        for box in boxes:
            # clipping leaves in-range coordinates untouched and keeps numpy from wrapping negative indices
            x0, y0, x1, y1 = (int(size * v) for v in np.clip(box, 0, 1))
            gt[y0:y1, x0:x1] += 1
        gt = np.minimum(gt / 2, 1)
    return gt.astype(np.float32)


def vggss_ground_truths(json_path: str | os.PathLike, size: int = EVAL_SIZE) -> dict[str, np.ndarray]:
    """Ground-truth maps of the VGG-SS annotation file (``vggss.json``: ``[{file, class, bbox: [[x0,y0,x1,y1],...]}]``).

    Returns:
        ``{file id: np.float32 (size, size)}`` built with the ``"union"`` rule.
    """
    with open(json_path) as f:
        annotations = json.load(f)
    if not isinstance(annotations, list):
        raise ValueError(f"{json_path}: expected a JSON list of {{file, bbox}} entries")
    maps = {}
    for index, entry in enumerate(annotations):
        if not isinstance(entry, Mapping) or "file" not in entry or "bbox" not in entry:
            raise ValueError(f"{json_path}: entry {index} lacks 'file' or 'bbox'")
        try:
            maps[str(entry["file"])] = ground_truth_map(entry["bbox"], "union", size=size)
        except ValueError as error:
            raise ValueError(f"{json_path}: entry {index} ({entry['file']}): {error}") from error
    return maps


def _local_tag(element: ET.Element) -> str:
    """Tag without an XML namespace, lower-cased."""
    return element.tag.rsplit("}", 1)[-1].strip().lower()


def _number(text: str | None) -> float | None:
    try:
        value = float(text.strip())  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def flickr_boxes_from_xml(path: str | os.PathLike, normalize: bool = True) -> list[list[float]]:
    """Boxes of all annotators from one Flickr-SoundNet annotation file (``Annotations/<id>.xml``).

    Every ``<bbox>`` element (at any depth, XML namespaces ignored) is one box. Coordinates are read from its
    ``xmin``, ``ymin``, ``xmax``, ``ymax`` children (any order, any case, integer or decimal text); a ``<bbox>``
    without those names is read positionally like the reference code: its last four numeric children are
    ``xmin, ymin, xmax, ymax`` (the released files start each bbox with an index element).

    Args:
        path: the XML file.
        normalize: divide by 256 (the annotation image size) so the boxes follow the dataset schema
            (``ground_truth_map(boxes, "flickr")``); ``False`` returns the raw 256-px coordinates.

    Returns:
        list of ``[xmin, ymin, xmax, ymax]`` (possibly empty when the file has no ``<bbox>``).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: not a valid XML annotation ({error})") from error
    boxes = []
    for index, bbox in enumerate(element for element in root.iter() if _local_tag(element) == "bbox"):
        children = list(bbox)
        named = {_local_tag(child): _number(child.text) for child in children}
        if all(key in named for key in ("xmin", "ymin", "xmax", "ymax")):
            box = [named["xmin"], named["ymin"], named["xmax"], named["ymax"]]
        else:
            numbers = [_number(child.text) for child in children]
            box = [value for value in numbers if value is not None][-4:]
        if len(box) != 4 or any(value is None for value in box):
            raise ValueError(f"{path}: bbox {index} does not hold four numeric coordinates xmin, ymin, xmax, ymax")
        if normalize:
            box = [value / FLICKR_ANNOTATION_SIZE for value in box]
        boxes.append(box)
    return boxes


def flickr_ground_truth_from_xml(path: str | os.PathLike, size: int = EVAL_SIZE) -> np.ndarray:
    """Ground-truth map (np.float32 (size, size), values in {0, 0.5, 1}) of one Flickr-SoundNet annotation file."""
    return ground_truth_map(flickr_boxes_from_xml(path, normalize=True), "flickr", size=size)


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


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


def _prediction_tensor(prediction: Any, index: int) -> torch.Tensor:
    if isinstance(prediction, torch.Tensor):
        tensor = prediction.detach().to("cpu", torch.float32)
    else:
        try:
            tensor = torch.from_numpy(np.asarray(prediction, dtype=np.float32))
        except (TypeError, ValueError) as error:
            raise ValueError(f"prediction {index}: cannot be read as a 2-D float array ({error})") from error
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"prediction {index}: expected a non-empty 2-D map (h, w), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"prediction {index}: the map contains NaN or infinite values")
    return tensor


def _ground_truth_tensor(ground_truth: Any, index: int) -> torch.Tensor:
    if isinstance(ground_truth, torch.Tensor):
        tensor = ground_truth.detach().to("cpu", torch.float32)
    else:
        try:
            tensor = torch.from_numpy(np.asarray(ground_truth, dtype=np.float32))
        except (TypeError, ValueError) as error:
            raise ValueError(f"ground truth {index}: cannot be read as a float array ({error})") from error
    if tuple(tensor.shape) != (EVAL_SIZE, EVAL_SIZE):
        raise ValueError(
            f"ground truth {index}: expected shape ({EVAL_SIZE}, {EVAL_SIZE}), got {tuple(tensor.shape)}"
        )
    return tensor


def per_sample_ciou(predictions: Sequence[Any], ground_truths: Sequence[Any]) -> np.ndarray:
    """Per-sample cIoU of raw maps against 224 x 224 ground truths (steps 1-4 of the protocol).

    Args:
        predictions: N raw maps, each a 2-D np.ndarray / torch.Tensor / nested list of any resolution (h, w);
            a (N, h, w) array or tensor also works. Maps of equal shape are processed in vectorised chunks.
        ground_truths: N ground-truth maps of shape (224, 224) (see :func:`ground_truth_map`).

    Returns:
        np.float64 array (N,).
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(ground_truths)} ground truths; they must match one to one"
        )
    scores = np.zeros(len(predictions), dtype=np.float64)
    tensors = [_prediction_tensor(prediction, index) for index, prediction in enumerate(predictions)]
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


# ---------------------------------------------------------------------------------------------------------------
# Evaluating a model
# ---------------------------------------------------------------------------------------------------------------

BRANCHES = {"a": "maps_a", "b": "maps_b", "fused": "maps"}
"""Result key -> the :class:`xpl_hf.XPLModelOutput` field holding that map."""


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Sample ids from a split list: one id per line, the first comma-separated field (``vggss_heard_test.csv``,
    ``flickr_test.csv`` ``id,frame``); blank lines and ``#`` comments are ignored."""
    ids = []
    with open(path) as f:
        for line in f:
            field = line.split(",", 1)[0].strip()
            if field and not field.startswith("#"):
                ids.append(field)
    if not ids:
        raise ValueError(f"{path}: the id list is empty")
    return ids


def _branch_summaries(scores: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for branch, values in scores.items():
        selected = values if mask is None else values[mask]
        out[branch] = summarize_ciou(selected)
    out["num_samples"] = int(len(next(iter(scores.values()))) if mask is None else mask.sum())
    return out


def _default_loader(dataset, processor, batch_size: int, num_workers: int):
    from torch.utils.data import DataLoader

    from xpl_hf.data.transforms import XPLCollator

    if processor is None:
        raise ValueError("evaluate_model needs `processor` to turn dataset rows into model inputs")
    collator = XPLCollator(processor, train=False, on_bad_sample="raise")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collator)


@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    data: Iterable[Mapping[str, Any]],
    *,
    processor: Any = None,
    batch_size: int = 32,
    num_workers: int = 0,
    max_samples: int | None = None,
    subsets: Mapping[str, Iterable[str]] | None = None,
    per_label: bool = True,
    keep_maps: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run an :class:`xpl_hf.XPLModel` over an evaluation set and compute cIoU / AUC for branch A, B and fused.

    Args:
        model: an ``XPLModel`` (anything returning ``maps_a``, ``maps_b``, ``maps`` of shape (B, h, w)). It is put in
            eval mode for the run and its training mode is restored afterwards.
        data: either an iterable of collated batches (``xpl_hf.data.XPLCollator(processor, train=False)``: keys
            ``ids``, ``pixel_values_a``, ``pixel_values_b``, ``audio_log_mel``, ``audio_waveform``, ``gt_maps``
            (B, 224, 224), ``is_labeled``, ``labels``), or a ``datasets.Dataset`` of the xpl-hf schema (then
            ``processor`` is required and a non-shuffling DataLoader with a strict collator is built).
        processor: an ``XPLProcessor``; only used when ``data`` is a dataset.
        batch_size, num_workers: DataLoader settings when ``data`` is a dataset.
        max_samples: stop after this many samples.
        subsets: named id lists (e.g. ``{"heard": [...], "unheard": [...]}``) to report separately; ids absent
            from the evaluated set are counted in ``missing``.
        per_label: report a breakdown per ``labels`` value (skipped when every label is empty).
        keep_maps: keep the raw low-resolution maps in ``result["maps"]`` (for overlays).
        progress: show a tqdm progress bar.

    Unlabeled rows (``is_labeled`` False) are not scored; they are counted in ``num_unlabeled_skipped``.

    Returns:
        a dict with
        ``metrics``: ``{"a" | "b" | "fused": {"ciou", "auc", "mean_ciou"}, "num_samples"}``;
        ``summary``: flat ``{"fused/ciou": ..., "a/auc": ..., ...}`` (for loggers);
        ``per_label``: ``{label: same structure as metrics}`` (empty when there are no labels);
        ``subsets``: ``{name: {..., "missing": int}}``;
        ``per_sample``: ``{"ids", "labels", "ciou_a", "ciou_b", "ciou_fused"}`` (lists, input order);
        ``num_unlabeled_skipped``, ``protocol`` (:data:`PROTOCOL`) and, with ``keep_maps``,
        ``maps``: ``{"a" | "b" | "fused": np.float32 (N, h, w)}``.
    """
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    if hasattr(data, "column_names") and hasattr(data, "features"):  # a datasets.Dataset
        if max_samples is not None and hasattr(data, "select"):
            data = data.select(range(min(max_samples, len(data))))
        data = _default_loader(data, processor, batch_size, num_workers)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()

    ids: list[str] = []
    labels: list[str] = []
    scores: dict[str, list[np.ndarray]] = {branch: [] for branch in BRANCHES}
    maps: dict[str, list[np.ndarray]] = {branch: [] for branch in BRANCHES}
    num_unlabeled = 0
    if progress:
        from tqdm.auto import tqdm

        data = tqdm(data, desc="evaluating", unit="batch")
    try:
        for batch in data:
            if batch is None:  # a skip-mode collator dropped every sample of the batch
                continue
            labeled = torch.as_tensor(batch["is_labeled"], dtype=torch.bool).cpu()
            num_unlabeled += int((~labeled).sum())
            if not labeled.any():
                continue
            if max_samples is not None:
                room = max_samples - len(ids)
                labeled &= torch.cumsum(labeled.long(), 0) <= room
            keep = labeled.nonzero().flatten().tolist()
            pixel_a = batch["pixel_values_a"].to(device)
            pixel_b = batch.get("pixel_values_b")
            output = model(
                pixel_values=pixel_a,
                audio_log_mel=batch["audio_log_mel"].to(device),
                audio_waveform=batch["audio_waveform"].to(device),
                pixel_values_b=None if pixel_b is None or pixel_b is batch["pixel_values_a"] else pixel_b.to(device),
            )
            gts = torch.as_tensor(batch["gt_maps"])[keep]
            for branch, field in BRANCHES.items():
                branch_maps = getattr(output, field).detach().float().cpu()[keep]
                scores[branch].append(per_sample_ciou(branch_maps, gts))
                if keep_maps:
                    maps[branch].append(branch_maps.numpy())
            ids.extend(str(batch["ids"][i]) for i in keep)
            batch_labels = batch.get("labels") or [""] * len(batch["ids"])
            labels.extend(str(batch_labels[i] or "") for i in keep)
            if max_samples is not None and len(ids) >= max_samples:
                break
    finally:
        model.train(was_training)

    if not ids:
        raise ValueError("the evaluation set holds no labeled sample (every row is unlabeled or the set is empty)")
    per_branch = {branch: np.concatenate(values) for branch, values in scores.items()}
    result: dict[str, Any] = {"metrics": _branch_summaries(per_branch)}
    result["summary"] = {
        f"{branch}/{name}": value
        for branch in BRANCHES
        for name, value in result["metrics"][branch].items()
    }

    result["per_label"] = {}
    label_array = np.array(labels, dtype=object)
    if per_label and any(labels):
        for label in sorted(set(labels)):
            result["per_label"][label] = _branch_summaries(per_branch, label_array == label)

    result["subsets"] = {}
    id_array = np.array(ids, dtype=object)
    for name, subset_ids in (subsets or {}).items():
        wanted = set(map(str, subset_ids))
        mask = np.fromiter((sample_id in wanted for sample_id in ids), dtype=bool, count=len(ids))
        entry: dict[str, Any] = {"num_samples": int(mask.sum()), "missing": len(wanted - set(id_array[mask]))}
        if mask.any():
            entry.update(_branch_summaries(per_branch, mask))
        result["subsets"][name] = entry

    result["per_sample"] = {
        "ids": ids,
        "labels": labels,
        **{f"ciou_{branch}": values.tolist() for branch, values in per_branch.items()},
    }
    result["num_unlabeled_skipped"] = num_unlabeled
    result["protocol"] = dict(PROTOCOL)
    if keep_maps:
        result["maps"] = {branch: np.concatenate(values) for branch, values in maps.items()}
    return result


# ---------------------------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------------------------


def pick_best_median_worst(per_sample_ciou: Sequence[float], per_group: int = 4) -> dict[str, list[int]]:
    """Indices of the ``per_group`` best, median and worst samples by cIoU (stable order; groups may overlap
    when there are fewer than ``3 * per_group`` samples)."""
    scores = np.asarray(per_sample_ciou, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # best first
    n = len(order)
    k = min(per_group, n)
    start = max(0, min(n - k, n // 2 - k // 2))
    return {
        "best": order[:k].tolist(),
        "median": order[start : start + k].tolist(),
        "worst": order[::-1][:k].tolist(),
    }


def save_overlay_grid(
    path: str | os.PathLike,
    images: Sequence[Any],
    maps: Sequence[Any],
    ground_truths: Sequence[Any],
    titles: Sequence[str],
    row_names: Sequence[str] | None = None,
    columns: int = 4,
) -> str:
    """Save a PNG grid of heat-map overlays (matplotlib, Agg backend).

    Args:
        path: output PNG.
        images: the frames (PIL images or (H, W, 3) uint8 arrays), resized to 224 x 224 for display.
        maps: raw localization maps (h, w); shown upsampled and normalised exactly as the protocol scores them.
        ground_truths: (224, 224) ground-truth maps, drawn as a contour.
        titles: one title per panel.
        row_names: optional label of each row (``len(images) / columns`` rows).
        columns: panels per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    if not (len(images) == len(maps) == len(ground_truths) == len(titles)):
        raise ValueError("images, maps, ground_truths and titles must have the same length")
    if not images:
        raise ValueError("nothing to plot")
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    heat = normalize_maps(upsample_maps(torch.stack([_prediction_tensor(m, i) for i, m in enumerate(maps)])))
    for index, (image, title) in enumerate(zip(images, titles)):
        ax = axes.flat[index]
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        ax.imshow(np.asarray(image.convert("RGB").resize((EVAL_SIZE, EVAL_SIZE), Image.BILINEAR)))
        ax.imshow(heat[index].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        gt = np.asarray(ground_truths[index], dtype=np.float32)
        if gt.any():
            ax.contour(gt, levels=[0.25, 0.75], colors=["white", "white"], linewidths=[0.8, 1.5])
        ax.set_title(title, fontsize=7)
    if row_names:
        for row, name in enumerate(row_names[:rows]):
            axes[row, 0].text(-12, EVAL_SIZE / 2, name, rotation=90, va="center", ha="right", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)
