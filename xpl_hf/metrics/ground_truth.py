"""Ground truth of the evaluation protocol: the rules that turn a sample's boxes into its 224 x 224 map.

Ground truth (224 x 224, float32), the community's two rules:

- ``"union"`` (VGG-SS): each normalised box ``b = [x0, y0, x1, y1]`` becomes ``(clip(b, 0, 1) * 224).astype(int)``
  and ``G[y0:y1, x0:x1] = 1`` (union of the boxes);
- ``"flickr"`` (Flickr-SoundNet): the boxes of all annotators, in 256-px coordinates ``v``, become
  ``int(224 * v / 256)``; ``G`` is the sum of the filled boxes ``[ymin:ymax, xmin:xmax]``, then ``G / 2`` clipped
  to 1 (so one annotator gives 0.5, two or more give 1). Boxes are stored normalised (``v / 256``, exact in
  floating point), and ``int(224 * (v / 256)) == int(224 * v / 256)`` for every integer ``v``;
- ``"none"``: an unlabelled sample, all zeros.

Reading annotation files (Flickr XML, split id lists) is the data layer's job: :mod:`xpl_hf.data.annotations`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .protocol import EVAL_SIZE

GT_RULES = ("union", "flickr", "none")
"""The values of a sample's ``gt_rule``: how its boxes become a ground-truth map."""


def as_box_array(boxes: Any) -> np.ndarray:
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
    boxes = as_box_array(boxes)
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
