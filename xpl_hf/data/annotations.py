"""Annotation files of the public benchmarks: Flickr-SoundNet's XML boxes and the split id lists.

The boxes they yield follow the dataset schema (normalised to [0, 1]); turning boxes into a ground-truth map is the
protocol's job (:mod:`xpl_hf.metrics.ground_truth`).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET

FLICKR_ANNOTATION_SIZE = 256
"""Flickr-SoundNet annotations are given in coordinates of a 256 x 256 image."""


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
        normalize: divide by 256 (the annotation image size) so the boxes follow the dataset schema (the
            ``"flickr"`` rule of :func:`xpl_hf.metrics.ground_truth.ground_truth_map`); ``False`` returns the raw
            256-px coordinates.

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
