"""Per-sample transforms and the collate function that turn rows of the xpl-hf schema into XPL batches.

Both branches' inputs come from :class:`xpl_hf.XPLProcessor`'s per-sample API (``load_image``, ``image_to_tensor``,
``audio_features``), so training, evaluation and inference preprocess identically.

Augmentation (training only): each branch gets its own, independently drawn
:class:`~xpl_hf.data.augment.ColorRandAugment` -- the colour operations of RandAugment, with no geometric transform,
so maps stay aligned with boxes and pseudo-labels. The image is resized to the model size first and augmented after
(cheaper; colour operations commute with resizing up to rounding). Evaluation applies no augmentation and both
branches share one tensor.

Frames: a row of a video converted with ``--frames_per_clip K`` carries K frames of its clip in ``frames``; training
takes one of them per visit, drawn with torch's random generator (seeded by the training seed; in DataLoader workers
by the worker's seed), so each epoch may see another moment of the clip. Evaluation always uses ``image``, the
protocol's frame.

Bad samples (corrupt or truncated image, unreadable / empty / NaN audio, malformed boxes): with
``on_bad_sample="skip"`` (default) the sample is dropped from its batch with a warning that names its id and the
problem, and counted (``collator.num_skipped``, ``collator.skipped``; per DataLoader worker process); with
``on_bad_sample="raise"`` (strict mode) a :class:`BadSampleError` naming the id and the problem is raised. Either
way a training loader never dies on a bad sample without naming it. A batch whose every sample is bad collates
to ``None`` in skip mode: skip it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..metrics.ground_truth import ground_truth_map
from ..metrics.protocol import EVAL_SIZE
from .augment import GEOMETRIC_OPS, ColorRandAugment  # noqa: F401  (GEOMETRIC_OPS: former import place)
from .decoding import decode_audio
from .schema import GT_RULES

logger = logging.getLogger(__name__)

GT_SIZE = EVAL_SIZE
"""Side of the ground-truth maps in a batch (the evaluation protocol's grid)."""


class BadSampleError(ValueError):
    """A sample that cannot be turned into model inputs; the message names its id and the problem."""


def _boxes_list(value: Any) -> list:
    if value is None:
        return []
    return [list(b) for b in value]


class XPLSampleTransform:
    """One row -> both branches' inputs (no batching).

    Args:
        processor: an :class:`xpl_hf.XPLProcessor`.
        train: draw an independent :class:`ColorRandAugment` per branch (``True``) or none (``False``).
        num_ops, magnitude: RandAugment parameters for training.
        gt_size: side of the ground-truth maps (224 = the protocol's grid).

    Returns (``__call__``): a dict with ``id``, ``pixel_values`` (branch A's view), ``pixel_values_b`` (3, S, S),
    ``audio_log_mel`` (N, 96, 64), ``audio_waveform`` (L,), ``gt_map`` (gt_size, gt_size) float32 (``None`` for an
    unlabelled row: the batch holds zeros), ``is_labeled``, ``label`` and, when the row has ``true_boxes``,
    ``true_gt_map``. Raises :class:`BadSampleError` naming the sample.
    """

    def __init__(self, processor, train: bool = True, num_ops: int = 2, magnitude: int = 9, gt_size: int = GT_SIZE):
        self.processor = processor
        self.train = train
        self.augment = ColorRandAugment(num_ops=num_ops, magnitude=magnitude) if train else None
        self.gt_size = gt_size

    def _gt(self, boxes, rule: str) -> np.ndarray:
        return ground_truth_map(boxes, rule, size=self.gt_size)

    def __call__(self, example: dict[str, Any], pixel_out: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> dict[str, Any]:
        """``pixel_out``: optional (S, S, 3) float32 tensors (rows of the collator's batch) to write the views into."""
        sample_id = str(example.get("id", "<no id>"))
        try:
            return self._transform(example, sample_id, pixel_out)
        except BadSampleError:
            raise
        except (ValueError, OSError, RuntimeError, TypeError, KeyError) as err:
            raise BadSampleError(f"sample {sample_id!r}: {err}") from err

    def _frame(self, example: dict[str, Any]) -> Any:
        """The stored frame to use: ``image``, or in training one of ``frames`` (when the row has some), drawn
        with torch's generator."""
        frames = example.get("frames") if self.train else None
        if not frames:
            return example["image"]
        return frames[int(torch.randint(len(frames), ()))]

    def _transform(self, example: dict[str, Any], sample_id: str,
                   pixel_out: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, Any]:
        proc = self.processor
        size = proc.image_size
        out_a, out_b = pixel_out if pixel_out is not None else (None, None)
        # The processor's own rule (xpl_hf.image), with the decode-size hint its inference path uses.
        image = proc.load_image(self._frame(example), target_size=size)
        if image.size != (size, size):
            image = image.resize((size, size), resample=2)  # PIL.Image.BILINEAR, as image_to_tensor
        if self.train:
            pixel_a = proc.image_to_tensor(self.augment(image), out=out_a)
            pixel_b = proc.image_to_tensor(self.augment(image), out=out_b)
        else:
            pixel_a = pixel_b = proc.image_to_tensor(image, out=out_a)
        waveform, rate = decode_audio(example["audio"])
        audio = proc.audio_features(waveform, rate)
        rule = example.get("gt_rule") or "none"
        if rule not in GT_RULES:
            raise BadSampleError(f"sample {sample_id!r}: gt_rule must be one of {GT_RULES}, got {rule!r}")
        boxes = _boxes_list(example.get("boxes"))
        is_labeled = rule != "none"
        out = {
            "id": sample_id,
            "pixel_values": pixel_a,
            "pixel_values_b": pixel_b,
            "audio_log_mel": audio["audio_log_mel"],
            "audio_waveform": audio["audio_waveform"],
            "gt_map": self._gt(boxes, rule) if is_labeled else None,
            "is_labeled": is_labeled,
            "label": example.get("label") or "",
        }
        if example.get("true_boxes") is not None:  # diagnostics of the unlabelled split, never a training target
            out["true_gt_map"] = self._gt(_boxes_list(example["true_boxes"]), example.get("true_gt_rule") or "union")
        return out


class XPLCollator:
    """Collate function: a list of rows -> the batch dict of the contract.

    Keys: the model's argument names, so that ``model(**batch)`` works: ``pixel_values`` (branch A) /
    ``pixel_values_b`` (B, 3, S, S) (training: independent colour augmentations; evaluation: the same tensor),
    ``audio_log_mel`` (B, N, 96, 64), ``audio_waveform`` (B, L); and for the losses and metrics: ``ids`` (list[str]),
    ``gt_maps`` (B, 224, 224) float (zeros for unlabeled rows), ``is_labeled`` (B,) bool, ``labels`` (list[str]) and,
    when rows carry ``true_boxes`` (synthetic unlabeled split, diagnostics only), ``true_gt_maps`` (B, 224, 224).

    Args:
        processor: an :class:`xpl_hf.XPLProcessor`.
        train: training (augmented) or evaluation transform.
        on_bad_sample: ``"skip"`` (warn with the id, count, drop from the batch) or ``"raise"`` (strict).
        num_ops, magnitude, gt_size: see :class:`XPLSampleTransform`.

    Use as ``DataLoader(dataset, batch_size=..., collate_fn=XPLCollator(processor, train=True))``.
    """

    def __init__(
        self,
        processor,
        train: bool = True,
        on_bad_sample: str = "skip",
        num_ops: int = 2,
        magnitude: int = 9,
        gt_size: int = GT_SIZE,
        max_recorded: int = 1000,
    ):
        if on_bad_sample not in ("skip", "raise"):
            raise ValueError(f"on_bad_sample must be 'skip' or 'raise', got {on_bad_sample!r}")
        self.transform = XPLSampleTransform(
            processor, train=train, num_ops=num_ops, magnitude=magnitude, gt_size=gt_size
        )
        self.on_bad_sample = on_bad_sample
        self.num_skipped = 0
        self.skipped: list[tuple[str, str]] = []  # (id, problem), the first `max_recorded`
        self.max_recorded = max_recorded

    @property
    def train(self) -> bool:
        return self.transform.train

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        size = self.transform.processor.image_size
        # Each view is written straight into its row of the batch (no per-sample tensor, no stacking copy).
        pixels = [_batch_empty(len(examples), size, size, 3) for _ in range(2 if self.train else 1)]
        samples = []
        for example in examples:
            row = len(samples)
            try:
                samples.append(self.transform(example, pixel_out=(pixels[0][row], pixels[-1][row])))
            except BadSampleError as err:
                if self.on_bad_sample == "raise":
                    raise
                self.num_skipped += 1
                if len(self.skipped) < self.max_recorded:
                    self.skipped.append((str(example.get("id", "<no id>")), str(err)))
                logger.warning("skipping bad sample (%d skipped so far): %s", self.num_skipped, err)
        if not samples:
            return None
        n = len(samples)
        return collate_samples(samples, same_views=not self.train, pixels=(pixels[0][:n], pixels[-1][:n]),
                               gt_size=self.transform.gt_size)


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """(3, S, S) tensors -> (B, 3, S, S) in channels-last layout.

    The processor's image tensors are channels-last views of (S, S, 3) data, so stacking those (a plain copy) and
    permuting back is cheaper than a transposing copy into NCHW, and the convolutions want channels-last anyway.
    """
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)


def _batch_empty(*shape: int) -> torch.Tensor:
    """An uninitialised float32 batch tensor. Inside a DataLoader worker it is allocated in shared memory, as
    ``torch.utils.data.default_collate`` does, so that handing the batch to the training process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape)
    storage = torch.empty(0)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0).new(storage).resize_(shape)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(tensors), out=_batch_empty(len(tensors), *tensors[0].shape))


def _gt_maps(maps: Sequence[np.ndarray | None], size: int) -> torch.Tensor:
    """(size, size) maps, None for zeros -> (B, size, size) float32."""
    out = _batch_empty(len(maps), size, size)
    for i, m in enumerate(maps):
        if m is None:
            out[i].zero_()
        else:
            out[i] = torch.from_numpy(m)
    return out


def collate_samples(samples: Sequence[dict[str, Any]], same_views: bool = False,
                    pixels: tuple[torch.Tensor, torch.Tensor] | None = None, gt_size: int = GT_SIZE) -> dict[str, Any]:
    """Stack outputs of :class:`XPLSampleTransform` into a batch dict (see :class:`XPLCollator`).

    Args:
        same_views: branch B gets branch A's tensor (evaluation).
        pixels: the views already written into (B, S, S, 3) batch tensors by the transform (the collator's path,
            no stacking copy); the batch holds them as (B, 3, S, S) channels-last views.
        gt_size: side of the ground-truth maps (rows without a map get zeros).
    """
    if pixels is not None:
        pixel_a = pixels[0].permute(0, 3, 1, 2)
        pixel_b = pixel_a if same_views else pixels[1].permute(0, 3, 1, 2)
    else:
        pixel_a = stack_images([s["pixel_values"] for s in samples])
        pixel_b = pixel_a if same_views else stack_images([s["pixel_values_b"] for s in samples])
    batch = {
        "ids": [s["id"] for s in samples],
        "pixel_values": pixel_a,
        "pixel_values_b": pixel_b,
        "audio_log_mel": _stack([s["audio_log_mel"] for s in samples]),
        "audio_waveform": _stack([s["audio_waveform"] for s in samples]),
        "gt_maps": _gt_maps([s["gt_map"] for s in samples], gt_size),
        "is_labeled": torch.tensor([s["is_labeled"] for s in samples], dtype=torch.bool),
        "labels": [s["label"] for s in samples],
    }
    if any("true_gt_map" in s for s in samples):  # rows without true boxes: their own ground truth
        batch["true_gt_maps"] = _gt_maps([s.get("true_gt_map", s["gt_map"]) for s in samples], gt_size)
    return batch
