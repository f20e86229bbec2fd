"""The ``flickr`` format: a Flickr-SoundNet download.

``DIR/frames/<id>.jpg`` + ``DIR/audio/<id>.wav`` (any soundfile format), or ``DIR/videos/<id>.mp4`` (any allow-listed
video; used for the ids without both a frame and an audio file), and ``DIR/Annotations/<id>.xml`` (three annotators'
boxes in 256-px coordinates, stored normalised ``v / 256``; ``gt_rule="flickr"``). ``--input`` may also be a .tar /
.tar.gz archive holding those files (members are matched by file name, wherever they are in the archive). Splits
``test`` and ``labeled`` come from id lists (first column of a CSV/TXT); ``--validation_fraction`` moves that
fraction of the ``labeled`` ids (drawn with ``--seed``) to ``validation``; ``--unlabeled`` adds every other id with
media as ``unlabeled`` (``gt_rule="none"``). Symbolic links in the folders are followed (they often point to a
dataset disk).
"""

from __future__ import annotations

import io
import os

from ..annotations import flickr_boxes_from_xml
from .archive import ArchiveError, ArchiveMember, ArchiveReader
from .report import ConversionReport, shown
from .samples import Candidate, carve
from .sources import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_inputs, index_inputs, read_ids

MAX_XML_BYTES = 1 * 2**20
"""Largest annotation XML read (Flickr-SoundNet's are under 2 kB)."""


def _parse_members(refs: list, parse) -> dict[str, object]:
    """``{str(member): parse(bytes) or the error}`` of the archive members among ``refs``, read in one forward pass (a
    .tar.gz cannot seek back) and parsed one by one, so only one member is in memory at a time; a member over
    :data:`MAX_XML_BYTES` is refused unread."""
    members = sorted((r for r in refs if isinstance(r, ArchiveMember)), key=lambda m: (m.archive, m.offset))
    out: dict[str, object] = {}
    with ArchiveReader() as reader:
        for m in members:
            try:
                out[str(m)] = parse(io.BytesIO(reader.read(m, limit=MAX_XML_BYTES)))
            except ArchiveError as err:
                if str(err).startswith("corrupt archive"):
                    raise
                out[str(m)] = ValueError(f"{m.size} bytes; the limit for an annotation is {MAX_XML_BYTES}")
            except (ValueError, OSError) as err:
                out[str(m)] = err
    return out


def _xml_boxes(source) -> list:
    return flickr_boxes_from_xml(source, normalize=True)


def _boxes(ref, parsed: dict[str, object]) -> list:
    if not isinstance(ref, ArchiveMember):
        if os.path.getsize(ref) > MAX_XML_BYTES:
            raise ValueError(f"{os.path.getsize(ref)} bytes; the limit for an annotation is {MAX_XML_BYTES}")
        return _xml_boxes(ref)
    value = parsed[str(ref)]
    if isinstance(value, Exception):
        raise value
    return value


def flickr_candidates(
    input_dir: str,
    test_list: str | None,
    labeled_list: str | None = None,
    unlabeled: bool = False,
    frames_dir: str = "frames",
    audio_dir: str = "audio",
    video_dir: str = "videos",
    annotations_dir: str = "Annotations",
    validation_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[list[Candidate], ConversionReport]:
    """Candidates of a Flickr-SoundNet download (module docstring)."""
    inputs = [input_dir]
    check_inputs(inputs, "Flickr-SoundNet")
    frames = index_inputs(inputs, frames_dir, IMAGE_EXTENSIONS)
    audio = index_inputs(inputs, audio_dir, AUDIO_EXTENSIONS)
    videos = index_inputs(inputs, video_dir, VIDEO_EXTENSIONS)
    xmls = index_inputs(inputs, annotations_dir, (".xml",))
    report = ConversionReport("flickr")

    def make(sid: str, split: str, **kwargs) -> Candidate:
        if sid in frames and sid in audio:
            return Candidate(sid, split, image=frames[sid], audio=audio[sid], **kwargs)
        if sid in videos:
            return Candidate(sid, split, video=videos[sid], **kwargs)
        c = Candidate(sid, split, image=frames.get(sid), audio=audio.get(sid), **kwargs)
        if not c.media():
            c.problem = ("missing media",
                         f"no {frames_dir}/{sid}.jpg + {audio_dir}/{sid}.wav nor {video_dir}/{sid}.mp4")
        return c

    lists = {split: read_ids(path) for split, path in (("test", test_list), ("labeled", labeled_list)) if path}
    xml_boxes = _parse_members([xmls[sid] for ids in lists.values() for sid in ids if sid in xmls], _xml_boxes)
    out: list[Candidate] = []
    annotated: set[str] = set()
    for split, ids in lists.items():
        for sid in ids:
            annotated.add(sid)
            c = make(sid, split, gt_rule="flickr", box_mode="drop")
            if sid not in xmls:
                c.problem = ("missing annotation", f"no {annotations_dir}/{sid}.xml")
            else:
                try:
                    c.boxes = _boxes(xmls[sid], xml_boxes)
                except (ValueError, OSError) as err:
                    c.problem = ("bad annotation", f"{shown(str(xmls[sid]))}: {err}")
            out.append(c)
    if validation_fraction:
        moved = carve([c for c in out if c.split == "labeled" and not c.problem], validation_fraction, 0.0, seed)
        report.extra["carved_from_labeled"] = {"validation": moved["validation"], "seed": seed}
    if unlabeled:
        for sid in sorted(((set(frames) & set(audio)) | set(videos)) - annotated):
            out.append(make(sid, "unlabeled", gt_rule="none"))
    return out, report
