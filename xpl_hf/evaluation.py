"""Run an XPL model over an evaluation split and score it with the protocol of :mod:`xpl_hf.metrics.protocol`.

Used by the trainer's validation, the test at the end of training and ``python -m xpl_hf.evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from .metrics.protocol import PROTOCOL, per_sample_ciou, summarize_ciou

MODEL_INPUTS = ("pixel_values", "pixel_values_b", "audio_log_mel", "audio_waveform")
"""Keys of a collated batch that `XPLModel.forward` reads; the others (ids, ground truth, ...) stay on the host."""

BRANCHES = {"a": "maps_a", "b": "maps_b", "fused": "maps"}
"""Result key -> the :class:`xpl_hf.XPLModelOutput` field holding that map."""


def _branch_summaries(scores: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for branch, values in scores.items():
        selected = values if mask is None else values[mask]
        out[branch] = summarize_ciou(selected)
    out["num_samples"] = int(len(next(iter(scores.values()))) if mask is None else mask.sum())
    return out


def _default_loader(dataset, processor, batch_size: int, num_workers: int):
    from torch.utils.data import DataLoader

    from .data.transforms import XPLCollator

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
            ``ids``, ``pixel_values``, ``pixel_values_b``, ``audio_log_mel``, ``audio_waveform``, ``gt_maps``
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
            output = model(**{k: batch[k].to(device) for k in MODEL_INPUTS if batch.get(k) is not None})
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
