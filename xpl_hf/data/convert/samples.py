"""One sample of a conversion: a :class:`Candidate` (what the annotations say), the :class:`ClipOptions` of videos,
the :class:`RowResult` that :func:`~xpl_hf.data.convert.rows.build_row` makes of it, and the helpers both row paths
share (reading a media file, encoding JPEG / WAV, split names).

A candidate's media are either an image file and an audio file, stored as they are, or one video, from which the
frame and the audio window around it are taken (:mod:`.video`). Media are file paths, or
:class:`~xpl_hf.data.convert.archive.ArchiveMember` s whose bytes the writer reads in the main process and hands over
(a large member as a temporary copy).
Checks before anything is decoded: a file's size (:data:`MAX_IMAGE_BYTES`, :data:`MAX_AUDIO_BYTES`; a 4 GiB audio
file is refused unread) and the audio header (soundfile reads the header only); videos are checked from their
headers by :mod:`xpl_hf.media`, which opens only allow-listed container formats and seeks to the window it decodes.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import random
import re
from typing import Any

import numpy as np
import PIL.Image
import soundfile as sf

from ..schema import BoxReport
from .archive import ArchiveMember
from .report import SampleProblem, shown

MAX_IMAGE_BYTES = 64 * 2**20
"""Image files larger than this are refused from their size, unread."""
MAX_AUDIO_BYTES = 256 * 2**20
"""Audio files larger than this are refused from their size, unread (cut long recordings around the frame first)."""
MAX_VIDEO_BYTES = 4 * 2**30
"""Video files larger than this are refused from their size (a video itself is only read around its frame)."""
SILENCE_PEAK = 1e-4
"""An audio window whose peak stays below this (-80 dBFS) is kept but reported as ``silent audio``."""

SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
"""A valid split name (it becomes part of the shard file names and of the Hub dataset's splits)."""

MediaRef = str | ArchiveMember


def split_problem(split: str) -> tuple[str, str] | None:
    """(reason, detail) when ``split`` is not a valid split name, else None."""
    if SPLIT_NAME.fullmatch(split):
        return None
    return "bad split name", f"split {split!r} is not a split name (letters, digits and _ only)"


@dataclasses.dataclass
class Candidate:
    """One sample before validation: media references (None when missing), raw boxes and where it goes.

    ``video`` replaces ``image`` + ``audio``; ``time`` (seconds) is its frame time (None: the option's, by default
    the middle frame).
    """

    id: str
    split: str
    image: MediaRef | None = None
    audio: MediaRef | None = None
    video: MediaRef | None = None
    time: float | None = None
    boxes: Any = None
    gt_rule: str = "none"
    label: str = ""
    box_mode: str = "reorder"  # clean_boxes(inverted=...)
    require_box: bool = False  # skip the sample if it had boxes and none survives cleaning
    objects: list[dict] | None = None  # every visible object (box, label, sounding), checked; None: unknown
    copy_of: str | None = None  # the row is that split's row of the same id, copied (media are not read again)
    problem: tuple[str, str] | None = None  # (reason, detail) known before reading media: the sample is skipped
    notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (reason, detail): reported, kept

    def media(self) -> list[MediaRef]:
        return [m for m in (self.video, self.image, self.audio) if m is not None]


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """How a video becomes a row.

    Attributes:
        frame_time: seconds into the clip of the stored frame; None = the middle frame (the protocol's).
        frames_per_clip: K > 1 also stores K frames spread over the audio window in the ``frames`` column (training
            picks one per visit; evaluation always uses ``image``).
        clip_seconds: length of the stored audio window, centred on the frame (the model's ``clip_seconds``).
        sample_rate: the stored audio's rate; the window is mixed to mono and resampled once, at conversion.
        audio_format: ``"wav"`` (16-bit PCM, the fastest to read back) or ``"flac"``.
        jpeg_quality: quality of the stored JPEG frames.
    """

    frame_time: float | None = None
    frames_per_clip: int = 1
    clip_seconds: float = 3.0
    sample_rate: int = 22050
    audio_format: str = "wav"
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        for problem in clip_option_problems(self):
            raise ValueError(problem)


CLIP_OPTION_BOUNDS = {  # option -> (low, high, integer): the converter's flags of the same names are checked alike
    "frames_per_clip": (1, 64, True),
    "clip_seconds": (0.01, 60.0, False),
    "sample_rate": (8000, 192_000, True),
    "jpeg_quality": (1, 100, True),
}
"""Accepted ranges of :class:`ClipOptions` (``frame_time``: None or a finite number >= 0)."""


def bound_problem(flag: str, value: Any, low: float, high: float, integer: bool) -> str | None:
    """Why ``value`` is not a number in ``[low, high]`` (an integer when ``integer``) for ``flag``; None when it is."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high and (not integer or float(value).is_integer())
    if ok:
        return None
    kind = "an integer" if integer else "a number"
    return f"{flag} {value!r}: must be {kind} from {low:g} to {high:g}"


def clip_option_problems(options: ClipOptions) -> list[str]:
    """Every out-of-range value of ``options``, each naming its flag (``--sample_rate ...``)."""
    problems = [p for name, (low, high, integer) in CLIP_OPTION_BOUNDS.items()
                if (p := bound_problem(f"--{name}", getattr(options, name), low, high, integer))]
    t = options.frame_time
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0):
        problems.append(f"--frame_time {t!r}: must be a finite number of seconds >= 0")
    if options.audio_format not in ("wav", "flac"):
        problems.append(f"--audio_format {options.audio_format!r}: must be 'wav' or 'flac'")
    return problems


@dataclasses.dataclass
class RowResult:
    """What :func:`build_row` made of a candidate: a row, or the reason it was refused."""

    row: dict | None
    reason: str | None = None
    detail: str = ""
    box_report: BoxReport = dataclasses.field(default_factory=BoxReport)
    notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # time per stage (video rows)


def carve(rows: list[Candidate], validation_fraction: float, test_fraction: float, seed: int) -> dict[str, int]:
    """Move ``validation_fraction`` / ``test_fraction`` of ``rows`` to ``validation`` / ``test``, drawn with ``seed``
    from the rows sorted by id (the same rows and seed give the same draw, whatever their order)."""
    if not (0 <= validation_fraction and 0 <= test_fraction and validation_fraction + test_fraction < 1):
        raise ValueError(f"--validation_fraction ({validation_fraction}) and --test_fraction ({test_fraction}) must "
                         "be >= 0 and leave some labeled rows (sum < 1)")
    boxed = sorted(rows, key=lambda c: c.id)
    random.Random(seed).shuffle(boxed)
    n_val, n_test = round(validation_fraction * len(boxed)), round(test_fraction * len(boxed))
    for c in boxed[:n_val]:
        c.split = "validation"
    for c in boxed[n_val:n_val + n_test]:
        c.split = "test"
    return {"validation": n_val, "test": n_test}


def media_name(ref: MediaRef) -> str:
    """The file name stored with the media (no folder: rows never carry local paths)."""
    return shown(os.path.basename(ref.name if isinstance(ref, ArchiveMember) else ref))


def read_file(ref: MediaRef, what: str, unreadable: str, limit: int, loaded: dict[str, bytes | str]) -> bytes:
    """The bytes of a media file, size-checked first (``loaded`` holds archive members read by the writer: their bytes,
    or for a large member the path of its temporary copy)."""
    if isinstance(ref, ArchiveMember):
        if ref.size > limit:
            raise SampleProblem(f"{what} file too large", f"{what} '{ref}' is {ref.size} bytes; the limit is {limit}")
        data = loaded[str(ref)]
        if isinstance(data, bytes):
            return data
        ref = data  # a large member: the writer's temporary copy of it
    if not os.path.isfile(ref):
        raise SampleProblem(f"missing {what}", f"{what} file '{shown(ref)}' does not exist")
    try:
        size = os.path.getsize(ref)
        if size > limit:
            raise SampleProblem(f"{what} file too large", f"{what} file '{shown(ref)}' is {size} bytes; the limit is "
                                f"{limit} (not read)")
        if what == "audio":
            sf.info(ref)  # the header only: a file soundfile cannot read is refused before being read whole
        with open(ref, "rb") as f:
            return f.read()
    except (sf.LibsndfileError, RuntimeError) as err:
        raise SampleProblem(unreadable, f"{what} file '{shown(ref)}': {err}") from None
    except OSError as err:
        raise SampleProblem(unreadable, f"{what} file '{shown(ref)}': {err.strerror or err}") from None


def silence_notes(mono: np.ndarray) -> list[tuple[str, str]]:
    """``[("silent audio", detail)]`` when the (samples,) waveform's peak is below :data:`SILENCE_PEAK`, else []."""
    peak = float(np.abs(mono).max()) if mono.size else 0.0
    return [("silent audio", f"peak {peak:.1e} < {SILENCE_PEAK:g}: kept (silent clips are valid input)")] \
        if peak < SILENCE_PEAK else []


def encode_jpeg(image: PIL.Image.Image, quality: int) -> bytes:
    """An RGB JPEG of ``image`` at ``quality``."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_audio(mono: np.ndarray, rate: int, audio_format: str) -> bytes:
    """float32 mono samples -> WAV (16-bit PCM) or FLAC bytes."""
    buf = io.BytesIO()
    sf.write(buf, mono, rate, format=audio_format.upper(), subtype="PCM_16")
    return buf.getvalue()
