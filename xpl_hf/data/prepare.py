"""Convert raw audio-visual localization downloads into the xpl-hf schema (parquet shards, optionally on the Hub).

Commands::

    python -m xpl_hf.data.prepare folder --input DIR --output OUT [--push_to_hub ORG/NAME]
    python -m xpl_hf.data.prepare flickr --input DIR --output OUT --test_list flickr_test.csv \\
        [--labeled_list flickr_sup_train.txt] [--unlabeled]
    python -m xpl_hf.data.prepare vggss  --input DIR --output OUT --annotations vggss.json \\
        [--heard_list vggss_heard_test.csv --unheard_list vggss_unheard_test.csv] [--unlabeled]

Inputs:

* ``folder``: ``DIR/annotations.json`` (UTF-8 JSON), a list of ``{"id", "image", "audio", "boxes", "label", "split",
  "gt_rule"}`` objects: ``id`` a string (or integer); ``image`` / ``audio`` paths relative to ``DIR``; ``boxes``
  normalised ``[x0, y0, x1, y1]``; ``split`` letters, digits and ``_`` (default ``"train"``); ``gt_rule``
  ``"union"`` (default when there are boxes) or ``"flickr"``. One shard set per split. The rules of this format:

  - a sample is **labeled** exactly when it has a non-empty ``boxes`` list; without ``boxes`` (or ``null``) it is
    unlabeled (``gt_rule="none"``);
  - an explicit empty list, ``"boxes": []``, is read as "no annotation": the sample is kept **as unlabeled** and
    reported (``empty box list``), never stored as a labeled sample with an all-zero ground truth (which would
    train "nothing sounds here" and score 0 in evaluation). Likewise a ``gt_rule`` given without boxes is reported
    (``gt_rule without boxes``) and the sample kept as unlabeled;
  - an unknown key (e.g. the typo ``"bboxes"``) is reported (``unknown key``, with the closest known key); the
    sample is kept, without that key;
  - every media path must resolve **inside** ``DIR`` once symbolic links are followed: ``../x.jpg``, absolute
    paths and links pointing out are refused (``media outside input folder``), so a conversion never embeds, nor
    ``--push_to_hub`` uploads, a file from elsewhere on the machine. A path that is not a string is refused
    (``bad image path`` / ``bad audio path``).
* ``flickr``: Flickr-SoundNet: ``DIR/frames/<id>.jpg``, ``DIR/audio/<id>.wav`` (any soundfile format) and
  ``DIR/Annotations/<id>.xml`` (three annotators' boxes in 256-px coordinates, stored normalised ``v / 256``;
  ``gt_rule="flickr"``). Splits ``test`` and ``labeled`` from id lists (first column of a CSV/TXT); ``--unlabeled``
  adds every other id with a frame and audio as ``unlabeled`` (``gt_rule="none"``).
* ``vggss``: VGG-Sound frames + audio (same layout, ids = ``vggss.json``'s ``file``), boxes from ``vggss.json``
  (``gt_rule="union"``): split ``test`` (every annotated clip present), plus ``heard_test`` / ``unheard_test`` from
  the open-set lists; ``--unlabeled`` adds the other clips as ``unlabeled``.

  ``flickr`` and ``vggss`` read the files they find in ``frames/``, ``audio/`` and ``Annotations/``; symbolic links
  there are followed (those folders are often links to a dataset disk).

Bad input. A conversion never stops at a bad sample: the sample is **skipped**, the rest is written, and each
problem is listed in ``OUT/conversion_report.json`` (``skipped``: reason -> ids; ``reported``: reason -> ids of
samples kept despite a problem; ``problems``: one record per sample with its ``id``, ``split``, ``reason``,
``detail`` and ``action``) and in the printed summary. With ``--strict`` the conversion stops at the first problem,
skipped or reported, with an error naming the sample. Skipped:

* missing or corrupt/truncated image; missing, unreadable, empty or NaN audio, and audio the processor would refuse
  (shorter than :data:`xpl_hf.audio.MIN_SECONDS`, sample rate out of range): the one rule is
  :func:`xpl_hf.audio.check_waveform`, so every converted row is one training and inference accept;
* missing or unreadable annotation file, malformed ``vggss.json`` entry (id ``<entry i>``), an entry without an id;
  duplicated id (the first occurrence is kept); a split name other than letters, digits and ``_`` (``../evil``);
* an id or label that is not valid UTF-8 (a file name in another encoding: rename it). Media *file names* that are
  not valid UTF-8 are repaired instead: the stored name shows the undecodable bytes as ``\\xNN``.

A file that cannot be read at all (``annotations.json`` or ``vggss.json`` that is not UTF-8 JSON, a missing input
folder) is an error naming the file (and the line). A conversion that fails leaves no partial (``.tmp``) shard.

Boxes are repaired by :func:`xpl_hf.data.schema.clean_boxes` and counted. ``folder`` reorders inverted corners;
``flickr`` and ``vggss`` follow the community protocol (clip to [0, 1], then drop boxes left inverted or empty, which
is exactly what the protocol's ground-truth map does with them). A ``folder`` sample that had boxes but keeps none is
skipped (``no valid box``); ``flickr`` / ``vggss`` evaluation samples are kept even with no valid box.

VGG-SS: 12 entries of ``vggss.json`` hold a corrupt coordinate (about -2.88e16, always a max corner). Clipped like the
protocol, those boxes become inverted/empty and are dropped; the entries stay in the test split (the community counts
them; one of them, MKC9LvRivTM_000030, is left without a box, i.e. an all-zero ground truth). The count is reported
as ``corrupt_box_entries``. 6 further entries hold a zero-area box (dropped, reported as ``zero_area_box_entries``);
with it, M1P1xla8rg0_000000 is the second entry left without a box.

Video (mp4) input is not supported (no FFmpeg-free decoder is a dependency); extract frames and audio first.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from ..audio import AudioError, check_waveform, decode_audio
from .annotations import flickr_boxes_from_xml, read_id_list
from .decoding import decode_image
from .schema import XPL_FEATURES, BoxReport, DataValidationError, check_gt_rule, clean_boxes
from .shards import ShardWriter, even_shard_sizes, split_shard_paths, write_dataset_card

logger = logging.getLogger(__name__)

REPORT_NAME = "conversion_report.json"
MAX_WARNINGS_PER_REASON = 20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
FOLDER_KEYS = ("id", "image", "audio", "boxes", "label", "split", "gt_rule")
"""The keys of one ``annotations.json`` entry (``folder`` format)."""
SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
"""A valid split name (it becomes part of the shard file names and of the Hub dataset's splits)."""


class SampleProblem(Exception):
    """A sample that cannot be converted: ``reason`` (a short category, the report's key), ``detail`` (the message)
    and the repairs made to its boxes before it failed."""

    def __init__(self, reason: str, detail: str = "", box_report: BoxReport | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.box_report = reason, detail, box_report or BoxReport()


@dataclasses.dataclass
class Candidate:
    """One sample before validation: media paths (or None when missing) and raw boxes."""

    id: str
    split: str
    image: str | None
    audio: str | None
    boxes: Any = None
    gt_rule: str = "none"
    label: str = ""
    box_mode: str = "reorder"  # clean_boxes(inverted=...)
    require_box: bool = False  # skip the sample if it had boxes and none survives cleaning
    problem: tuple[str, str] | None = None  # (reason, detail) known before reading media: the sample is skipped
    notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (reason, detail): reported, kept


def _shown(text: str) -> str:
    """``text`` as printable UTF-8: bytes of a file name in another encoding become ``\\xNN``."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclasses.dataclass
class ConversionReport:
    """What a conversion wrote, skipped, reported and repaired."""

    kind: str
    written: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))  # reason -> ids
    reported: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))  # kept samples
    problems: list[dict[str, str]] = dataclasses.field(default_factory=list)  # one record per sample and problem
    boxes: BoxReport = dataclasses.field(default_factory=BoxReport)
    repaired_ids: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def skip(self, reason: str, sample_id: str, detail: str = "", split: str = "") -> None:
        """Record a skipped sample."""
        self._add(self.skipped, "skipped", reason, sample_id, detail, split)

    def note(self, reason: str, sample_id: str, detail: str = "", split: str = "") -> None:
        """Record a problem of a sample that is kept."""
        self._add(self.reported, "kept", reason, sample_id, detail, split)

    def _add(self, table, action, reason, sample_id, detail, split) -> None:
        table[reason].append(sample_id)
        self.problems.append({"id": sample_id, "split": split, "reason": reason, "detail": detail, "action": action})
        n = len(table[reason])
        if n <= MAX_WARNINGS_PER_REASON:
            logger.warning("%s sample %r (%s): %s%s", action, sample_id, split, reason, f" ({detail})" * bool(detail))
        elif n == MAX_WARNINGS_PER_REASON + 1:
            logger.warning("more samples %s for %r: every id is in %s", action, reason, REPORT_NAME)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "written": dict(self.written),
            "num_skipped": self.num_skipped,
            "skipped": {k: list(v) for k, v in self.skipped.items()},
            "reported": {k: list(v) for k, v in self.reported.items()},
            "problems": list(self.problems),
            "box_repairs": self.boxes.as_dict(),
            "repaired_ids": list(self.repaired_ids),
            **self.extra,
        }

    def summary(self) -> str:
        lines = [f"{self.kind}: wrote " + ", ".join(f"{k}={v}" for k, v in self.written.items())]
        for what, table in (("skipped", self.skipped), ("kept but reported", self.reported)):
            for reason, ids in table.items():
                shown = ", ".join(_shown(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
                lines.append(f"  {what} {len(ids)} ({reason}): {shown}")
        if self.boxes.repaired:
            lines.append(f"  box repairs: {self.boxes.describe()} in {len(self.repaired_ids)} sample(s)")
        for k, v in self.extra.items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Validation of one candidate (runs in worker processes)
# --------------------------------------------------------------------------------------------------------------------


def _read_media(path: str | None, what: str, unreadable: str) -> bytes:
    if not path:
        raise SampleProblem(f"missing {what}", f"no {what} file for this sample")
    if not os.path.isfile(path):
        raise SampleProblem(f"missing {what}", f"{what} file '{_shown(path)}' does not exist")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise SampleProblem(unreadable, f"{what} file '{_shown(path)}': {err.strerror or err}") from None


def _check_audio(data: bytes, name: str) -> None:
    """Decode and apply the package's audio rules (the processor's), raising SampleProblem."""
    try:
        waveform, rate = decode_audio(data)
        check_waveform(waveform, rate, what="the clip")
    except AudioError as err:
        raise SampleProblem(err.reason, f"audio '{name}': {err}") from None
    except Exception as err:  # soundfile may raise other errors on odd files
        raise SampleProblem("unreadable audio", f"audio '{name}': {type(err).__name__}: {err}") from None


def _validate(c: Candidate) -> tuple[dict, BoxReport]:
    if c.problem:
        raise SampleProblem(*c.problem)
    for what, text in (("id", c.id), ("label", c.label)):
        if not _is_utf8(text):
            raise SampleProblem(f"{what} not UTF-8", f"{what} '{_shown(text)}' is not valid UTF-8 (a file name in "
                                "another encoding?); rename it")
    image_bytes = _read_media(c.image, "image", "corrupt image")
    image_name = _shown(os.path.basename(c.image))
    try:
        decode_image(image_bytes)
    except DataValidationError as err:
        raise SampleProblem("corrupt image", f"image '{image_name}': {err}") from None
    audio_bytes = _read_media(c.audio, "audio", "unreadable audio")
    audio_name = _shown(os.path.basename(c.audio))
    _check_audio(audio_bytes, audio_name)
    raw = c.boxes if isinstance(c.boxes, (list, tuple)) else ([] if c.boxes is None else [c.boxes])
    boxes, box_report = clean_boxes(raw, inverted=c.box_mode)
    if c.require_box and raw and not boxes:
        raise SampleProblem("no valid box", f"none of its {len(raw)} box(es) is valid ({box_report.describe()})",
                            box_report)
    row = {
        "id": c.id,
        "image": {"bytes": image_bytes, "path": image_name},
        "audio": {"bytes": audio_bytes, "path": audio_name},
        "boxes": boxes,
        "gt_rule": c.gt_rule,
        "label": c.label or "",
    }
    return row, box_report


def build_row(c: Candidate) -> tuple[dict | None, str | None, str, BoxReport]:
    """Validate a candidate: ``(row, None, "", box_report)`` or ``(None, reason, detail, box_report)``.

    Never raises: an unexpected error becomes the reason ``unexpected error`` with its message, so one odd sample
    cannot end a conversion.
    """
    try:
        row, box_report = _validate(c)
    except SampleProblem as problem:
        return None, problem.reason, problem.detail, problem.box_report
    except Exception as err:
        return None, "unexpected error", f"{type(err).__name__}: {err}", BoxReport()
    return row, None, "", box_report


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _split_problem(split: str) -> tuple[str, str] | None:
    if SPLIT_NAME.fullmatch(split):
        return None
    return "bad split name", f"split {split!r} is not a split name (letters, digits and _ only)"


def _refuse(report: ConversionReport, c: Candidate, reason: str, detail: str, strict: bool) -> None:
    if strict:
        raise DataValidationError(f"sample {c.id!r} (split {c.split!r}): {reason}: {detail} (--strict)")
    report.skip(reason, c.id, detail, c.split)


def write_dataset(
    candidates: Sequence[Candidate],
    output: str,
    kind: str,
    *,
    num_shards: dict[str, int] | int | None = None,
    num_workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    report: ConversionReport | None = None,
) -> ConversionReport:
    """Validate candidates, write one shard set per split under ``output``, write and return the report.

    Args:
        num_shards: shards per split (int for all, or a dict; default ``ceil(rows / 1000)``).
        num_workers: processes reading and validating media.
        strict: raise :class:`DataValidationError` naming the sample at the first problem (skipped or reported)
            instead of skipping/reporting it.
    """
    from tqdm.auto import tqdm

    report = report or ConversionReport(kind)
    # duplicated ids: keep the first occurrence (across all splits: the pseudo-label bank is keyed by id)
    seen: set[str] = set()
    by_split: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.id in seen:
            _refuse(report, c, "duplicate id", "the id was seen before; the first occurrence is kept", strict)
            continue
        seen.add(c.id)
        problem = c.problem or _split_problem(c.split)
        if problem:
            _refuse(report, c, *problem, strict)
            continue
        for reason, detail in c.notes:
            if strict:
                raise DataValidationError(f"sample {c.id!r} (split {c.split!r}): {reason}: {detail} (--strict)")
            report.note(reason, c.id, detail, c.split)
        by_split[c.split].append(c)
    pool = None
    if num_workers > 1 and sum(map(len, by_split.values())) >= 64:
        pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(num_workers)
    os.makedirs(output, exist_ok=True)
    try:
        for split, items in by_split.items():
            n = len(items)
            k = num_shards.get(split) if isinstance(num_shards, dict) else num_shards
            k = k or max(1, math.ceil(n / 1000))
            results = pool.imap(build_row, items, chunksize=16) if pool else map(build_row, items)
            written = 0
            writer = ShardWriter(output, split, XPL_FEATURES, rows_per_shard=even_shard_sizes(n, k))
            try:
                for c, (row, reason, detail, box_report) in tqdm(
                    zip(items, results), total=n, desc=f"{kind} {split}", disable=not progress, unit="sample"
                ):
                    report.boxes += box_report
                    if row is None:
                        _refuse(report, c, reason, detail, strict)
                        continue
                    if box_report.repaired:
                        report.repaired_ids.append(c.id)
                    writer.write(row)
                    written += 1
                writer.close()
            except BaseException:
                writer.abort()  # also when close() itself fails: no .tmp shard is left behind
                raise
            report.written[split] = written
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    with open(os.path.join(output, REPORT_NAME), "w") as f:
        json.dump(report.as_dict(), f, indent=2)
    write_dataset_card(output, kind)  # README.md: configs, features, provenance and licence of every split written
    return report


def push_to_hub(output: str, repo_id: str, *, private: bool = False, token: str | None = None) -> Any:
    """Upload every split of ``output`` with ``datasets.DatasetDict.push_to_hub``, keeping each split's shard count
    (so that streaming still splits the unlabeled data across processes)."""
    from datasets import DatasetDict

    from .loading import load_labeled
    from .shards import list_splits

    splits = list_splits(output)
    if not splits:
        raise ValueError(f"{output!r} holds no split to push")
    dd = DatasetDict({s: load_labeled(output, s, require_boxes=False, decode_images=True) for s in splits})
    shards = {s: len(split_shard_paths(output, s)) for s in splits}
    return dd.push_to_hub(repo_id, private=private, token=token, num_shards=shards)


# --------------------------------------------------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------------------------------------------------


def load_json(path: str) -> Any:
    """Read a UTF-8 JSON file; a decoding error names the file, the line and the column."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataValidationError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
                                  ) from None
    except UnicodeDecodeError as err:
        bad = err.object[err.start:err.start + 1]
        raise DataValidationError(f"{path}: not UTF-8 text (byte {err.start} is {bad!r}); JSON files must be UTF-8"
                                  ) from None


def _index_dir(directory: str, extensions: Iterable[str]) -> dict[str, str]:
    """``{stem: path}`` of the files with one of ``extensions`` in ``directory`` (empty if it does not exist)."""
    out: dict[str, str] = {}
    if not os.path.isdir(directory):
        return out
    exts = tuple(extensions)
    for entry in os.scandir(directory):
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in exts and stem not in out:
            out[stem] = entry.path
    return out


def _index_media(input_dir: str, frames_dir: str, audio_dir: str, what: str) -> tuple[dict[str, str], dict[str, str]]:
    """{id: frame path} and {id: audio path} of a dataset download; a missing folder is an error naming it."""
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"{what} folder {input_dir!r} does not exist")
    return (_index_dir(os.path.join(input_dir, frames_dir), IMAGE_EXTENSIONS),
            _index_dir(os.path.join(input_dir, audio_dir), AUDIO_EXTENSIONS))


def _media_inside(input_dir: str, root: str, value: Any, what: str) -> str | None:
    """``input_dir/value`` if it resolves inside ``root`` (the real path of ``input_dir``), None if ``value`` is
    empty; raises SampleProblem for a non-string path or one that leaves the folder (``..``, absolute, link out)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SampleProblem(f"bad {what} path", f"{what} must be a path string, got {type(value).__name__} {value!r}")
    try:
        path = os.path.join(input_dir, value)
        resolved = os.path.realpath(path)
    except ValueError as err:  # embedded NUL, unencodable characters
        raise SampleProblem(f"bad {what} path", f"{what} path '{_shown(value)}': {err}") from None
    if os.path.commonpath([root, resolved]) != root:
        raise SampleProblem("media outside input folder", f"{what} path '{_shown(value)}' resolves to "
                            f"'{_shown(resolved)}', outside the input folder '{_shown(input_dir)}'; media files must "
                            "lie inside it (copy them in)")
    return path


def _folder_candidate(e: Any, index: int, input_dir: str, root: str) -> Candidate:
    """One ``annotations.json`` entry -> a Candidate (its problem and notes set by the format's rules)."""
    placeholder = f"<entry {index}>"
    if not isinstance(e, dict):
        return Candidate(placeholder, "train", None, None,
                         problem=("bad entry", f"entry {index} is a JSON {type(e).__name__}, not an object"))
    raw_id, raw_split = e.get("id"), e.get("split")
    split = "train" if raw_split in (None, "") else str(raw_split)
    c = Candidate(placeholder, split, None, None)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        c.problem = ("missing id", f"entry {index} has no id")
        return c
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        c.problem = ("bad id", f"entry {index}: id must be a string, got {type(raw_id).__name__} {raw_id!r}")
        return c
    c.id = str(raw_id)
    if raw_split is not None and not isinstance(raw_split, str):
        c.problem = ("bad split name", f"split {raw_split!r} is not a split name (a string of letters, digits, _)")
        return c
    raw_label = e.get("label")
    if raw_label is not None and (isinstance(raw_label, bool) or not isinstance(raw_label, (str, int, float))):
        c.problem = ("bad label", f"label must be a string, got {type(raw_label).__name__} {raw_label!r}")
        return c
    c.label = "" if raw_label is None else str(raw_label)
    try:
        c.image = _media_inside(input_dir, root, e.get("image"), "image")
        c.audio = _media_inside(input_dir, root, e.get("audio"), "audio")
    except SampleProblem as problem:
        c.problem = (problem.reason, problem.detail)
        return c
    unknown = [k for k in e if k not in FOLDER_KEYS]
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, FOLDER_KEYS, 1))
                 else repr(k) for k in unknown]
        c.notes.append(("unknown key", f"unknown key(s) {', '.join(hints)} ignored; the keys are {FOLDER_KEYS}"))
    boxes, rule = e.get("boxes"), e.get("gt_rule")
    if rule not in (None, ""):
        try:
            check_gt_rule(rule, sample_id=c.id)
        except DataValidationError as err:
            c.problem = ("bad gt_rule", str(err))
            return c
    if isinstance(boxes, list) and not boxes:
        c.notes.append(("empty box list", "boxes is [], read as 'no annotation': kept as unlabeled (gt_rule 'none')"))
        boxes = None
    elif boxes is None and rule not in (None, "", "none"):
        c.notes.append(("gt_rule without boxes", f"gt_rule {rule!r} but no boxes: kept as unlabeled (gt_rule 'none')"))
    c.gt_rule = "none" if boxes is None else (rule or "union")
    c.boxes, c.box_mode, c.require_box = boxes or [], "reorder", c.gt_rule != "none"
    return c


def folder_candidates(input_dir: str) -> tuple[list[Candidate], ConversionReport]:
    """Candidates of a ``folder`` input (``annotations.json``; rules in the module docstring)."""
    path = os.path.join(input_dir, "annotations.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a folder dataset needs annotations.json (see `prepare folder -h`)")
    entries = load_json(path)
    if not isinstance(entries, list):
        raise DataValidationError(f"{path}: expected a JSON list of {{id, image, audio, boxes, label, split}}")
    root = os.path.realpath(input_dir)
    return [_folder_candidate(e, i, input_dir, root) for i, e in enumerate(entries)], ConversionReport("folder")


def flickr_candidates(
    input_dir: str,
    test_list: str,
    labeled_list: str | None = None,
    unlabeled: bool = False,
    frames_dir: str = "frames",
    audio_dir: str = "audio",
    annotations_dir: str = "Annotations",
) -> tuple[list[Candidate], ConversionReport]:
    """Candidates of a Flickr-SoundNet download (see module docstring)."""
    frames, audio = _index_media(input_dir, frames_dir, audio_dir, "Flickr-SoundNet")
    xmls = _index_dir(os.path.join(input_dir, annotations_dir), (".xml",))
    report = ConversionReport("flickr")
    out: list[Candidate] = []
    annotated: set[str] = set()
    for split, list_path in (("test", test_list), ("labeled", labeled_list)):
        if not list_path:
            continue
        for sid in read_id_list(list_path):
            annotated.add(sid)
            c = Candidate(sid, split, frames.get(sid), audio.get(sid), gt_rule="flickr", box_mode="drop")
            if sid not in xmls:
                c.problem = ("missing annotation", f"no {annotations_dir}/{sid}.xml")
            else:
                try:
                    c.boxes = flickr_boxes_from_xml(xmls[sid], normalize=True)
                except (ValueError, OSError) as err:
                    c.problem = ("bad annotation", f"{_shown(xmls[sid])}: {err}")
            out.append(c)
    if unlabeled:
        for sid in sorted(set(frames) & set(audio) - annotated):
            out.append(Candidate(sid, "unlabeled", frames[sid], audio[sid], gt_rule="none"))
    return out, report


def vggss_annotations(json_path: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Parse ``vggss.json`` with the protocol's box rule.

    Returns:
        ``({file: {"boxes": cleaned, "label": class}}, stats)`` where ``stats`` holds ``corrupt_box_entries`` (entries
        with a coordinate outside [0, 1]: the 12 corrupt ones), ``zero_area_box_entries`` (entries with a box of zero
        width or height, dropped: 6 in the released file), ``entries_without_box`` (left without any box: 2),
        ``bad_entries`` (``{"entry": index, "detail": ...}`` of entries that are not ``{file, bbox, ...}`` objects:
        left out) and ``box_repairs``.

    Raises:
        DataValidationError: the file is not UTF-8 JSON (naming the line) or not a list.
    """
    entries = load_json(json_path)
    if not isinstance(entries, list):
        raise DataValidationError(f"{json_path}: expected a JSON list of {{file, class, bbox}} entries")
    records: dict[str, dict[str, Any]] = {}
    total = BoxReport()
    corrupt, zero_area, empty, duplicates, bad = [], [], [], [], []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or not e["file"] or "bbox" not in e:
            bad.append({"entry": i, "detail": f"{json_path}: entry {i} is not an object with a string 'file' and a "
                        f"'bbox' list: {str(e)[:120]}"})
            continue
        sid = e["file"]
        if sid in records:
            duplicates.append(sid)
            continue
        boxes, rep = clean_boxes(e["bbox"], inverted="drop")
        total += rep
        if rep.clipped or rep.inverted_dropped or rep.malformed:
            corrupt.append(sid)
        if rep.zero_area:
            zero_area.append(sid)
        if not boxes:
            empty.append(sid)
        records[sid] = {"boxes": boxes, "label": str(e.get("class") or "")}
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
    input_dir: str,
    annotations: str,
    heard_list: str | None = None,
    unheard_list: str | None = None,
    unlabeled: bool = False,
    frames_dir: str = "frames",
    audio_dir: str = "audio",
) -> tuple[list[Candidate], ConversionReport]:
    """Candidates of a VGG-Sound / VGG-SS download (see module docstring)."""
    frames, audio = _index_media(input_dir, frames_dir, audio_dir, "VGG-Sound")
    records, stats = vggss_annotations(annotations)
    report = ConversionReport(
        "vggss",
        extra={
            "corrupt_box_entries": stats["corrupt_box_entries"],
            "entries_without_box": stats["entries_without_box"],
        },
    )

    def make(sid: str, split: str) -> Candidate:
        r = records[sid]
        return Candidate(sid, split, frames.get(sid), audio.get(sid), boxes=r["boxes"], gt_rule="union",
                         label=r["label"], box_mode="drop")

    out = [make(sid, "test") for sid in records]
    out += [Candidate(f"<entry {b['entry']}>", "test", None, None, problem=("bad annotation", b["detail"]))
            for b in stats["bad_entries"]]
    for split, list_path in (("heard_test", heard_list), ("unheard_test", unheard_list)):
        if list_path:
            for sid in read_id_list(list_path):
                if sid in records:
                    out.append(make(sid, split))  # same id as in test: ids are unique within a split
                else:
                    out.append(Candidate(sid, split, None, None, problem=(
                        f"{split} id not in annotations", f"listed in {list_path} but not in {annotations}")))
    if unlabeled:
        for sid in sorted(set(frames) & set(audio) - set(records)):
            out.append(Candidate(sid, "unlabeled", frames[sid], audio[sid], gt_rule="none"))
    return out, report


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def convert(
    kind: str,
    input_dir: str,
    output: str,
    *,
    num_shards=None,
    num_workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    **kwargs,
) -> ConversionReport:
    """Run one converter (``folder``, ``flickr`` or ``vggss``); ``kwargs`` go to its ``*_candidates`` function."""
    if kind == "folder":
        candidates, report = folder_candidates(input_dir)
    elif kind == "flickr":
        candidates, report = flickr_candidates(input_dir, **kwargs)
    elif kind == "vggss":
        candidates, report = vggss_candidates(input_dir, **kwargs)
    else:
        raise ValueError(f"unknown dataset kind {kind!r}; expected folder, flickr or vggss")

    def write(items):
        return write_dataset(items, output, kind, num_shards=num_shards, num_workers=num_workers, strict=strict,
                             progress=progress, report=report)

    if kind == "vggss":
        # the heard/unheard splits repeat test ids; duplicates are only checked within a split there
        by_split: dict[str, list[Candidate]] = defaultdict(list)
        for c in candidates:
            by_split[c.split].append(c)
        for items in by_split.values():
            write(items)
        return report
    return write(candidates)


def main(argv: list[str] | None = None) -> ConversionReport:
    parser = argparse.ArgumentParser(prog="python -m xpl_hf.data.prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--input", required=True, help="the downloaded dataset folder")
    common.add_argument("--output", required=True, help="output folder (parquet shards under OUTPUT/data/)")
    common.add_argument("--num_shards", type=int, default=None, help="shards per split (default: one per 1000 rows)")
    common.add_argument("--num_workers", type=int, default=1, help="processes reading/validating media")
    common.add_argument("--strict", action="store_true",
                        help="stop at the first bad or reported sample (naming it) instead of skipping/reporting it")
    common.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the result as this Hub dataset")
    common.add_argument("--private", action="store_true", help="create the Hub dataset as private")
    sub.add_parser("folder", parents=[common], help="a folder with annotations.json")
    p = sub.add_parser("flickr", parents=[common], help="Flickr-SoundNet (frames, audio, Annotations/*.xml)")
    p.add_argument("--test_list", required=True, help="test ids, e.g. avsl_metadata/flickr_test.csv")
    p.add_argument("--labeled_list", default=None, help="labeled training ids, e.g. avsl_metadata/flickr_sup_train.txt")
    p.add_argument("--unlabeled", action="store_true", help="add every other clip as the unlabeled split")
    p = sub.add_parser("vggss", parents=[common], help="VGG-Sound frames + audio with vggss.json boxes")
    p.add_argument("--annotations", required=True, help="vggss.json")
    p.add_argument("--heard_list", default=None, help="vggss_heard_test.csv")
    p.add_argument("--unheard_list", default=None, help="vggss_unheard_test.csv")
    p.add_argument("--unlabeled", action="store_true", help="add every non-annotated clip as the unlabeled split")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    extra = {}
    if args.kind == "flickr":
        extra = dict(test_list=args.test_list, labeled_list=args.labeled_list, unlabeled=args.unlabeled)
    elif args.kind == "vggss":
        extra = dict(
            annotations=args.annotations,
            heard_list=args.heard_list,
            unheard_list=args.unheard_list,
            unlabeled=args.unlabeled,
        )
    try:
        report = convert(
            args.kind,
            args.input,
            args.output,
            num_shards=args.num_shards,
            num_workers=args.num_workers,
            strict=args.strict,
            **extra,
        )
    except (DataValidationError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog} {args.kind}: error: {_shown(str(err))}\n")
    print(report.summary())
    if args.push_to_hub:
        push_to_hub(args.output, args.push_to_hub, private=args.private)
        print(f"pushed {args.output} to https://huggingface.co/datasets/{args.push_to_hub}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
