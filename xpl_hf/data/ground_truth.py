"""Ground truth of the evaluation protocol: box -> map rules, annotation parsers, split id lists.

Ground truth (224 x 224, float32), the community's two rules:

- ``"union"`` (VGG-SS): each normalised box ``b = [x0, y0, x1, y1]`` becomes ``(clip(b, 0, 1) * 224).astype(int)``
  and ``G[y0:y1, x0:x1] = 1`` (union of the boxes);
- ``"flickr"`` (Flickr-SoundNet): the boxes of all annotators, in 256-px coordinates ``v``, become
  ``int(224 * v / 256)``; ``G`` is the sum of the filled boxes ``[ymin:ymax, xmin:xmax]``, then ``G / 2`` clipped
  to 1 (so one annotator gives 0.5, two or more give 1). Boxes are stored normalised (``v / 256``, exact in
  floating point), and ``int(224 * (v / 256)) == int(224 * v / 256)`` for every integer ``v``;
- ``"none"``: an unlabelled sample, all zeros.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from ..metrics.protocol import EVAL_SIZE
from .schema import GT_RULES

FLICKR_ANNOTATION_SIZE = 256
"""Flickr-SoundNet annotations are given in coordinates of a 256 x 256 image."""


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
