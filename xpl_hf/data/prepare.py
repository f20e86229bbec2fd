"""Convert raw audio-visual localization downloads into the xpl-hf schema (parquet shards, optionally on the Hub).

Commands::

    python -m xpl_hf.data.prepare folder --input DIR --output OUT [--push_to_hub ORG/NAME]
    python -m xpl_hf.data.prepare flickr --input DIR --output OUT --test_list flickr_test.csv \\
        [--labeled_list flickr_sup_train.txt] [--unlabeled]
    python -m xpl_hf.data.prepare vggss  --input DIR --output OUT --annotations vggss.json \\
        [--heard_list vggss_heard_test.csv --unheard_list vggss_unheard_test.csv] [--unlabeled]

Inputs:

* ``folder``: ``DIR/annotations.json``, a list of ``{"id", "image", "audio", "boxes", "label", "split"}`` (paths
  relative to ``DIR``; boxes normalised ``[x0, y0, x1, y1]``; optional ``"gt_rule"``, default ``"union"`` when the
  entry has a ``boxes`` key, ``"none"`` without; ``split`` defaults to ``"train"``). One shard set per split.
* ``flickr``: Flickr-SoundNet: ``DIR/frames/<id>.jpg``, ``DIR/audio/<id>.wav`` (any soundfile format) and
  ``DIR/Annotations/<id>.xml`` (three annotators' boxes in 256-px coordinates, stored normalised ``v / 256``;
  ``gt_rule="flickr"``). Splits ``test`` and ``labeled`` from id lists (first column of a CSV/TXT); ``--unlabeled``
  adds every other id with a frame and audio as ``unlabeled`` (``gt_rule="none"``).
* ``vggss``: VGG-Sound frames + audio (same layout, ids = ``vggss.json``'s ``file``), boxes from ``vggss.json``
  (``gt_rule="union"``): split ``test`` (every annotated clip present), plus ``heard_test`` / ``unheard_test`` from
  the open-set lists; ``--unlabeled`` adds the other clips as ``unlabeled``.

Bad input (each reported by id in ``OUT/conversion_report.json`` and in the printed summary):

* missing or corrupt/truncated image, missing / unreadable / empty / NaN audio, missing annotation file, entry
  without an id, duplicated id (the first occurrence is kept): the sample is **skipped and counted**;
* boxes: repaired by :func:`xpl_hf.data.schema.clean_boxes` and counted. ``folder`` reorders inverted corners;
  ``flickr`` and ``vggss`` follow the community protocol (clip to [0, 1], then drop boxes left inverted or empty,
  which is exactly what the protocol's ground-truth map does with them). A ``folder`` sample that had boxes but
  keeps none is skipped; ``flickr`` / ``vggss`` evaluation samples are kept even with no valid box.
* VGG-SS: 12 entries of ``vggss.json`` hold a corrupt coordinate (about -2.88e16, always a max corner). Clipped
  like the protocol, those boxes become inverted/empty and are dropped; the entries stay in the test split (the
  community counts them; one of them, MKC9LvRivTM_000030, is left without a box, i.e. an all-zero ground truth).
  The count is reported as ``corrupt_box_entries``. 6 further entries hold a zero-area box (dropped, reported as
  ``zero_area_box_entries``); with it, M1P1xla8rg0_000000 is the second entry left without a box.

Video (mp4) input is not supported (no FFmpeg-free decoder is a dependency); extract frames and audio first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing as mp
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from .decoding import decode_audio, decode_image
from .schema import XPL_FEATURES, BoxReport, DataValidationError, check_gt_rule, clean_boxes
from .shards import ShardWriter, even_shard_sizes, split_shard_paths, write_dataset_card

logger = logging.getLogger(__name__)

REPORT_NAME = "conversion_report.json"
MAX_WARNINGS_PER_REASON = 20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


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
    problem: str | None = None  # known before reading media (e.g. missing annotation)


@dataclasses.dataclass
class ConversionReport:
    """What a conversion wrote, skipped and repaired."""

    kind: str
    written: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))  # reason -> ids
    boxes: BoxReport = dataclasses.field(default_factory=BoxReport)
    repaired_ids: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def skip(self, reason: str, sample_id: str) -> None:
        self.skipped[reason].append(sample_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "written": dict(self.written),
            "num_skipped": self.num_skipped,
            "skipped": {k: list(v) for k, v in self.skipped.items()},
            "box_repairs": self.boxes.as_dict(),
            "repaired_ids": list(self.repaired_ids),
            **self.extra,
        }

    def summary(self) -> str:
        lines = [f"{self.kind}: wrote " + ", ".join(f"{k}={v}" for k, v in self.written.items())]
        for reason, ids in self.skipped.items():
            shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
            lines.append(f"  skipped {len(ids)} ({reason}): {shown}")
        if self.boxes.repaired:
            lines.append(f"  box repairs: {self.boxes.describe()} in {len(self.repaired_ids)} sample(s)")
        for k, v in self.extra.items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Validation of one candidate (runs in worker processes)
# --------------------------------------------------------------------------------------------------------------------


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build_row(c: Candidate) -> tuple[dict | None, str | None, BoxReport]:
    """Validate a candidate: ``(row, None, box_report)`` or ``(None, reason, box_report)``."""
    report = BoxReport()
    if c.problem:
        return None, c.problem, report
    if not c.image or not os.path.isfile(c.image):
        return None, "missing image", report
    if not c.audio or not os.path.isfile(c.audio):
        return None, "missing audio", report
    try:
        image_bytes = _read_bytes(c.image)
        decode_image(image_bytes)
    except (OSError, DataValidationError):
        return None, "corrupt image", report
    try:
        audio_bytes = _read_bytes(c.audio)
        decode_audio(audio_bytes)
    except (OSError, DataValidationError) as err:
        reason = str(err)
        if "empty" in reason:
            return None, "empty audio", report
        if "NaN" in reason or "infinite" in reason:
            return None, "NaN audio", report
        return None, "unreadable audio", report
    had_boxes = bool(c.boxes)
    boxes, report = clean_boxes(
        c.boxes if isinstance(c.boxes, (list, tuple)) else ([] if c.boxes is None else [c.boxes]), inverted=c.box_mode
    )
    if c.require_box and had_boxes and not boxes:
        return None, "no valid box", report
    row = {
        "id": c.id,
        "image": {"bytes": image_bytes, "path": os.path.basename(c.image)},
        "audio": {"bytes": audio_bytes, "path": os.path.basename(c.audio)},
        "boxes": boxes,
        "gt_rule": c.gt_rule,
        "label": c.label or "",
    }
    return row, None, report


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


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
        strict: raise :class:`DataValidationError` at the first bad sample instead of skipping it.
    """
    from tqdm.auto import tqdm

    report = report or ConversionReport(kind)
    # duplicated ids: keep the first occurrence (across all splits: the pseudo-label bank is keyed by id)
    seen: set[str] = set()
    by_split: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.id in seen:
            if strict:
                raise DataValidationError(f"duplicated id {c.id!r}")
            report.skip("duplicate id", c.id)
            continue
        seen.add(c.id)
        by_split[c.split].append(c)
    pool = None
    if num_workers > 1 and len(seen) >= 64:
        pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(num_workers)
    os.makedirs(output, exist_ok=True)
    try:
        for split, items in by_split.items():
            n = len(items)
            k = num_shards.get(split) if isinstance(num_shards, dict) else num_shards
            k = k or max(1, math.ceil(n / 1000))
            results = pool.imap(build_row, items, chunksize=16) if pool else map(build_row, items)
            written = 0
            with ShardWriter(output, split, XPL_FEATURES, rows_per_shard=even_shard_sizes(n, k)) as writer:
                for c, (row, reason, box_report) in tqdm(
                    zip(items, results), total=n, desc=f"{kind} {split}", disable=not progress, unit="sample"
                ):
                    report.boxes += box_report
                    if row is None:
                        if strict:
                            raise DataValidationError(f"sample {c.id!r} ({split}): {reason}")
                        report.skip(reason, c.id)
                        n_reason = len(report.skipped[reason])
                        if n_reason <= MAX_WARNINGS_PER_REASON:
                            logger.warning("skipping sample %r (%s): %s", c.id, split, reason)
                        elif n_reason == MAX_WARNINGS_PER_REASON + 1:
                            logger.warning("more samples skipped for %r: every id is in %s", reason, REPORT_NAME)
                        continue
                    if box_report.repaired:
                        report.repaired_ids.append(c.id)
                    writer.write(row)
                    written += 1
            report.written[split] = written
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


def read_id_list(path: str) -> list[str]:
    """Ids from the first column of a CSV/TXT list (one per line; blank lines and a header ``id``/``file`` skipped)."""
    ids = []
    with open(path) as f:
        for line in f:
            field = line.strip().split(",")[0].strip()
            if field and field.lower() not in ("id", "file", "filename", "video_id"):
                ids.append(field)
    return ids


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


def folder_candidates(input_dir: str) -> tuple[list[Candidate], ConversionReport]:
    """Candidates of a ``folder`` input (``annotations.json``)."""
    path = os.path.join(input_dir, "annotations.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: a folder dataset needs annotations.json (see `prepare folder -h`)")
    with open(path) as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise DataValidationError(f"{path}: expected a JSON list of {{id, image, audio, boxes, label, split}}")
    report = ConversionReport("folder")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not str(e.get("id") or "").strip():
            report.skip("missing id", f"<entry {i}>")
            continue
        sid = str(e["id"])
        rule = e.get("gt_rule") or ("union" if e.get("boxes") is not None else "none")
        c = Candidate(
            id=sid,
            split=str(e.get("split") or "train"),
            image=os.path.join(input_dir, e["image"]) if e.get("image") else None,
            audio=os.path.join(input_dir, e["audio"]) if e.get("audio") else None,
            boxes=e.get("boxes") or [],
            gt_rule=rule,
            label=str(e.get("label") or ""),
            box_mode="reorder",
            require_box=rule != "none",
        )
        try:
            check_gt_rule(rule, sample_id=sid)
        except DataValidationError as err:
            c.problem = f"bad gt_rule ({err})"
        if not c.split.replace("_", "").isalnum():
            c.problem = f"bad split name {c.split!r}"
        out.append(c)
    return out, report


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
    from xpl_hf.evaluation import flickr_boxes_from_xml

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
                c.problem = "missing annotation"
            else:
                try:
                    c.boxes = flickr_boxes_from_xml(xmls[sid], normalize=True)
                except ValueError:
                    c.problem = "bad annotation"
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
        width or height, dropped: 6 in the released file), ``entries_without_box`` (left without any box: 2) and
        ``box_repairs``.
    """
    with open(json_path) as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise DataValidationError(f"{json_path}: expected a JSON list of {{file, class, bbox}} entries")
    records: dict[str, dict[str, Any]] = {}
    total = BoxReport()
    corrupt, zero_area, empty, duplicates = [], [], [], []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "file" not in e or "bbox" not in e:
            raise DataValidationError(f"{json_path}: entry {i} lacks 'file' or 'bbox'")
        sid = str(e["file"])
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
        return Candidate(
            sid,
            split,
            frames.get(sid),
            audio.get(sid),
            boxes=r["boxes"],
            gt_rule="union",
            label=r["label"],
            box_mode="drop",
        )

    out = [make(sid, "test") for sid in records]
    for split, list_path in (("heard_test", heard_list), ("unheard_test", unheard_list)):
        if list_path:
            for sid in read_id_list(list_path):
                if sid in records:
                    c = make(sid, split)
                    c.id = sid  # same id in another split: ids are unique within a split
                    out.append(c)
                else:
                    report.skip(f"{split} id not in annotations", sid)
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
    if strict and report.num_skipped:
        raise DataValidationError(f"bad entries: {dict(report.skipped)}")
    return write(candidates)


def main(argv: list[str] | None = None) -> ConversionReport:
    parser = argparse.ArgumentParser(prog="python -m xpl_hf.data.prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--input", required=True, help="the downloaded dataset folder")
    common.add_argument("--output", required=True, help="output folder (parquet shards under OUTPUT/data/)")
    common.add_argument("--num_shards", type=int, default=None, help="shards per split (default: one per 1000 rows)")
    common.add_argument("--num_workers", type=int, default=1, help="processes reading/validating media")
    common.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of skipping it")
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
    report = convert(
        args.kind,
        args.input,
        args.output,
        num_shards=args.num_shards,
        num_workers=args.num_workers,
        strict=args.strict,
        **extra,
    )
    print(report.summary())
    if args.push_to_hub:
        push_to_hub(args.output, args.push_to_hub, private=args.private)
        print(f"pushed {args.output} to https://huggingface.co/datasets/{args.push_to_hub}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
