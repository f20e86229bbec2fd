"""The xpl-hf dataset schema and the validation rules every dataset goes through.

Every split of every dataset (Flickr-SoundNet, VGG-SS, a user folder, the synthetic benchmark) is stored with the
same :class:`datasets.Features`:

=========== ====================================== =====================================================
column      feature                                meaning
=========== ====================================== =====================================================
``id``      ``Value("string")``                    unique sample id (keys the pseudo-label bank)
``image``   ``Image()``                            the frame, encoded bytes (JPEG/PNG/...), decoded by PIL
``audio``   ``Audio(decode=False)``                encoded bytes of a WAV/FLAC/OGG file, decoded by soundfile
``boxes``   ``List(List(float32, length=4))``      ``[x0, y0, x1, y1]`` normalised to [0, 1]; empty if unlabeled
``gt_rule`` ``Value("string")``                    ``"union"`` (VGG-SS), ``"flickr"`` or ``"none"`` (unlabeled)
``label``   ``Value("string")``                    class name (may be empty)
=========== ====================================== =====================================================

Optional column ``objects`` (``List({"box": [4 x float32], "label": string, "sounding": bool})``): every visible
object of the scene, the sounding one(s) marked, for the object-selection check of
:mod:`xpl_hf.metrics.listening`; ``None`` or absent when unknown. :func:`check_objects` holds its rules.

The synthetic benchmark adds ``true_boxes`` (same type as ``boxes``) to **every** split, so that all its splits share
one feature set and ``datasets.load_dataset(folder)`` reads them together: the exact box of the sounding object in the
unlabeled split (diagnostics only, never used for training), ``None`` in the labeled and evaluation splits (their
``boxes`` already hold it).

Audio is stored undecoded on purpose: ``datasets`` 5 decodes ``Audio`` only through torchcodec + system FFmpeg,
so every reader here decodes the bytes with soundfile instead.

Box rules (:func:`clean_boxes`), applied by every converter and counted in a :class:`BoxReport`:

* a box that is not 4 finite numbers is dropped (``malformed``);
* ``inverted="reorder"`` (default, user folders): swapped corners are reordered (``reordered``), then coordinates are
  clipped to [0, 1] (``clipped``);
* ``inverted="drop"`` (VGG-SS, the community protocol): coordinates are clipped to [0, 1] first (``clipped``), then a
  box whose max corner lies before its min corner is dropped (``inverted_dropped``) -- the protocol's
  ``map[y0:y1, x0:x1] = 1`` fills nothing for such a box, so dropping it leaves the ground-truth map unchanged;
* a box of zero width or height after that is dropped (``zero_area``).

Where a split is loaded (:func:`xpl_hf.data.loading.check_boxes`, for splits written without a converter), a box with
a missing, NaN or infinite coordinate, or one outside [0, 1], is refused naming the row's id; swapped corners are
reordered (the ``"reorder"`` rule).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence

from datasets import Audio, Features, Image, List, Value

from ..metrics.ground_truth import GT_RULES

REQUIRED_COLUMNS = ("id", "image", "audio", "boxes", "gt_rule")
OPTIONAL_COLUMNS = ("label", "true_boxes", "objects")

BOXES_FEATURE = List(List(Value("float32"), length=4))
OBJECTS_FEATURE = List({"box": List(Value("float32"), length=4), "label": Value("string"), "sounding": Value("bool")})


class DataValidationError(ValueError):
    """Raised when a dataset or a sample does not follow the xpl-hf schema; the message names the problem."""


def xpl_features(with_true_boxes: bool = False, decode_image: bool = True, with_objects: bool = False) -> Features:
    """The xpl-hf schema as :class:`datasets.Features`.

    Args:
        with_true_boxes: add the diagnostic ``true_boxes`` column (every split of the synthetic benchmark).
        decode_image: ``Image(decode=...)``. Training loaders use ``False`` so that a corrupt image reaches the
            transform (which names the sample) instead of failing inside the dataset iterator.
        with_objects: add the optional ``objects`` column (every visible object: box, label, sounding).
    """
    features = {
        "id": Value("string"),
        "image": Image(decode=decode_image),
        "audio": Audio(decode=False),
        "boxes": BOXES_FEATURE,
        "gt_rule": Value("string"),
        "label": Value("string"),
    }
    if with_true_boxes:
        features["true_boxes"] = BOXES_FEATURE
    if with_objects:
        features["objects"] = OBJECTS_FEATURE
    return Features(features)


XPL_FEATURES = xpl_features()
"""The schema of every labeled / evaluation split."""

SYNTHETIC_FEATURES = xpl_features(with_true_boxes=True, with_objects=True)
"""The schema of every split of the synthetic benchmark (adds ``true_boxes``, ``None`` outside the unlabeled split, and
``objects``, every object of every scene)."""

COLUMN_DESCRIPTIONS = {
    "id": "unique sample id (keys the pseudo-label bank)",
    "image": "the video frame, encoded image bytes (JPEG/PNG), decoded by PIL",
    "audio": "encoded bytes of a WAV/FLAC/OGG file (`Audio(decode=False)`: decode with soundfile, no FFmpeg needed)",
    "boxes": "boxes of the sounding object(s), `[x0, y0, x1, y1]` normalised to [0, 1]; empty when unlabeled",
    "gt_rule": "how boxes become a ground-truth map: `union` (VGG-SS), `flickr` (sum of annotators' boxes / 2, "
               "clipped to 1) or `none` (unlabeled)",
    "label": "class name of the sounding object (may be empty)",
    "true_boxes": "diagnostics only: the hidden exact box of an unlabeled sample (never used for training); null in "
                  "splits whose `boxes` already hold it",
    "objects": "every visible object of the scene: `box` (`[x0, y0, x1, y1]` normalised), `label` and `sounding` "
               "(true for the object(s) making the sound); used by the object-selection check; null when unknown",
}
"""One line per column of the schema, for dataset cards and error messages."""


def check_columns(column_names: Iterable[str], *, where: str = "dataset", require_boxes: bool = True) -> None:
    """Raise :class:`DataValidationError` naming every required column that is missing.

    Args:
        column_names: the columns present.
        where: a name for the dataset/split, used in the message.
        require_boxes: labeled and evaluation splits need ``boxes`` and ``gt_rule``; an unlabeled split may lack them.
    """
    present = set(column_names)
    required = REQUIRED_COLUMNS if require_boxes else ("id", "image", "audio")
    missing = [c for c in required if c not in present]
    if missing:
        hint = " (a labeled split needs boxes and gt_rule)" if {"boxes", "gt_rule"} & set(missing) else ""
        raise DataValidationError(
            f"{where} is missing required column(s) {missing}{hint}; it has {sorted(present)}. "
            f"The xpl-hf schema is {list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS)} (see xpl_hf.data.schema)."
        )


def find_duplicate_ids(ids: Iterable[str]) -> dict[str, int]:
    """Return ``{id: count}`` for every id that occurs more than once."""
    counts = Counter(ids)
    return {k: v for k, v in counts.items() if v > 1}


def check_unique_ids(ids: Iterable[str], *, where: str = "dataset") -> None:
    """Raise :class:`DataValidationError` if ids repeat (the pseudo-label bank is keyed by id)."""
    dup = find_duplicate_ids(ids)
    if dup:
        shown = ", ".join(f"{k!r} x{v}" for k, v in list(dup.items())[:10])
        raise DataValidationError(f"{where} has {len(dup)} duplicated id(s): {shown}")


@dataclasses.dataclass
class BoxReport:
    """Counts of the box repairs made by :func:`clean_boxes` (summed over samples with ``+=``)."""

    kept: int = 0
    malformed: int = 0
    clipped: int = 0
    reordered: int = 0
    inverted_dropped: int = 0
    zero_area: int = 0

    def __iadd__(self, other: BoxReport) -> BoxReport:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def repaired(self) -> bool:
        """True when any box was changed or dropped."""
        return any(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kept")

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if v)


def _clip01(v: float) -> float:
    return min(1.0, max(0.0, v))


def clean_boxes(
    boxes: Sequence[Sequence[float]] | None, inverted: str = "reorder"
) -> tuple[list[list[float]], BoxReport]:
    """Repair normalised ``[x0, y0, x1, y1]`` boxes by the documented rules (module docstring).

    Args:
        boxes: a list of boxes (or ``None`` = no boxes).
        inverted: ``"reorder"`` or ``"drop"`` (see module docstring).

    Returns:
        ``(clean_boxes, report)``.
    """
    if inverted not in ("reorder", "drop"):
        raise ValueError(f"inverted must be 'reorder' or 'drop', got {inverted!r}")
    report = BoxReport()
    out: list[list[float]] = []
    for box in boxes or []:
        try:
            vals = [float(v) for v in box]
        except (TypeError, ValueError):
            report.malformed += 1
            continue
        if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
            report.malformed += 1
            continue
        x0, y0, x1, y1 = vals
        if inverted == "reorder":
            if x0 > x1 or y0 > y1:
                report.reordered += 1
                x0, x1 = min(x0, x1), max(x0, x1)
                y0, y1 = min(y0, y1), max(y0, y1)
            clipped = [_clip01(v) for v in (x0, y0, x1, y1)]
            if clipped != [x0, y0, x1, y1]:
                report.clipped += 1
            x0, y0, x1, y1 = clipped
        else:
            clipped = [_clip01(v) for v in (x0, y0, x1, y1)]
            if clipped != [x0, y0, x1, y1]:
                report.clipped += 1
            x0, y0, x1, y1 = clipped
            if x1 < x0 or y1 < y0:
                report.inverted_dropped += 1
                continue
        if x1 <= x0 or y1 <= y0:
            report.zero_area += 1
            continue
        out.append([x0, y0, x1, y1])
        report.kept += 1
    return out, report


def check_gt_rule(rule: str, *, sample_id: str = "?") -> str:
    """Return ``rule`` if it is one of :data:`GT_RULES`, else raise naming the sample."""
    if rule not in GT_RULES:
        raise DataValidationError(f"sample {sample_id!r}: gt_rule must be one of {GT_RULES}, got {rule!r}")
    return rule


def check_objects(objects: Sequence[dict] | None, *, sample_id: str = "?") -> list[dict] | None:
    """Check one row's ``objects`` value and return it as plain ``[{"box", "label", "sounding"}]`` (``None`` stays
    ``None``: the scene's objects are unknown).

    Rules: each object is a mapping with ``box`` (4 finite numbers, ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``),
    ``label`` (a string, may be empty) and ``sounding`` (a bool). Nothing is repaired: converters clean the boxes with
    :func:`clean_boxes` first. Raises :class:`DataValidationError` naming the sample and the object.
    """
    if objects is None:
        return None
    checked = []
    for index, item in enumerate(objects):
        where = f"sample {sample_id!r}: object {index}"
        if not isinstance(item, dict) or not {"box", "label", "sounding"} <= set(item):
            raise DataValidationError(f"{where} must be a mapping with keys box, label and sounding, got {item!r}")
        try:
            box = [float(v) for v in item["box"]]
        except (TypeError, ValueError):
            raise DataValidationError(f"{where}: box {item['box']!r} is not a list of numbers") from None
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise DataValidationError(f"{where}: box must be 4 finite numbers [x0, y0, x1, y1], got {item['box']!r}")
        x0, y0, x1, y1 = box
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise DataValidationError(f"{where}: box {box} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        if not isinstance(item["label"], str):
            raise DataValidationError(f"{where}: label must be a string, got {item['label']!r}")
        if not isinstance(item["sounding"], bool):
            raise DataValidationError(f"{where}: sounding must be true or false, got {item['sounding']!r}")
        checked.append({"box": box, "label": item["label"], "sounding": item["sounding"]})
    return checked
