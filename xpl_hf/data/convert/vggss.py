"""The ``vggss`` format: VGG-Sound clips (videos, or frames + audio) with the VGG-SS boxes of ``vggss.json``.

Inputs (``--input``, one or more): folders holding ``video/<name>.mp4`` (or ``frames/<name>.jpg`` +
``audio/<name>.wav``), and/or the Hub's ``vggsound_XX.tar.gz`` archives, read member by member without extracting
(every video member counts, wherever it lies in the archive). Splits: ``test`` (every annotated clip present),
``heard_test`` / ``unheard_test`` from the open-set lists, and with ``--unlabeled`` the other clips as ``unlabeled``
(with ``--csv vggsound.csv``: only the clips of its ``train`` split, labelled with its class names).

Naming. A VGG-Sound clip is ``(YouTube id, start second)``; the converter keys every clip by
:func:`vggsound_key`: ``<ytid>_<start, zero-padded to 6 digits>``, the form of ``vggss.json``'s ``file`` and of the
heard/unheard lists. What trips users, and what this key absorbs (tested):

* ``vggss.json`` names ``zpWuikVorYg_000032`` without an extension; video files carry one
  (``.../zpWuikVorYg_000032.mp4``);
* ``vggsound.csv`` holds ``zpWuikVorYg,32`` (id and *unpadded* start in two columns), and some copies name files
  ``zpWuikVorYg_32.mp4``: ``_32`` and ``_000032`` are the same clip;
* YouTube ids contain ``_`` and ``-``, and may start with ``-`` (``-t-htrAtNvM_000030``: 107 of the 5,158 VGG-SS
  entries): the start is what follows the **last** ``_``, and such a name is never passed to a command line here
  (a shell tool would read ``-t-htrAtNvM...`` as options);
* a name without a ``_<digits>`` tail is not a VGG-Sound clip name: it is matched as it is (without extension).

Boxes follow the community protocol (clip to [0, 1], drop inverted/empty boxes). 12 entries of ``vggss.json`` hold a
corrupt coordinate (about -2.88e16, always a max corner): clipped like the protocol, those boxes are dropped; the
entries stay in the test split (``corrupt_box_entries``). 6 further entries hold a zero-area box; two entries end
without any box (MKC9LvRivTM_000030, M1P1xla8rg0_000000): an all-zero ground truth, as the community scores them.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Any

from ..schema import BoxReport, DataValidationError, clean_boxes
from .report import ConversionReport
from .samples import Candidate
from .sources import (
    AUDIO_EXTENSIONS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    check_inputs,
    index_inputs,
    load_json,
    read_ids,
)

_CLIP_NAME = re.compile(r"(?P<ytid>.+)_(?P<start>\d+)")
_EXTENSIONS = tuple({*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS, *AUDIO_EXTENSIONS})


def vggsound_key(name: str, start: int | str | None = None) -> str | None:
    """The canonical id ``<ytid>_<start:06d>`` of a VGG-Sound clip name (a path, with or without extension), or of
    a csv row's ``(ytid, start)``; None when ``name`` is not a clip name.

    >>> vggsound_key("video/-abc_de-f_g_30.mp4"), vggsound_key("-abc_de-f_g", "30")
    ('-abc_de-f_g_000030', '-abc_de-f_g_000030')
    """
    if start is not None:
        start = str(start).strip()
        return f"{name.strip()}_{int(start):06d}" if start.isdigit() and name.strip() else None
    base = os.path.basename(name.strip())
    stem, ext = os.path.splitext(base)
    if ext.lower() in _EXTENSIONS:
        base = stem
    match = _CLIP_NAME.fullmatch(base)
    return f"{match['ytid']}_{int(match['start']):06d}" if match else None


def clip_key(name: str) -> str:
    """:func:`vggsound_key`, or for a name that is not ``<ytid>_<start>``, the name without folder and extension."""
    key = vggsound_key(name)
    if key is None:
        stem, ext = os.path.splitext(os.path.basename(name.strip()))
        key = stem if ext.lower() in _EXTENSIONS else os.path.basename(name.strip())
    return key


def _keyed(index: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stem, ref in index.items():
        out.setdefault(clip_key(stem), ref)
    return out


def _short(value: Any) -> str:
    """At most 120 characters of ``value``'s text, even for a value nested too deep for ``repr``."""
    try:
        return str(value)[:120]
    except RecursionError:
        return f"a {type(value).__name__} nested too deep to show"


def read_vggsound_csv(path: str) -> dict[str, tuple[str, str]]:
    """``{clip key: (label, split)}`` from ``vggsound.csv`` (rows ``ytid,start,label,split``; no header)."""
    out: dict[str, tuple[str, str]] = {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row in csv.reader(f):
                if len(row) < 4:
                    continue
                key = vggsound_key(row[0], row[1])
                if key is None:
                    continue  # a header line, or a row with a non-numeric start
                out.setdefault(key, (row[2].strip(), row[3].strip()))
    except UnicodeDecodeError as err:
        raise DataValidationError(f"{path}: not UTF-8 text (byte {err.start})") from None
    return out


def vggss_annotations(json_path: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Parse ``vggss.json`` with the protocol's box rule.

    Returns:
        ``({clip key: {"boxes": cleaned, "label": class}}, stats)`` where ``stats`` holds ``corrupt_box_entries``
        (entries with a coordinate outside [0, 1]: the 12 corrupt ones), ``zero_area_box_entries`` (6 in the
        released file), ``entries_without_box`` (2), ``bad_entries`` (``{"entry": index, "detail": ...}`` of entries
        that are not ``{file, bbox: [...]}`` objects: left out) and ``box_repairs``.

    Raises:
        DataValidationError: the file is not UTF-8 JSON (naming the line), nests too deep, or is not a list.
    """
    entries = load_json(json_path)
    if not isinstance(entries, list):
        raise DataValidationError(f"{json_path}: expected a JSON list of {{file, class, bbox}} entries")
    records: dict[str, dict[str, Any]] = {}
    total = BoxReport()
    corrupt, zero_area, empty, duplicates, bad = [], [], [], [], []
    for i, e in enumerate(entries):
        key = clip_key(e["file"]) if isinstance(e, dict) and isinstance(e.get("file"), str) else ""
        if not key or not isinstance(e.get("bbox"), list):
            bad.append({"entry": i, "detail": f"{json_path}: entry {i} is not an object with a string 'file' and a "
                        f"'bbox' list: {_short(e)}"})
            continue
        if key in records:
            duplicates.append(key)
            continue
        boxes, rep = clean_boxes(e["bbox"], inverted="drop")
        total += rep
        if rep.clipped or rep.inverted_dropped or rep.malformed:
            corrupt.append(key)
        if rep.zero_area:
            zero_area.append(key)
        if not boxes:
            empty.append(key)
        records[key] = {"boxes": boxes, "label": str(e.get("class") or "")}
    stats = {
        "annotated_entries": len(records),
        "corrupt_box_entries": len(corrupt),
        "corrupt_box_ids": corrupt,
        "zero_area_box_entries": zero_area,
        "entries_without_box": empty,
        "duplicate_entries": duplicates,
        "bad_entries": bad,
        "box_repairs": total.as_dict(),
    }
    return records, stats


def vggss_candidates(
    input_dir: str | list[str],
    annotations: str,
    heard_list: str | None = None,
    unheard_list: str | None = None,
    unlabeled: bool = False,
    csv_path: str | None = None,
    frames_dir: str = "frames",
    audio_dir: str = "audio",
    video_dir: str = "video",
) -> tuple[list[Candidate], ConversionReport]:
    """Candidates of VGG-Sound folders and/or archives with the VGG-SS boxes (module docstring)."""
    inputs = [input_dir] if isinstance(input_dir, str) else list(input_dir)
    check_inputs(inputs, "VGG-Sound")
    frames = _keyed(index_inputs(inputs, frames_dir, IMAGE_EXTENSIONS))
    audio = _keyed(index_inputs(inputs, audio_dir, AUDIO_EXTENSIONS))
    videos = _keyed(index_inputs(inputs, video_dir, VIDEO_EXTENSIONS))
    records, stats = vggss_annotations(annotations)
    catalogue = read_vggsound_csv(csv_path) if csv_path else None
    report = ConversionReport("vggss", extra={"corrupt_box_entries": stats["corrupt_box_entries"],
                                              "entries_without_box": stats["entries_without_box"]})

    def make(sid: str, split: str, boxes: list, label: str, rule: str) -> Candidate:
        media = ({"image": frames[sid], "audio": audio[sid]} if sid in frames and sid in audio else
                 {"video": videos[sid]} if sid in videos else {"image": frames.get(sid), "audio": audio.get(sid)})
        c = Candidate(sid, split, **media, boxes=boxes, gt_rule=rule, label=label, box_mode="drop")
        if not c.media():
            c.problem = ("missing media", f"no {video_dir}/{sid}.mp4 (nor {frames_dir}/{sid}.jpg + {audio_dir}/"
                         f"{sid}.wav) in the inputs; names are matched as <ytid>_<start:06d>")
        return c

    out = [make(sid, "test", r["boxes"], r["label"], "union") for sid, r in records.items()]
    out += [Candidate(f"<entry {b['entry']}>", "test", problem=("bad annotation", b["detail"]))
            for b in stats["bad_entries"]]
    for split, list_path in (("heard_test", heard_list), ("unheard_test", unheard_list)):
        if list_path:
            for name in read_ids(list_path):
                sid = clip_key(name)
                if sid in records:  # the same row as in test: copied from it, the clip is not decoded again
                    out.append(Candidate(sid, split, copy_of="test"))
                else:
                    out.append(Candidate(sid, split, problem=(f"{split} id not in annotations",
                                                              f"listed in {list_path} but not in {annotations}")))
    if unlabeled:
        for sid in sorted((set(frames) & set(audio)) | set(videos)):
            if sid in records or (catalogue is not None and catalogue.get(sid, ("", ""))[1] != "train"):
                continue
            label = catalogue[sid][0] if catalogue is not None else ""
            out.append(make(sid, "unlabeled", [], label, "none"))
    return out, report
