"""Frozen trunks computed once: each clip's trunk stems, cached with `datasets` and reused across runs.

When the trunks stay frozen below their top stages (:class:`xpl_hf.modeling_xpl.TopStages`), a stem's output for a
given input never changes. :func:`compute_trunk_features` runs every clip of a split through the stems once —
``views`` colour-augmented views of each training frame (the recipe's :class:`~xpl_hf.data.augment.ColorRandAugment`,
drawn with a generator seeded by the run's seed and the clip's id), one clean view for validation and test — and
stores them as an Arrow file (``Dataset.map``) named by a fingerprint of everything they depend on: the model's
architecture and stem weights, the top stages, the processor's settings, the views, the seed, the split's role and
the data's own fingerprint (``Dataset._fingerprint``, which changes with its files). A second run with the same
fingerprint reads the file; any change computes anew (docs/training.md, "Frozen trunks computed once").

Training then reads batches of cached stems (:class:`FeatureBatches`: each branch draws its own view at each visit,
as the two models of the recipe see independent augmentations) and the same :class:`xpl_hf.trainer.TrainingStep`
runs :class:`~xpl_hf.modeling_xpl.XPLFromTrunkFeatures` on them; :func:`evaluate_features` scores validation maps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .data.augment import ColorRandAugment
from .data.transforms import BadSampleError, XPLSampleTransform
from .metrics.protocol import binarize_maps, ciou_scores, normalize_maps, summarize_ciou, upsample_maps
from .modeling_xpl import TopStages, XPLFromTrunkFeatures, XPLModel

logger = logging.getLogger(__name__)

__all__ = ["FEATURE_FORMAT", "features_fingerprint", "compute_trunk_features", "FeatureBatches",
           "evaluate_features", "default_cache_dir"]

FEATURE_FORMAT = 1
"""Version of the stored layout; part of every fingerprint, so a new layout never reads an old file."""


TRUNK_SETTINGS = ("image_backbone_a", "image_backbone_b", "audio_backbone_a", "audio_backbone_b", "vggish_fc_dim",
                  "image_size", "clip_seconds", "vggish_sample_rate", "soundnet_sample_rate")
"""The `XPLConfig` fields that shape the stems (the heads' fields, e.g. ``embed_dim``, do not)."""


def default_cache_dir() -> Path:
    """$XPL_HF_CACHE/trunk_features, else ~/.cache/xpl_hf/trunk_features."""
    return Path(os.environ.get("XPL_HF_CACHE", Path.home() / ".cache" / "xpl_hf")) / "trunk_features"


def _stem_state(trunk, top: int) -> dict[str, torch.Tensor]:
    """The weights of ``trunk`` below its top ``top`` stages (parameters and buffers), by name."""
    top_tensors = {t.data_ptr() for stage in trunk.top_stages(top) for t in stage.state_dict().values()}
    return {name: t for name, t in trunk.state_dict().items() if t.data_ptr() not in top_tensors}


def _shares_image_stem(model: XPLModel, top: TopStages) -> bool:
    """Whether both branches' image stems compute the same function (same trunk, same stem weights): then one
    cached column serves both."""
    a, b = (_stem_state(branch.image_encoder, top.image) for branch in (model.branch_a, model.branch_b))
    return (type(model.branch_a.image_encoder) is type(model.branch_b.image_encoder) and a.keys() == b.keys()
            and all(torch.equal(a[k], b[k]) for k in a))


def _stem_digest(trunk, top: int, digest) -> None:
    """Feed the weights of ``trunk`` below its top ``top`` stages into ``digest``."""
    for name, tensor in _stem_state(trunk, top).items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def features_fingerprint(model: XPLModel, processor, top: TopStages, *, data_fingerprint: str, role: str,
                         views: int, seed: int) -> str:
    """A name for one split's cached stems: it changes when anything they depend on changes.

    Args:
        model: the `XPLModel` whose stems are cached (its trunk settings, :data:`TRUNK_SETTINGS`, and stem weights
            count; top stages and heads do not).
        processor: its `XPLProcessor` (image size, audio settings).
        top: the `TopStages` that decide where each stem ends.
        data_fingerprint: the split's own fingerprint (``Dataset._fingerprint``).
        role: ``"labeled"``, ``"unlabeled"`` or an evaluation split's role (labels are kept or dropped by role).
        views: augmented views per clip (0: one clean view).
        seed: the seed of the augmentation draws.
    """
    digest = hashlib.blake2b(digest_size=16)
    trunk_settings = {key: getattr(model.config, key) for key in TRUNK_SETTINGS}
    settings = {"format": FEATURE_FORMAT, "trunks": trunk_settings, "top": vars(top),
                "processor": processor.to_dict() if hasattr(processor, "to_dict") else repr(processor),
                "data": data_fingerprint, "role": role, "views": views, "seed": seed}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for branch, audio_top in ((model.branch_a, top.audio_a), (model.branch_b, top.audio_b)):
        _stem_digest(branch.image_encoder, top.image, digest)
        _stem_digest(branch.audio_encoder, audio_top, digest)
    return digest.hexdigest()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Torch's global generator seeded for the block and restored after (ColorRandAugment draws from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _clip_seed(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{sample_id}".encode(), digest_size=8).digest(), "little") >> 1


@torch.inference_mode()
def _stems(model: XPLModel, top: TopStages, shared_image: bool, rows: list[dict], transform: XPLSampleTransform,
           views: int, seed: int, labeled: bool, on_bad_sample: str, image_dtype: torch.dtype) -> dict[str, list]:
    """One batch of rows -> their stems and targets (the ``Dataset.map`` function; bad rows dropped or raised)."""
    processor = transform.processor
    augment = ColorRandAugment(num_ops=2, magnitude=9) if views else None
    samples, pixels = [], []
    for row in rows:
        try:
            sample = transform(row)
            if views:
                frames = row.get("frames") or [row["image"]]
                with _seeded(_clip_seed(seed, sample["id"])):
                    for v in range(views):  # view v of a multi-frame clip uses frame v (cycling)
                        image = processor.load_image(frames[v % len(frames)], target_size=processor.image_size)
                        if image.size != (processor.image_size,) * 2:
                            image = image.resize((processor.image_size,) * 2, resample=2)
                        pixels.append(processor.image_to_tensor(augment(image)))
            else:
                pixels.append(sample["pixel_values"])
        except BadSampleError as err:
            if on_bad_sample == "raise":
                raise
            logger.warning(f"skipping a bad sample while caching trunk features: {err}")
            continue
        samples.append(sample)
    out: dict[str, list] = {"id": [s["id"] for s in samples]}
    if not samples:
        return {**out, **{key: [] for key in ("image", "audio_a", "audio_b", "is_labeled", "gt_map", "has_true_gt",
                                                "true_gt_map")}}
    count = max(views, 1)
    batch = torch.stack(pixels)  # (n * count, 3, S, S)
    for key, branch in (("image", model.branch_a), ("image_b", model.branch_b)):
        if key == "image_b" and shared_image:
            break
        stems = branch.image_encoder.forward_stem(batch, top.image).to(image_dtype)
        out[key] = list(stems.unflatten(0, (len(samples), count)).numpy())
    for key, branch, audio_top in (("audio_a", model.branch_a, top.audio_a), ("audio_b", model.branch_b, top.audio_b)):
        inputs = torch.stack([s[branch.audio_input_name] for s in samples])
        out[key] = list(branch.audio_encoder.forward_stem(inputs, audio_top).float().numpy())
    size = transform.gt_size
    empty = np.zeros((size, size), dtype=np.uint8)

    def truth(sample: dict) -> np.ndarray | None:  # the row's true map: its boxes, or true_boxes (synthetic)
        found = sample.get("true_gt_map") if sample.get("true_gt_map") is not None else (
            sample["gt_map"] if sample["is_labeled"] else None)
        return None if found is None else (found > 0.5).astype(np.uint8)

    out["is_labeled"] = [labeled and s["is_labeled"] for s in samples]
    out["gt_map"] = [truth(s) if labeled and s["is_labeled"] else empty for s in samples]
    out["has_true_gt"] = [truth(s) is not None for s in samples]
    out["true_gt_map"] = [empty if truth(s) is None else truth(s) for s in samples]
    return out


def _storage_dtype(stems: torch.Tensor) -> torch.dtype:
    """float16 (half the disk and memory) when a probe's image stems survive it to 0.1% of their scale, else
    float32 (a randomly initialised trunk's outputs can be far below float16's smallest normal number)."""
    scale = float(stems.abs().max())
    if scale == 0.0 or not 1e-2 < scale < 1e4:
        return torch.float32
    error = float((stems.half().float() - stems).abs().max())
    return torch.float16 if error <= 1e-3 * scale else torch.float32


def _arrow_features(example: dict[str, list]):
    """The `datasets.Features` of `_stems`' output, from one computed row (fixed-shape arrays read fast)."""
    from datasets import Array2D, Array3D, Array4D, Features, Sequence, Value

    arrays = {2: Array2D, 3: Array3D, 4: Array4D}
    features = {"id": Value("string"), "is_labeled": Value("bool"), "has_true_gt": Value("bool")}
    for key, values in example.items():
        if key in features:
            continue
        value = np.asarray(values[0])
        dtype = str(value.dtype)
        features[key] = (Sequence(Value(dtype), length=value.shape[0]) if value.ndim == 1
                         else arrays[value.ndim](shape=value.shape, dtype=dtype))
    return Features(features)


def compute_trunk_features(model: XPLModel, processor, dataset, *, top: TopStages, role: str, views: int = 0,
                           seed: int = 0, batch_size: int = 32, cache_dir: str | os.PathLike | None = None,
                           on_bad_sample: str = "skip"):
    """Every clip of ``dataset`` through the model's trunk stems once, cached on disk and reused.

    Args:
        model: the `XPLModel` (its trunks frozen below ``top``; eval-mode BatchNorm is used here).
        processor: its `XPLProcessor`.
        dataset: a `datasets.Dataset` in the xpl-hf schema (a split loaded eagerly).
        top: where each stem ends (`TopStages`).
        role: ``"labeled"`` (its boxes are targets), ``"unlabeled"`` (its boxes, if any, are never targets: they
            are kept as ``true_gt_map`` for diagnostics and the full-supervision ceiling only) or ``"evaluation"``.
        views: colour-augmented views per clip (training); 0 stores one clean view (evaluation).
        seed: the augmentation draws' seed (each clip's draws also depend on its id, not on its position).
        cache_dir: where the Arrow files live (default: :func:`default_cache_dir`).
        on_bad_sample: ``"skip"`` (warn naming the sample, drop it) or ``"raise"``.
    Returns:
        a `datasets.Dataset` with columns ``id``, ``image`` (n, V, C, h, w) float16 (and ``image_b`` when the
        branches' image stems differ), ``audio_a``, ``audio_b`` (the audio stems, float32), ``is_labeled``,
        ``gt_map`` (its training target) and ``true_gt_map`` (224, 224) uint8 with ``has_true_gt`` (diagnostics, the
        full-supervision ceiling and validation), formatted as numpy arrays in their stored dtypes (a batch converts
        only the views it uses); the file is ``.cache_files[0]``.
    """
    from datasets import Dataset

    model.eval()
    top = top.check(model)
    fingerprint = features_fingerprint(model, processor, top, data_fingerprint=dataset._fingerprint, role=role,
                                       views=views, seed=seed)
    folder = Path(cache_dir or default_cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fingerprint}.arrow"
    columns = ["image", "image_b", "audio_a", "audio_b", "is_labeled", "gt_map", "has_true_gt", "true_gt_map"]
    if path.exists():
        logger.info(f"Reusing the cached trunk features of {len(dataset)} {role} clips: {path}")
        features = Dataset.from_file(str(path))
    else:
        logger.info(f"Computing the trunk features of {len(dataset)} {role} clips once ({max(views, 1)} view(s) "
                    f"each) into {path}")
        shared = _shares_image_stem(model, top)
        transform = XPLSampleTransform(processor, train=False)
        image_dtype = torch.float32

        def stems(batch: dict[str, list]) -> dict[str, list]:
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            return _stems(model, top, shared, rows, transform, views, seed, role == "labeled", on_bad_sample,
                          image_dtype)

        probe = stems(dataset[:1])  # one row, in float32: its image stems decide the stored dtype
        image_dtype = _storage_dtype(torch.from_numpy(np.asarray(probe["image"][0])))
        stored = np.float16 if image_dtype == torch.float16 else np.float32
        probe.update({key: [np.asarray(probe[key][0]).astype(stored)] for key in ("image", "image_b") if key in probe})
        features = dataset.map(stems, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                               features=_arrow_features(probe), cache_file_name=str(path),
                               new_fingerprint=fingerprint, desc=f"trunk features ({role})",
                               load_from_cache_file=False)
    return features.with_format("numpy", columns=[c for c in columns if c in features.column_names],
                                output_all_columns=True)


class _StoredArrays:
    """Zero-copy numpy views of a fixed-shape array column of an Arrow-backed dataset, one per record batch (memory-
    mapped when the dataset is read from its cache file): a batch copies only the rows, and views, it takes."""

    def __init__(self, features, column: str):
        import pyarrow as pa

        feature = features.features[column]
        shape = feature.shape if hasattr(feature, "shape") else (feature.length,)  # ArrayND, or a fixed-length list
        self.starts, self.chunks = [], []
        start = 0
        for chunk in features.data.column(column).chunks:
            values = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
            for _ in shape:
                values = values.flatten()
            self.chunks.append(values.to_numpy(zero_copy_only=True).reshape(len(chunk), *shape))
            self.starts.append(start)
            start += len(chunk)

    def take(self, rows, second=None) -> np.ndarray:
        """``array[rows]`` (and ``array[rows, second]`` when ``second`` indexes the next axis per row)."""
        picked = []
        for n, row in enumerate(rows):
            c = int(np.searchsorted(self.starts, row, side="right")) - 1
            item = self.chunks[c][row - self.starts[c]]
            picked.append(item if second is None else item[second[n]])
        return np.stack(picked)


class FeatureBatches:
    """Batches of cached trunk stems in the layout :class:`XPLFromTrunkFeatures` and the training step read.

    Args:
        features: a split from :func:`compute_trunk_features`.
        seed: seeds the view draws; each batch's draws depend on the seed and the batch's ``key`` (its position in
            the run's data order), so a resumed run draws the same views.
    """

    ARRAYS = ("image", "image_b", "audio_a", "audio_b", "gt_map", "true_gt_map")

    def __init__(self, features, seed: int = 0):
        self.features, self.seed = features, seed
        self.arrays = {name: _StoredArrays(features, name) for name in self.ARRAYS if name in features.column_names}
        self.flags = features.select_columns(["id", "is_labeled", "has_true_gt"]).with_format("numpy")
        self.num_views = features.features["image"].shape[0]

    def __call__(self, indices, key=0, *, train: bool = True) -> dict:
        """The batch of rows ``indices``: ``image_features`` / ``image_features_b`` (B, C, h, w) float32, each
        branch's own view drawn at random when ``train`` (view 0 otherwise), ``audio_features_a`` / ``_b``,
        ``gt_maps`` (B, 224, 224) float32, ``is_labeled`` (B,) bool, ``ids``, and ``true_gt_maps`` (diagnostics)."""
        rows = [int(i) for i in indices]
        n = len(rows)
        if train and self.num_views > 1:
            g = torch.Generator().manual_seed(_clip_seed(self.seed, f"views/{key}"))
            pick = torch.randint(self.num_views, (2, n), generator=g).numpy()
        else:
            pick = np.zeros((2, n), dtype=np.int64)
        second = self.arrays.get("image_b", self.arrays["image"])
        flags = self.flags[rows]

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).float()

        batch = {"image_features": tensor(self.arrays["image"].take(rows, pick[0])),
                 "image_features_b": tensor(second.take(rows, pick[1])),
                 "audio_features_a": tensor(self.arrays["audio_a"].take(rows)),
                 "audio_features_b": tensor(self.arrays["audio_b"].take(rows)),
                 "gt_maps": tensor(self.arrays["gt_map"].take(rows)),
                 "is_labeled": torch.from_numpy(flags["is_labeled"].astype(bool)),
                 "ids": [str(i) for i in flags["id"]]}
        if bool(flags["has_true_gt"].all()):  # diagnostics and the full-supervision ceiling only
            batch["true_gt_maps"] = tensor(self.arrays["true_gt_map"].take(rows))
        return batch


@torch.no_grad()
def evaluate_features(model: XPLFromTrunkFeatures, features, batch_size: int = 64) -> dict[str, float]:
    """Validation on cached clean stems: CIoU / AUC (the evaluation protocol) of branch A, B and the fused map.

    Returns:
        ``{"a/ciou", "a/auc", "b/ciou", "b/auc", "fused/ciou", "fused/auc"}`` in percent (the keys of
        `xpl_hf.evaluation.evaluate_model`'s summary that model selection reads).
    """
    was_training = model.training
    model.eval()
    batches = FeatureBatches(features)
    scores: dict[str, list[np.ndarray]] = {"a": [], "b": [], "fused": []}
    for start in range(0, len(features), batch_size):
        batch = batches(range(start, min(len(features), start + batch_size)), train=False)
        if "true_gt_maps" not in batch:
            raise ValueError("validation rows without boxes cannot be scored (every validation row needs boxes)")
        out = model(**batch)
        truth = batch["true_gt_maps"]
        for key, maps in (("a", out.maps_a), ("b", out.maps_b), ("fused", out.maps)):
            scores[key].append(ciou_scores(binarize_maps(normalize_maps(upsample_maps(maps.float()))), truth).numpy())
    model.train(was_training)
    summary = {}
    for key, parts in scores.items():
        result = summarize_ciou(np.concatenate(parts))
        summary[f"{key}/ciou"], summary[f"{key}/auc"] = result["ciou"], result["auc"]
    return summary
