"""The ``folder`` format: a folder (or a .tar / .tar.gz of one) with media files and ``annotations.json``.

``annotations.json`` is a UTF-8 JSON list, one object per sample:

============ =========================================================================================================
key          value
============ =========================================================================================================
``id``       a string (or integer), unique over the whole file
``image``    path of the frame (JPEG/PNG/...), relative to the folder
``audio``    path of the sound (WAV/FLAC/OGG/MP3), relative to the folder
``video``    path of a video (mp4/mov/mkv/webm/avi) *instead of* ``image`` + ``audio``: the frame and the sound
             around it are taken from it
``time``     optional, with ``video``: seconds into the video of the frame (default: ``--frame_time``, else the middle)
``boxes``    list of ``[x0, y0, x1, y1]`` boxes normalised to [0, 1] (the sounding object); absent, ``null`` or ``[]``:
             not annotated
``label``    optional class name
``split``    optional split name (letters, digits, ``_``); see the defaults below
``gt_rule``  optional: ``"union"`` (default with boxes) or ``"flickr"`` (sum of annotators' boxes / 2); ``"none"``
             only without boxes
``objects``  optional: every visible object of the scene, a list of ``{"box": [x0, y0, x1, y1], "label": "dog",
             "sounding": true}`` (boxes normalised, ``0 <= x0 < x1 <= 1``); written to the ``objects`` column, which
             ``python -m xpl_hf.evaluate`` uses for its object-selection check
============ =========================================================================================================

For example::

    [
      {"id": "dog1", "image": "frames/dog1.jpg", "audio": "audio/dog1.wav", "boxes": [[0.1, 0.2, 0.5, 0.9]]},
      {"id": "car7", "video": "clips/car7.mp4", "time": 4.5, "boxes": [[0.3, 0.4, 0.8, 0.7]], "label": "car"},
      {"id": "street3", "video": "clips/street3.mp4"},
      {"id": "dog9", "video": "clips/dog9.mp4", "boxes": [[0.0, 0.1, 0.4, 0.6]], "split": "test"}
    ]

Split values train_xpl.py reads by default: ``labeled`` (boxed training rows), ``unlabeled`` (rows without boxes),
``validation`` (selects the best model) and ``test`` (scored once). A sample **without** ``split`` goes to
``labeled`` when it has boxes and to ``unlabeled`` when it has none; ``--validation_fraction`` / ``--test_fraction``
(0.1 each on the command line, 0 in Python) move that fraction of those boxed rows (drawn with ``--seed`` from the
ids sorted, so the same file and seed give the same splits whatever the entries' order) to ``validation`` /
``test``. An explicit ``split`` is never changed.

Rules: a sample is labeled exactly when it has a non-empty ``boxes`` list. ``"boxes": []`` (and a ``gt_rule`` given
without boxes) is read as "not annotated": kept as unlabeled and reported. ``boxes`` of another type (``{}``, ``""``,
``0``, ``false``, a string) or a flat list of 4 numbers is refused (``bad boxes``): it would otherwise become a
labeled row without a box, which trains "nothing sounds here". Unknown keys (the typo ``"bboxes"``) are reported
with the closest known key. ``gt_rule: "none"`` on an entry with boxes is refused (``bad gt_rule``): ``none`` means
"not annotated", so the entry contradicts itself (leave ``gt_rule`` out to read the boxes with ``union``).
``objects`` that break the rules of :func:`xpl_hf.data.schema.check_objects` (not a list; an object without ``box``,
``label`` or ``sounding``; a box outside [0, 1] or inverted) are refused (``bad objects``), naming the object; when
any entry lists objects, every split gets the column (``null`` for the other rows). Every media path must resolve
inside the folder (``../x.jpg``, absolute paths and links pointing out are refused: ``media outside input folder``);
inside an archive, a path must name a regular member.
"""

from __future__ import annotations

import difflib
import math
import os
import posixpath
from typing import Any

from ..schema import DataValidationError, check_gt_rule, check_objects
from .archive import ArchiveMember, is_archive
from .report import ConversionReport, SampleProblem, shown
from .samples import Candidate, carve
from .sources import archive_index, check_json_size, load_json

FOLDER_KEYS = ("id", "image", "audio", "video", "time", "boxes", "label", "split", "gt_rule", "objects")
"""The keys of one ``annotations.json`` entry."""
ANNOTATIONS = "annotations.json"


class _Folder:
    """Resolves an entry's media paths in a folder or inside an archive."""

    def __init__(self, source: str):
        self.source = source
        self.archive = is_archive(source)
        if self.archive:
            self.members = archive_index(source)
            found = sorted((n for n in self.members if posixpath.basename(n) == ANNOTATIONS),
                           key=lambda n: (n.count("/"), n))
            if not found or found[0].count("/") > 1:
                raise FileNotFoundError(f"{source}: no {ANNOTATIONS} at the archive's root or in its top folder "
                                        "(see `python -m xpl_hf.data.convert folder -h`)")
            self.annotations = found[0]
            self.base = posixpath.dirname(found[0])
        else:
            self.annotations = os.path.join(source, ANNOTATIONS)
            if not os.path.isfile(self.annotations):
                raise FileNotFoundError(f"{self.annotations} not found: a folder dataset needs {ANNOTATIONS} (see "
                                        "`python -m xpl_hf.data.convert folder -h`)")
            self.root = os.path.realpath(source)

    def entries(self) -> Any:
        if self.archive:
            from .archive import ArchiveReader

            member = self.members[self.annotations]
            check_json_size(str(member), member.size)
            with ArchiveReader() as reader:
                data = reader.read(member, limit=member.size)
            return load_json(str(member), data)
        return load_json(self.annotations)

    def media(self, value: Any, what: str) -> str | ArchiveMember | None:
        """The media file ``value`` names; None if empty; SampleProblem for a bad or escaping path."""
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise SampleProblem(f"bad {what} path", f"{what} must be a path string, got {type(value).__name__} "
                                f"{value!r}"[:200])
        if self.archive:
            name = posixpath.normpath(posixpath.join(self.base, value)) if "\x00" not in value else ""
            if not name or value.startswith("/") or (self.base and not name.startswith(self.base + "/")) \
                    or name.startswith("../") or name == "..":
                raise SampleProblem("media outside input folder", f"{what} path '{shown(value)}' leaves the "
                                    "annotations' folder inside the archive")
            if name not in self.members:
                raise SampleProblem(f"missing {what}", f"{what} '{shown(value)}' is not a file of {self.source}")
            return self.members[name]
        try:
            path = os.path.join(self.source, value)
            resolved = os.path.realpath(path)
        except ValueError as err:  # embedded NUL, unencodable characters
            raise SampleProblem(f"bad {what} path", f"{what} path '{shown(value)}': {err}") from None
        if os.path.commonpath([self.root, resolved]) != self.root:
            raise SampleProblem("media outside input folder", f"{what} path '{shown(value)}' resolves to "
                                f"'{shown(resolved)}', outside the input folder '{shown(self.source)}'; media files "
                                "must lie inside it (copy them in)")
        return path


def _boxes_problem(boxes: Any) -> str | None:
    """Why ``boxes`` is not a list of boxes (None when it is one, or absent)."""
    if boxes is None or (isinstance(boxes, list) and all(isinstance(b, (list, tuple, dict)) or b is None
                                                         for b in boxes)):
        return None
    if isinstance(boxes, list) and len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
        return f"boxes is one flat box {boxes!r}: write a list of boxes, [[x0, y0, x1, y1]]"
    return f"boxes must be a list of [x0, y0, x1, y1] boxes (or null / [] for 'not annotated'), got " \
           f"{type(boxes).__name__} {boxes!r}"[:200]


def _time_problem(value: Any) -> str | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                         and value >= 0):
        return None
    return f"time must be a number of seconds >= 0, got {type(value).__name__} {value!r}"[:200]


def _candidate(e: Any, index: int, folder: _Folder) -> Candidate:
    """One entry -> a Candidate (its problem and notes set by the format's rules); ``split`` None = default."""
    placeholder = f"<entry {index}>"
    if not isinstance(e, dict):
        return Candidate(placeholder, "unlabeled",
                         problem=("bad entry", f"entry {index} is a JSON {type(e).__name__}, not an object"))
    raw_id, raw_split = e.get("id"), e.get("split")
    c = Candidate(placeholder, "" if raw_split in (None, "") else str(raw_split))
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        c.problem = ("missing id", f"entry {index} has no id")
        return c
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        c.problem = ("bad id", f"entry {index}: id must be a string, got {type(raw_id).__name__} {raw_id!r}"[:200])
        return c
    c.id = str(raw_id)
    if raw_split is not None and not isinstance(raw_split, str):
        c.problem = ("bad split name", f"split {raw_split!r} is not a split name (a string of letters, digits, _)")
        return c
    raw_label = e.get("label")
    if raw_label is not None and (isinstance(raw_label, bool) or not isinstance(raw_label, (str, int, float))):
        c.problem = ("bad label", f"label must be a string, got {type(raw_label).__name__} {raw_label!r}"[:200])
        return c
    c.label = "" if raw_label is None else str(raw_label)
    boxes, rule = e.get("boxes"), e.get("gt_rule")
    checks = [("bad boxes", _boxes_problem(boxes)), ("bad time", _time_problem(e.get("time")))]
    if e.get("video") not in (None, "") and (e.get("image") not in (None, "") or e.get("audio") not in (None, "")):
        checks.append(("video with image or audio", "give either video, or image and audio, not both"))
    for reason, detail in checks:
        if detail:
            c.problem = (reason, detail)
            return c
    try:
        c.video = folder.media(e.get("video"), "video")
        if c.video is None:
            c.image = folder.media(e.get("image"), "image")
            c.audio = folder.media(e.get("audio"), "audio")
    except SampleProblem as problem:
        c.problem = (problem.reason, problem.detail)
        return c
    c.time = e.get("time")
    unknown = [k for k in e if k not in FOLDER_KEYS]
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, FOLDER_KEYS, 1))
                 else repr(k) for k in unknown]
        c.notes.append(("unknown key", f"unknown key(s) {', '.join(hints)} ignored; the keys are {FOLDER_KEYS}"))
    if rule not in (None, ""):
        try:
            check_gt_rule(rule, sample_id=c.id)
        except DataValidationError as err:
            c.problem = ("bad gt_rule", str(err))
            return c
        if rule == "none" and isinstance(boxes, list) and boxes:
            c.problem = ("bad gt_rule", f"gt_rule 'none' means 'not annotated' but the entry has {len(boxes)} box(es):"
                         " leave gt_rule out (the boxes are read with 'union') or drop the boxes")
            return c
    objects = e.get("objects")
    if objects is not None:
        try:
            if not isinstance(objects, list):
                raise DataValidationError(f"objects must be a list of {{box, label, sounding}} objects, got "
                                          f"{type(objects).__name__} {objects!r}"[:200])
            c.objects = check_objects(objects, sample_id=c.id)
        except DataValidationError as err:
            c.problem = ("bad objects", str(err)[:300])
            return c
    if isinstance(boxes, list) and not boxes:
        c.notes.append(("empty box list", "boxes is [], read as 'no annotation': kept as unlabeled (gt_rule 'none')"))
        boxes = None
    elif boxes is None and rule not in (None, "", "none"):
        c.notes.append(("gt_rule without boxes", f"gt_rule {rule!r} but no boxes: kept as unlabeled (gt_rule 'none')"))
    c.gt_rule = "none" if boxes is None else (rule or "union")
    c.boxes, c.box_mode, c.require_box = boxes or [], "reorder", c.gt_rule != "none"
    return c


def default_splits(candidates: list[Candidate], validation_fraction: float = 0.0, test_fraction: float = 0.0,
                   seed: int = 0) -> dict[str, int]:
    """Give every candidate without a split its default (module docstring); return the rows moved per split."""
    boxed = [c for c in candidates if not c.split and c.gt_rule != "none" and not c.problem]
    for c in candidates:
        if not c.split:
            c.split = "unlabeled" if c.gt_rule == "none" else "labeled"
    return carve(boxed, validation_fraction, test_fraction, seed)


def folder_candidates(input_dir: str, validation_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0
                      ) -> tuple[list[Candidate], ConversionReport]:
    """Candidates of a ``folder`` input, a folder or a .tar / .tar.gz holding one (rules in the module docstring).

    Raises:
        FileNotFoundError: no input, or no ``annotations.json`` in it.
        DataValidationError: ``annotations.json`` is not UTF-8 JSON, nests too deep, is not a list or is empty.
    """
    if not (os.path.isdir(input_dir) or (is_archive(input_dir) and os.path.isfile(input_dir))):
        raise FileNotFoundError(f"folder input {input_dir!r} is neither a folder nor a .tar / .tar.gz archive")
    folder = _Folder(input_dir)
    entries = folder.entries()
    if not isinstance(entries, list):
        raise DataValidationError(f"{folder.annotations}: expected a JSON list of {{id, image, audio | video, boxes, "
                                  f"label, split}} objects, got a JSON {type(entries).__name__}")
    if not entries:
        raise DataValidationError(f"{folder.annotations}: the annotation list is empty: there is nothing to convert")
    candidates = [_candidate(e, i, folder) for i, e in enumerate(entries)]
    carved = default_splits(candidates, validation_fraction, test_fraction, seed)
    report = ConversionReport("folder")
    if validation_fraction or test_fraction:
        report.extra["carved_from_labeled"] = {**carved, "seed": seed}
    return candidates, report
