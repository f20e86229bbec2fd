"""Run an XPL model over an evaluation split and score it with the protocol of :mod:`xpl_hf.metrics.protocol`.

Used by the trainer's validation, the test at the end of training and ``python -m xpl_hf.evaluate``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .configuration_xpl import FEATURE_STRIDE
from .maps import branch_confidences, minmax_normalize
from .metrics.extended import EXTENDED_PROTOCOL, extended_rows, ground_truth_areas, size_masks
from .metrics.listening import (
    AUDIO_VARIANTS,
    ListeningSettings,
    format_listening_table,
    listening_drops,
    noise_clip_index,
    noise_waveform,
    select_objects,
    summarize_selection,
    swap_permutation,
)
from .metrics.protocol import PROTOCOL, per_sample_ciou, summarize_ciou

__all__ = ["BRANCHES", "ListeningRun", "ListeningSettings", "evaluate_model", "format_listening_table",
           "listening_summary", "objects_by_id", "save_per_scene_scores", "size_summaries"]

MODEL_INPUTS = ("pixel_values", "pixel_values_b", "audio_log_mel", "audio_waveform")
"""Keys of a collated batch that `XPLModel.forward` reads; the others (ids, ground truth, ...) stay on the host."""

AUDIO_INPUTS = ("audio_log_mel", "audio_waveform")
"""The audio keys among :data:`MODEL_INPUTS` (both branches' inputs made from one clip)."""

BRANCHES = {"a": "maps_a", "b": "maps_b", "fused": "maps"}
"""Result key -> the :class:`xpl_hf.XPLModelOutput` field holding that map."""


def _branch_summaries(scores: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
    if mask is not None and not mask.any():
        return {"num_samples": 0}
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


def objects_by_id(dataset) -> dict[str, list[dict] | None]:
    """``{id: objects}`` from a dataset's optional ``objects`` column (empty when the column is absent), checked by
    :func:`xpl_hf.data.schema.check_objects` (an error names the sample)."""
    from .data.schema import check_objects

    if "objects" not in dataset.column_names:
        return {}
    columns = dataset.select_columns(["id", "objects"])
    return {str(i): check_objects(o, sample_id=str(i)) for i, o in zip(columns["id"], columns["objects"])}


def paired_maps(model: torch.nn.Module, visual: Mapping[str, torch.Tensor], audio: Mapping[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """Each branch's map for visual features paired with any audio embeddings: ``P = sigmoid(w <V(u), e> + b)``.

    Args:
        visual: ``{"a" | "b": (B, D, h, w)}`` unit-norm visual features (``XPLModelOutput.visual_features_*``).
        audio: ``{"a" | "b": (B, D)}`` unit-norm audio embeddings (``XPLModelOutput.audio_embeds_*``).

    Returns:
        ``{"a" | "b" | "fused": (B, h, w)}``, computed as :meth:`xpl_hf.XPLModel.forward` does.
    """
    maps = {}
    for key, branch in (("a", model.branch_a), ("b", model.branch_b)):
        maps[key] = branch.localization_map(torch.einsum("bdhw,bd->bhw", visual[key], audio[key]))
    maps["fused"] = 0.5 * (minmax_normalize(maps["a"]) + minmax_normalize(maps["b"]))
    return maps


def _confidences(maps: Mapping[str, Sequence[torch.Tensor]]) -> dict[str, np.ndarray]:
    """``{"a" | "b" | "fused": (N,)}`` confidences (:func:`xpl_hf.maps.branch_confidences`) of the batches' maps."""
    return {b: c.numpy() for b, c in branch_confidences(torch.cat(list(maps["a"])), torch.cat(list(maps["b"]))).items()}


def size_summaries(scores: Mapping[str, np.ndarray], areas: np.ndarray) -> dict[str, Any]:
    """``{"small" | "medium" | "large" | "huge": {"a" | "b" | "fused": {"ciou", "auc", "mean_ciou"}, "num_samples"}}``:
    cIoU / AUC per box-size subset (:data:`xpl_hf.metrics.extended.SIZE_SUBSETS`; ``{"num_samples": 0}`` when
    empty) from per-branch cIoU (N,) and ground-truth areas (N,) at 224 px."""
    return {name: _branch_summaries(scores, mask) for name, mask in size_masks(areas).items()}


def audio_embeddings(model: torch.nn.Module, audio_inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"a" | "b": (B, D)}`` audio embeddings of a batch of clips, through the model's own forward with blank
    32 x 32 images (the audio embedding does not depend on the image; a 1 x 1 visual map costs 1/49 of a 224-px one)."""
    n = len(audio_inputs["audio_waveform"])
    blank = torch.zeros(n, 3, FEATURE_STRIDE, FEATURE_STRIDE, device=audio_inputs["audio_waveform"].device)
    output = model(pixel_values=blank, **audio_inputs)
    return {"a": output.audio_embeds_a, "b": output.audio_embeds_b}


def negative_audio_inputs(processor, settings: ListeningSettings, noise_clips: Sequence[int] | None = None
                          ) -> dict[str, torch.Tensor]:
    """Both branches' audio inputs for the given clips of the settings' noise pool, or for one all-zero clip
    (``noise_clips=None``), made at the processor's rates and clip length as
    :meth:`xpl_hf.XPLProcessor.audio_features` makes them from a real clip."""
    clips = {}
    for rate in (processor.vggish_sample_rate, processor.soundnet_sample_rate):
        length = round(processor.clip_seconds * rate)
        clips[rate] = np.zeros((1, length), dtype=np.float32) if noise_clips is None else np.stack([
            noise_waveform(f"noise-{k}", length, rate, seed=settings.seed, color=settings.noise_color,
                           rms=settings.noise_rms) for k in noise_clips])
    waveform = np.clip(clips[processor.soundnet_sample_rate], -1.0, 1.0) * 256.0
    return {"audio_log_mel": processor.log_mel_examples(torch.from_numpy(clips[processor.vggish_sample_rate])),
            "audio_waveform": torch.from_numpy(waveform)}


class ListeningRun:
    """Collects the listening checks batch by batch, from the evaluation's own forward (the image encoders run once).

    Silence and noise are scored on the spot: their audio embeddings (computed once for silence and once per clip of
    the noise pool) are paired with the batch's visual features. The swap needs another clip's embedding, possibly
    from a later batch, so the visual features (N, D, h, w) and ground truths (uint8 2 G) stay on the host until
    :meth:`finish`: 2 x D x h x w x 4 + 50,176 bytes a scene (0.5 GB for 2,000 scenes at 224 px, 0.23 GB at 128 px).
    """

    def __init__(self, model: torch.nn.Module, processor, settings: ListeningSettings):
        for name in ("branch_a", "branch_b"):
            if not hasattr(model, name):
                raise ValueError("listening checks need an XPLModel (branch_a, branch_b, visual_features_* and "
                                 f"audio_embeds_* outputs); {type(model).__name__} has no {name}")
        if processor is None:
            from .processing_xpl import XPLProcessor

            processor = XPLProcessor.from_config(model.config)
        self.model, self.processor, self.settings = model, processor, settings
        self.visual: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
        self.audio: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
        self.gts: list[torch.Tensor] = []
        self.scores = {v: {b: [] for b in BRANCHES} for v in AUDIO_VARIANTS if v != "true"}
        self.maps = {v: {b: [] for b in BRANCHES} for v in AUDIO_VARIANTS}
        self.confidences: dict[str, dict[str, np.ndarray]] = {}  # {variant: {branch: (N,)}}, set by finish()
        self.silence_embeddings: dict[str, torch.Tensor] | None = None  # {"a" | "b": (1, D)}
        self.noise_embeddings: dict[int, dict[str, torch.Tensor]] = {}  # pool clip -> {"a" | "b": (D,)}

    def _check_factorised(self, output, inputs: Mapping[str, torch.Tensor]) -> None:
        """The checks pair visual features with other audio embeddings: make sure the model's maps are that pairing."""
        audio = {"a": output.audio_embeds_a, "b": output.audio_embeds_b}
        rebuilt = paired_maps(self.model, {"a": output.visual_features_a, "b": output.visual_features_b}, audio)
        alone = audio_embeddings(self.model, {k: inputs[k][:2] for k in AUDIO_INPUTS})
        same = all(torch.allclose(rebuilt[b], getattr(output, field).float(), rtol=1e-4, atol=1e-5)
                   for b, field in BRANCHES.items())
        same &= all(torch.allclose(alone[b], audio[b][:2], rtol=1e-4, atol=1e-5) for b in audio)
        if not same:
            raise ValueError("listening checks pair each image's visual features with other clips' audio embeddings; "
                             "this model's maps are not sigmoid(w <visual_features, audio_embeds> + b) of its outputs")

    def _negative_embeddings(self, ids: Sequence[str], device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
        """``{"silence" | "noise": {"a" | "b": (k, D)}}`` for the scenes ``ids``; the audio encoders run once for
        silence and once per noise clip of the pool (when a scene first needs it)."""
        clips = [noise_clip_index(i, self.settings.noise_clips) for i in ids]
        missing = sorted(set(clips) - set(self.noise_embeddings))
        if self.silence_embeddings is None:
            silence = negative_audio_inputs(self.processor, self.settings)
            self.silence_embeddings = audio_embeddings(self.model, {k: v.to(device) for k, v in silence.items()})
        if missing:
            noise = negative_audio_inputs(self.processor, self.settings, missing)
            noise = audio_embeddings(self.model, {k: v.to(device) for k, v in noise.items()})
            self.noise_embeddings.update({k: {b: e[row] for b, e in noise.items()} for row, k in enumerate(missing)})
        return {"silence": {b: e.expand(len(ids), -1) for b, e in self.silence_embeddings.items()},
                "noise": {b: torch.stack([self.noise_embeddings[k][b] for k in clips]) for b in ("a", "b")}}

    def add(self, output, inputs: Mapping[str, torch.Tensor], ids: Sequence[str], keep: list[int],
            gts: torch.Tensor) -> None:
        """One batch: ``output`` of the model on ``inputs``; ``keep`` the scored rows, ``gts`` their (k, 224, 224)."""
        if self.silence_embeddings is None:
            self._check_factorised(output, inputs)
        visual = {"a": output.visual_features_a[keep], "b": output.visual_features_b[keep]}
        for branch, field in BRANCHES.items():
            self.maps["true"][branch].append(getattr(output, field)[keep].float().cpu())
        negatives = self._negative_embeddings(ids, inputs["audio_waveform"].device)
        for variant, audio in negatives.items():
            for branch, maps in paired_maps(self.model, visual, audio).items():
                maps = maps.float().cpu()
                self.scores[variant][branch].append(per_sample_ciou(maps, gts))
                self.maps[variant][branch].append(maps)
        for branch in ("a", "b"):
            self.visual[branch].append(visual[branch].float().cpu())
            self.audio[branch].append(getattr(output, f"audio_embeds_{branch}")[keep].float().cpu())
        doubled = gts.float() * 2  # the protocol's ground truths hold 0, 0.5 and 1: kept as uint8 2 G
        exact = torch.equal(doubled, doubled.round()) and bool(((doubled >= 0) & (doubled <= 255)).all())
        self.gts.append(doubled.to(torch.uint8) if exact else doubled)

    def _score_swapped(self, donors: np.ndarray, chunk: int = 64) -> None:
        """Score each scene's image with its donor's sound (visual features and embeddings kept by :meth:`add`)."""
        visual = {b: torch.cat(v) for b, v in self.visual.items()}
        audio = {b: torch.cat(v) for b, v in self.audio.items()}
        doubled_gts = torch.cat(self.gts)  # 2 G: uint8, or float32 if some batch held other values
        device = next(self.model.parameters()).device
        for start in range(0, len(donors), chunk):
            rows = slice(start, start + chunk)
            pairs = paired_maps(self.model, {b: v[rows].to(device) for b, v in visual.items()},
                                {b: e[donors[rows]].to(device) for b, e in audio.items()})
            truth = doubled_gts[rows].float() / 2
            for branch, maps in pairs.items():
                maps = maps.float().cpu()
                self.scores["swapped"][branch].append(per_sample_ciou(maps, truth))
                self.maps["swapped"][branch].append(maps)

    def finish(self, ids: list[str], labels: list[str], true_scores: Mapping[str, np.ndarray],
               objects: Mapping[str, Sequence[Mapping] | None] | None) -> dict[str, Any]:
        """The ``listening`` entry of the result (see :func:`evaluate_model`)."""
        per_scene: dict[str, list] = {"id": ids, "label": labels}
        rule = "not run: a single scene"
        if len(ids) > 1:
            donors, rule = swap_permutation(labels, self.settings.seed)
            self._score_swapped(donors)
            per_scene["swap_donor"] = [ids[j] for j in donors]
        per_scene["noise_clip"] = [noise_clip_index(i, self.settings.noise_clips) for i in ids]
        scores = {"true": dict(true_scores)}
        scores.update({v: {b: np.concatenate(s) for b, s in per.items()} for v, per in self.scores.items() if per["a"]})
        metrics = {v: {b: summarize_ciou(s) for b, s in per.items()} for v, per in scores.items()}
        variants = list(metrics)  # "swapped" needs two scenes
        self.confidences = {v: _confidences(self.maps[v]) for v in variants}
        for variant in variants:
            for branch in BRANCHES:
                per_scene[f"ciou_{variant}_{branch}"] = scores[variant][branch].tolist()
                per_scene[f"confidence_{variant}_{branch}"] = self.confidences[variant][branch].tolist()
        listening: dict[str, Any] = {
            "num_scenes": len(ids), "metrics": metrics, "drops": listening_drops(metrics),
            "extended": extended_rows(self.confidences, true_scores), "extended_protocol": dict(EXTENDED_PROTOCOL),
            "swap": {"rule": rule, "seed": self.settings.seed},
            "noise": {"color": self.settings.noise_color, "rms": self.settings.noise_rms,
                      "clips": self.settings.noise_clips, "seed": self.settings.seed},
            "selection": None,
        }
        scene_objects = [(objects or {}).get(i) for i in ids]
        picks = {(v, b): select_objects(torch.cat(self.maps[v][b]), scene_objects)
                 for v in variants for b in BRANCHES} if any(scene_objects) else {}
        chance = next(iter(picks.values()))["chance"] if picks else np.full(len(ids), np.nan)
        if not np.isnan(chance).all():  # some scene lists a sounding and a silent object
            selection = {v: {b: summarize_selection(picks[v, b]["score"], chance) for b in BRANCHES} for v in variants}
            listening["selection"] = {"chance": selection["true"]["fused"]["chance"],
                                      "num_scenes": selection["true"]["fused"]["num_scenes"], "variants": selection}
            per_scene["num_objects"] = [len(o or []) for o in scene_objects]
            per_scene["chance"] = chance.tolist()
            for (variant, branch), picked in picks.items():
                per_scene[f"selected_{variant}_{branch}"] = picked["selected"].tolist()
                per_scene[f"correct_{variant}_{branch}"] = picked["score"].tolist()
        listening["per_scene"] = per_scene
        return listening


def save_per_scene_scores(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write the per-scene scores of an evaluation to a CSV file, one row per scene, and return its path.

    Columns: ``id``, ``label``, ``gt_area`` (ground-truth area at 224 px, for the box-size subsets), ``ciou_{branch}``
    and ``confidence_{branch}`` (:func:`xpl_hf.maps.branch_confidences`) for branch ``a`` / ``b`` / ``fused``; with the
    listening checks instead ``swap_donor`` (the id whose sound was used), ``noise_clip``, ``ciou_{variant}_{branch}``
    and ``confidence_{variant}_{branch}`` for variant ``true`` / ``swapped`` / ``silence`` / ``noise``, and, where
    scenes list their objects, ``num_objects``, ``chance``,
    ``selected_{variant}_{branch}`` (index of the best object in the scene's ``objects``; -1 where the scene takes no
    part) and ``correct_{variant}_{branch}`` (1, 0, or s / k on a k-way tie; empty where the scene takes no part).
    Floats are written with Python's shortest round-trip repr (exact).
    """
    listening = result.get("listening") or {}
    columns = dict(listening.get("per_scene") or {})
    if not columns:
        per_sample = result["per_sample"]
        columns = {"id": per_sample["ids"], "label": per_sample["labels"], "gt_area": per_sample["gt_area"],
                   **{f"{kind}_{b}": per_sample[f"{kind}_{b}"] for kind in ("ciou", "confidence") for b in BRANCHES}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(columns[name] for name in names)):
            writer.writerow(["" if isinstance(v, float) and v != v else v for v in row])  # NaN -> empty
    return path


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
    listening: bool | ListeningSettings = False,
    objects: Mapping[str, Sequence[Mapping[str, Any]] | None] | None = None,
) -> dict[str, Any]:
    """Run an :class:`xpl_hf.XPLModel` over an evaluation set and compute cIoU / AUC for branch A, B and fused.

    Args:
        model: an ``XPLModel`` (anything returning ``maps_a``, ``maps_b``, ``maps`` of shape (B, h, w), the branch
            maps in [0, 1] as the confidences need). It is put in eval mode for the run and its training mode is
            restored afterwards.
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
        listening: also run the listening checks of :mod:`xpl_hf.metrics.listening` (``True`` or a
            :class:`ListeningSettings`): every scene scored with a swapped, a silent and a noise sound, and object
            selection where scenes list their objects. Needs an ``XPLModel``; the image encoders still run once.
        objects: ``{id: objects}`` (each a list of ``{"box", "label", "sounding"}``) for object selection; read from
            the dataset's ``objects`` column when ``data`` is a dataset and this is ``None``.

    Unlabeled rows (``is_labeled`` False) are not scored; they are counted in ``num_unlabeled_skipped``.

    Returns:
        a dict with
        ``metrics``: ``{"a" | "b" | "fused": {"ciou", "auc", "mean_ciou"}, "num_samples"}``;
        ``summary``: flat ``{"fused/ciou": ..., "a/auc": ..., ...}`` (for loggers);
        ``per_label``: ``{label: same structure as metrics}`` (empty when there are no labels);
        ``subsets``: ``{name: {..., "missing": int, "sizes"}}`` (with ``listening`` also ``"extended"``, as below);
        ``sizes``: cIoU / AUC per box-size subset, ``{"small" | "medium" | "large" | "huge": same structure as
        metrics}`` (:func:`size_summaries`);
        ``per_sample``: ``{"ids", "labels", "ciou_a", "ciou_b", "ciou_fused", "confidence_a", "confidence_b",
        "confidence_fused", "gt_area"}`` (lists, input order; confidences: :func:`xpl_hf.maps.branch_confidences`);
        ``num_unlabeled_skipped``, ``protocol`` (:data:`PROTOCOL`) and, with ``keep_maps``,
        ``maps``: ``{"a" | "b" | "fused": np.float32 (N, h, w)}``; with ``listening``, ``listening``:
        ``{"num_scenes", "metrics": {variant: {branch: {"ciou", "auc", "mean_ciou"}}}`` for variant ``true`` /
        ``swapped`` / ``silence`` / ``noise``, ``"drops": {variant: {branch: {"ciou", "auc"}}}`` (true minus
        variant), ``"selection"``: ``None`` or ``{"chance", "num_scenes", "variants": {variant: {branch:
        {"accuracy", "chance", "num_scenes"}}}}`` (percentages), ``"swap"``, ``"noise"`` (the settings),
        ``"extended"``: ``{"swapped" | "silence" | "noise": {branch: {"ap50", "max_f1_50", "ap75", ...}}}`` (the
        extended protocol with those negatives: :func:`xpl_hf.metrics.extended.extended_protocol`),
        ``"extended_protocol"`` (its definitions), ``"sizes"`` (the ``sizes`` above) and ``"per_scene"`` (columns,
        see :func:`save_per_scene_scores`)}``; :func:`format_listening_table` prints it.
    """
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    if hasattr(data, "column_names") and hasattr(data, "features"):  # a datasets.Dataset
        if max_samples is not None and hasattr(data, "select"):
            data = data.select(range(min(max_samples, len(data))))
        if listening and objects is None:
            objects = objects_by_id(data)
        data = _default_loader(data, processor, batch_size, num_workers)
    run = None
    if listening:
        run = ListeningRun(model, processor, listening if isinstance(listening, ListeningSettings)
                           else ListeningSettings())
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
    probability_maps: dict[str, list[torch.Tensor]] = {"a": [], "b": []}  # for the confidences
    areas: list[np.ndarray] = []
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
            inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if batch.get(k) is not None}
            output = model(**inputs)
            gts = torch.as_tensor(batch["gt_maps"])[keep]
            for branch, field in BRANCHES.items():
                branch_maps = getattr(output, field).detach().float().cpu()[keep]
                scores[branch].append(per_sample_ciou(branch_maps, gts))
                if branch in probability_maps:
                    probability_maps[branch].append(branch_maps)
                if keep_maps:
                    maps[branch].append(branch_maps.numpy())
            areas.append(ground_truth_areas(gts))
            if run is not None:
                run.add(output, inputs, [str(batch["ids"][i]) for i in keep], keep, gts)
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
    confidences = _confidences(probability_maps)
    area = np.concatenate(areas)
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
    subset_masks = {}
    for name, subset_ids in (subsets or {}).items():
        wanted = set(map(str, subset_ids))
        mask = subset_masks[name] = np.fromiter((i in wanted for i in ids), dtype=bool, count=len(ids))
        entry: dict[str, Any] = {"num_samples": int(mask.sum()), "missing": len(wanted - set(id_array[mask]))}
        if mask.any():
            entry.update(_branch_summaries(per_branch, mask))
            entry["sizes"] = size_summaries({b: s[mask] for b, s in per_branch.items()}, area[mask])
        result["subsets"][name] = entry
    result["sizes"] = size_summaries(per_branch, area)

    result["per_sample"] = {
        "ids": ids,
        "labels": labels,
        **{f"ciou_{branch}": values.tolist() for branch, values in per_branch.items()},
        **{f"confidence_{branch}": values.tolist() for branch, values in confidences.items()},
        "gt_area": area.tolist(),
    }
    result["num_unlabeled_skipped"] = num_unlabeled
    result["protocol"] = dict(PROTOCOL)
    if keep_maps:
        result["maps"] = {branch: np.concatenate(values) for branch, values in maps.items()}
    if run is not None:
        model.eval()
        try:
            result["listening"] = run.finish(ids, labels, per_branch, objects)
        finally:
            model.train(was_training)
        listening_entry = result["listening"]
        listening_entry["sizes"] = result["sizes"]  # beside the listening figures in tables, cards, results files
        listening_entry["per_scene"] = {"id": ids, "label": labels, "gt_area": area.tolist(),
                                        **listening_entry["per_scene"]}
        for name, mask in subset_masks.items():  # heard / unheard: the same rows on each subset's frames
            if mask.any():
                result["subsets"][name]["extended"] = extended_rows(run.confidences, per_branch, mask)
        result["summary"].update(listening_summary(result["listening"]))
    return result


def listening_summary(listening: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``{"listening/swapped/fused/ciou": ..., "listening/selection/true/fused": ..., ...}`` (for loggers)."""
    flat = {f"listening/{variant}/{branch}/{name}": value
            for variant, per_branch in listening["metrics"].items() if variant != "true"
            for branch, values in per_branch.items() for name, value in values.items() if name != "mean_ciou"}
    flat.update({f"listening/drop_{variant}/{branch}/{name}": value
                 for variant, per_branch in listening["drops"].items()
                 for branch, values in per_branch.items() for name, value in values.items()})
    flat.update({f"extended/{variant}/{branch}/{name}": values[name]
                 for variant, per_branch in listening.get("extended", {}).items()
                 for branch, values in per_branch.items()
                 for name in ("ap50", "max_f1_50", "roc_auc") if name in values})
    if listening["selection"]:
        flat["listening/selection/chance"] = listening["selection"]["chance"]
        flat.update({f"listening/selection/{variant}/{branch}": values["accuracy"]
                     for variant, per_branch in listening["selection"]["variants"].items()
                     for branch, values in per_branch.items()})
    return flat
