"""The one way xpl-hf opens a user's media file (video or audio) with PyAV, safely.

Every place that reads a user's video or audio with FFmpeg (the Space, the pipeline, the dataset converters) goes
through :func:`open_media`, which

- hands FFmpeg a Python file object, never a path or URL: FFmpeg resolves no protocol (``file:``, ``data:``,
  ``http:``, ``concat:``, ``subfile:``, ...) itself, and a path is opened by Python as a plain file;
- lets FFmpeg probe only the demuxers in :data:`ALLOWED_FORMATS` (its ``format_whitelist``: the probe refuses the
  file before any demuxer reads its header), checks ``container.format.name`` again after opening, and refuses every
  request of a demuxer to open a second file (``io_open``): HLS playlists (``.m3u8``), concat scripts, image
  sequences, MP4 external data references and anything not allow-listed are refused with :class:`MediaError`;
- bounds the probe (:data:`PROBE_BYTES`, :data:`PROBE_SECONDS`) so a hostile header cannot make FFmpeg read far.

:func:`probe_video` checks sizes, duration, frame and sample rates from the headers before decoding.
:func:`read_video_clip` seeks to the frame the protocol uses (the middle one by default) and decodes only the frames
and the audio window it returns (:func:`read_audio_window`: the sound alone), refusing truncated files; the audio is
mono float32 at the file's own rate (resampling is :mod:`xpl_hf.audio`'s job).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import PIL.Image

from .audio import MAX_SAMPLE_RATE
from .image import MAX_PIXELS

try:  # PyAV's wheels bundle the FFmpeg libraries: no system FFmpeg is needed.
    import av
except ImportError:  # pragma: no cover - depends on the environment
    av = None

__all__ = ["ALLOWED_FORMATS", "MediaError", "VideoClip", "VideoInfo", "apply_rotation", "open_media", "probe_video",
           "read_audio_window", "read_video_clip"]

ALLOWED_FORMATS: frozenset[str] = frozenset({  # FFmpeg's "mov,mp4,m4a,3gp,3g2,mj2" (MP4, MOV, M4A), "matroska,webm"
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",  # (MKV, WebM, browser recordings), AVI
    "wav", "flac", "ogg", "mp3", "aac"})  # and audio-only uploads (ADTS .aac)
"""FFmpeg demuxer names a user's file may have; FFmpeg joins a demuxer's aliases with commas, any one matching."""
_ALLOWED_TEXT = "MP4/MOV/M4A, Matroska/WebM, AVI, WAV, FLAC, OGG, MP3, AAC"

PROBE_BYTES = 5 * 1024 * 1024  # read at most this much to identify the streams (FFmpeg's probesize)
PROBE_SECONDS = 5.0  # and analyse at most this much media time (FFmpeg's analyzeduration)
MAX_FRAME_SIDE = 8192
MAX_FRAME_PIXELS = MAX_PIXELS  # 64 MP, as for images
MAX_DURATION_SECONDS = 24 * 3600.0
MAX_CHANNELS = 64
MAX_DECODE_FRAMES = 600  # frames decoded from the keyframe before the wanted time, at most; beyond: refused
UNKNOWN_DURATION_LIMIT_SECONDS = 600.0  # a sound without a duration is decoded this far, at most, then refused
AUDIO_SEEK_SLACK_SECONDS = 30.0  # audio decoded before the window, at most, when a seek lands early (no index)
TRUNCATION_SLACK = 0.3  # s: frames or sound stopping earlier than their header says, by more, are a truncated file


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file and the problem.

    `reason` is a short category for reports: "refused format", "unreadable media", "no video", "no audio",
    "bad header", "bad time", "truncated media", "too long".
    """

    def __init__(self, message: str, reason: str = "unreadable media"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep `reason` across processes (converter workers)
        return type(self), (str(self), self.reason)


@dataclass
class VideoInfo:
    """What a media file's headers say (nothing decoded but, for `rotation`, the first video frame)."""

    duration_s: float | None  # None: the headers do not say
    width: int
    height: int
    fps: float | None  # average frame rate; None when the headers do not say
    has_video: bool
    has_audio: bool
    audio_rate: int | None
    audio_channels: int | None
    rotation: int  # counter-clockwise degrees the frames are turned for display (display matrix), multiple of 90
    format_name: str = ""


@dataclass
class VideoClip:
    """Frames and sound around one time of a video.

    `frames`: RGB PIL images, rotation applied; `frame_times`: their times (s); `audio`: float32 mono (samples,) at
    `sampling_rate` (the file's own rate), or None when the file has no audio stream; `time`: the time used (s).
    """

    frames: list[PIL.Image.Image]
    frame_times: list[float]
    audio: np.ndarray | None
    sampling_rate: int | None
    time: float
    info: VideoInfo | None = field(default=None, repr=False)


class _OwnedFile(io.FileIO):
    """A file opened here for a path: PyAV never closes file objects, so this one closes itself when dropped."""

    def __del__(self) -> None:
        self.close()  # a no-op when already closed


def _display_name(source: Any, name: str | None) -> str:
    """How messages call a file: `name`, else the base name of its path (or of a file object's name)."""
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", None)
    return name or (os.path.basename(path) if isinstance(path, str) and os.path.basename(path) else "media file")


def _refuse_nested_open(url: str, flags: int, options: dict) -> BinaryIO:  # PyAV's io_open: no second file, ever
    raise PermissionError("a media file may not open other files or URLs")


def open_media(source: Any, name: str | None = None) -> av.container.InputContainer:
    """Open a user's media file with PyAV, refusing everything outside the allow-list (module docstring).

    Args:
        source: a path (opened by Python, never resolved by FFmpeg), bytes, or a readable binary file object (e.g.
            ``tarfile.open(...).extractfile(member)``).
        name: how messages call the file (default: its base name).

    Returns:
        An open ``av.container.InputContainer`` (use it as a context manager).

    Raises:
        MediaError: missing/empty file, a format outside :data:`ALLOWED_FORMATS` (playlists, concat scripts, image
            sequences, ...), a demuxer asking to open another file, or an unreadable/corrupt header.
    """
    label = _display_name(source, name)
    if av is None:
        raise MediaError(f"cannot read '{label}': video needs the `av` package (PyAV): pip install av")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise MediaError(f"media file '{label}' does not exist (or is not a regular file).")
        if os.path.getsize(path) == 0:
            raise MediaError(f"media file '{label}' is empty (0 bytes).")
        file: Any = _OwnedFile(path, "rb")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaError(f"media file '{label}' is empty (0 bytes).")
        file = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        file = source
    else:
        raise MediaError(f"cannot read '{label}': expected a path, bytes or a binary file object, got "
                         f"{type(source).__name__}.")
    options = {"format_whitelist": ",".join(sorted(ALLOWED_FORMATS)), "probesize": str(PROBE_BYTES),
               "analyzeduration": str(int(PROBE_SECONDS * 1_000_000))}
    try:
        container = av.open(file, "r", container_options=options, io_open=_refuse_nested_open)
    except Exception as err:  # noqa: BLE001 - PermissionError from io_open, av's error classes, OSError
        if isinstance(file, _OwnedFile):
            file.close()
        if isinstance(err, PermissionError):
            raise MediaError(f"refused '{label}': it refers to other files or URLs (a playlist or a reference file); "
                             "only self-contained media files are read.", "refused format") from None
        if getattr(err, "errno", None) == 22:  # EINVAL: the probe found a format outside format_whitelist
            raise MediaError(f"refused '{label}': its format is not one of the allowed media formats ({_ALLOWED_TEXT});"
                             " playlists, concat scripts and image sequences are never read.", "refused format") \
                from None
        if isinstance(err, av.error.InvalidDataError):
            raise MediaError(f"cannot read '{label}': not a media file of an allowed format ({_ALLOWED_TEXT}), or a "
                             "corrupt or truncated one.") from None
        raise MediaError(f"cannot read '{label}': {getattr(err, 'strerror', None) or err}") from None
    format_name = container.format.name or ""
    if not any(alias in ALLOWED_FORMATS for alias in format_name.split(",")):  # the whitelist refused it already
        container.close()
        raise MediaError(f"refused '{label}': format '{format_name}' is not allowed ({_ALLOWED_TEXT}).",
                         "refused format")
    return container


def _duration(container, label: str) -> float | None:
    streams = list(container.streams.video[:1]) + list(container.streams.audio[:1])
    if container.duration is not None:
        value = container.duration / av.time_base
    else:
        value = next((float(s.duration * s.time_base) for s in streams if s.duration and s.time_base), None)
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0 or value > MAX_DURATION_SECONDS:
        raise MediaError(f"'{label}': its header gives an implausible duration ({value} s).", "bad header")
    return float(value)


def _check_frame_size(width: int, height: int, label: str) -> None:
    if width <= 0 or height <= 0 or max(width, height) > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS:
        raise MediaError(f"'{label}': video frames of {width} x {height} px are refused (at most {MAX_FRAME_SIDE} px "
                         f"a side and {MAX_FRAME_PIXELS / 1e6:.0f} megapixels).", "bad header")


def _rotation(frame) -> int:
    """Counter-clockwise degrees from the frame's display matrix, rounded to a multiple of 90 (0 when none)."""
    degrees = getattr(frame, "rotation", 0) or 0  # VideoFrame.rotation: PyAV >= 14
    return int(round(degrees / 90.0)) % 4 * 90 if math.isfinite(degrees) else 0


def apply_rotation(image: PIL.Image.Image, rotation: int) -> PIL.Image.Image:
    """Turn `image` counter-clockwise by `rotation` degrees (0/90/180/270), as a player shows the frame."""
    return image.rotate(rotation, expand=True) if rotation in (90, 180, 270) else image


def _info(container, label: str, *, read_rotation: bool = True,
          check: Callable[[VideoInfo], None] | None = None) -> VideoInfo:
    """Header facts of an open container, validated (see :func:`probe_video`), then passed to `check`."""
    duration = _duration(container, label)
    width = height = 0
    fps = None
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    if video is not None:
        width, height = video.codec_context.width, video.codec_context.height
        _check_frame_size(width, height, label)
        rate = float(video.average_rate or video.guessed_rate or 0)
        fps = rate if 0 < rate <= 1000 else None  # a broken rate field: frame times come from the timestamps anyway
    audio_rate = channels = None
    if audio is not None:
        audio_rate = int(audio.rate or audio.codec_context.sample_rate or 0)
        if not 0 < audio_rate <= MAX_SAMPLE_RATE:
            raise MediaError(f"'{label}': its audio header gives a sample rate of {audio_rate} Hz (accepted: 1 to "
                             f"{MAX_SAMPLE_RATE} Hz).", "bad header")
        channels = int(audio.codec_context.channels or 0)
        if not 0 < channels <= MAX_CHANNELS:
            raise MediaError(f"'{label}': its audio header gives {channels} channels (accepted: 1 to {MAX_CHANNELS}).",
                             "bad header")
    info = VideoInfo(duration, width, height, fps, video is not None, audio is not None, audio_rate, channels, 0,
                     container.format.name)
    if check is not None:
        check(info)
    if video is not None and read_rotation:
        try:
            first = next(container.decode(video), None)
        except av.error.FFmpegError as err:
            raise MediaError(f"cannot decode the video of '{label}': {err.strerror or err}", "unreadable media") \
                from None
        if first is not None:
            _check_frame_size(first.width, first.height, label)
            info.rotation = _rotation(first)
        container.seek(0)
    return info


def probe_video(source: Any, name: str | None = None) -> VideoInfo:
    """Header facts of a media file, validated before any decoding (the first video frame gives `rotation`).

    Raises MediaError for a refused or unreadable file, frames over 8192 px a side or 64 MP, a NaN, infinite,
    non-positive or over-a-day duration, an audio rate of 0 or over 384 kHz, no or over 64 channels."""
    label = _display_name(source, name)
    with open_media(source, label) as container:
        return _info(container, label)


def _check_time(time: float, duration: float | None, label: str) -> float:
    t = float(time) if isinstance(time, (int, float)) else math.nan
    if not math.isfinite(t) or t < 0 or (duration is not None and t > duration):
        span = f"0 to {duration:.3f} s" if duration is not None else "0 s or more"
        raise MediaError(f"time={time!r} is not a time in the video '{label}' (seconds, {span}).", "bad time")
    return t


def _frames_from(container, stream, t: float, first_slack: float = 0.0) -> Iterator:
    """Decoded frames of `stream` from the last one starting at or before `t` s on, reached by seeking; a demuxer that
    lands after `t` (Matroska audio without cues) is sought again from further back: 1 s, 10 s, then the start."""
    for slack in (first_slack, max(first_slack, 1.0), 10.0, math.inf):
        container.seek(int(max(t - slack, 0.0) * av.time_base), backward=True, any_frame=False)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            return
        if first.time is None or first.time <= t + 1e-3 or t - slack <= 0:
            yield first
            yield from frames
            return


def _decode_frames_at(container, stream, targets: list[float], label: str):
    """The frame on screen at each target time: the last one starting at or before it (with a variable frame rate the
    next one may start much later), the first frame for a target before it, the last frame past the end."""
    rate = float(stream.average_rate or stream.guessed_rate or 30)
    budget = MAX_DECODE_FRAMES + math.ceil((targets[-1] - targets[0]) * min(rate, 1000))
    chosen, last = [], None
    try:
        for count, frame in enumerate(_frames_from(container, stream, targets[0]), start=1):
            _check_frame_size(frame.width, frame.height, label)  # the decoded size, whatever the header said
            while len(chosen) < len(targets) and (frame.time is None or frame.time > targets[len(chosen)] + 1e-3):
                chosen.append(frame if last is None or frame.time is None else last)  # `last` is on screen then
            last = frame
            if len(chosen) == len(targets):
                break
            if count >= budget:
                raise MediaError(f"cannot reach the frame at {targets[len(chosen)]:.3f} s of '{label}': it lies more "
                                 f"than {MAX_DECODE_FRAMES} frames after the previous keyframe (re-encode the video "
                                 "with more keyframes).", "unreadable media")
    except av.error.FFmpegError:
        pass  # a decoding error part-way: what was decoded, then the truncation checks below
    if last is None:
        raise MediaError(f"'{label}' holds no decodable video frame near {targets[0]:.3f} s (corrupt or truncated).",
                         "truncated media")
    missing = targets[len(chosen):]
    if missing and last.time is not None and min(missing[0], _end(stream)) > last.time + TRUNCATION_SLACK:
        raise MediaError(f"'{label}' is truncated: its frames stop at {last.time:.2f} s, before {missing[0]:.2f} s.",
                         "truncated media")
    chosen += [last] * len(missing)  # targets past the last frame of the stream get that frame
    frames = [apply_rotation(f.to_image().convert("RGB"), _rotation(f)) for f in chosen]
    times = [float(f.time) if f.time is not None else t for f, t in zip(chosen, targets)]
    return frames, times, _rotation(chosen[0])


def _decode_audio_window(container, stream, start: float, seconds: float, label: str) -> np.ndarray:
    """Mono float32 samples of [start, start + seconds) at the stream's own rate (seeking to `start` first)."""
    rate = int(stream.rate or stream.codec_context.sample_rate)
    downmix = av.AudioResampler(format="flt", layout="mono", rate=rate)  # channels averaged, rate unchanged
    chunks, decoded, first_time, needed = [], 0, None, 0
    budget = (seconds + AUDIO_SEEK_SLACK_SECONDS) * rate
    try:
        for frame in _frames_from(container, stream, start, first_slack=0.5):
            if first_time is None:
                first_time = float(frame.time) if frame.time is not None else 0.0
                needed = math.ceil((start + seconds - first_time) * rate)
            frame.pts = None  # the resampler re-times frames itself; gaps in the stamps must not stop it
            for out in downmix.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                decoded += chunks[-1].size
            if decoded >= needed:
                break
            if decoded > budget:
                raise MediaError(f"cannot reach the sound at {start:.2f} s of '{label}': the file cannot be searched "
                                 "(no index).", "unreadable media")
        chunks += [out.to_ndarray().reshape(-1) for out in downmix.resample(None)]
    except av.error.FFmpegError:
        pass  # a decoding error part-way: what was decoded, then the truncation check below
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    offset = max(0, round((start - (first_time or 0.0)) * rate))
    samples = samples[offset:offset + math.ceil(seconds * rate)]
    expected = min(seconds, _end(stream) - start)
    if samples.size == 0 or samples.size < (expected - TRUNCATION_SLACK) * rate:
        raise MediaError(f"the audio of '{label}' is truncated: {samples.size / rate:.2f} s of sound from "
                         f"{start:.2f} s where the header promises {expected:.2f} s.", "truncated media")
    return samples  # NaN / infinite samples are refused by xpl_hf.audio.check_waveform, as for every clip


def _end(stream) -> float:
    """End of `stream` in seconds from its own header, else its container's; inf when neither says."""
    if stream.duration and stream.time_base:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    return stream.container.duration / av.time_base if stream.container.duration else math.inf


def _window_start(centre: float, seconds: float, duration: float | None) -> float:
    """Start of the `seconds` window centred on `centre`, moved inside [0, duration] when it sticks out."""
    start = centre - seconds / 2
    if duration is not None:
        start = min(start, duration - seconds)
    return max(0.0, start)


def read_video_clip(source: Any, *, time: float | None = None, clip_seconds: float = 3.0, num_frames: int = 1,
                    frame_spacing: float | None = None, name: str | None = None,
                    check: Callable[[VideoInfo], None] | None = None) -> VideoClip:
    """Frames and the audio window around one time of a video, decoding only those.

    Args:
        source: path, bytes or binary file object (see :func:`open_media`).
        time: seconds; None = the protocol's frame, the middle of the video (duration / 2).
        clip_seconds: length of the audio window, centred on `time` (moved inside the file near its ends).
        num_frames: K frames; with K > 1 they are spread around `time`, `frame_spacing` s apart (default
            clip_seconds / K), times kept inside the video (training augmentation).
        name: how messages call the file.
        check: called with the header facts before anything is decoded (a caller's own, stricter limits); what it
            raises propagates.

    Returns:
        A :class:`VideoClip`; `audio` is None when the file has no audio stream (the caller decides).

    Raises:
        MediaError: refused/unreadable file, absurd headers, no video stream, a NaN/negative/past-the-end `time`
            (reason "bad time", the message names the time), or undecodable frames.
    """
    label = _display_name(source, name)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= 64:
        raise ValueError(f"num_frames={num_frames!r} must be an integer from 1 to 64.")
    if not 0 < clip_seconds <= 600:  # False for NaN too
        raise ValueError(f"clip_seconds={clip_seconds!r} must be in (0, 600].")
    with open_media(source, label) as container:
        info = _info(container, label, read_rotation=False, check=check)
        if not info.has_video:
            raise MediaError(f"'{label}' has no video stream.", "no video")
        if time is None and info.duration_s is None:
            raise MediaError(f"'{label}' does not give its duration; pass the time of the frame.", "bad header")
        t = info.duration_s / 2 if time is None else _check_time(time, info.duration_s, label)
        targets = [t]
        if num_frames > 1:
            spacing = clip_seconds / num_frames if frame_spacing is None else float(frame_spacing)
            if not (math.isfinite(spacing) and spacing > 0):
                raise ValueError(f"frame_spacing={frame_spacing!r} must be a positive number of seconds.")
            end = info.duration_s if info.duration_s is not None else math.inf
            targets = sorted(min(max(t + (k - (num_frames - 1) / 2) * spacing, 0.0), end)
                             for k in range(num_frames))
        frames, times, info.rotation = _decode_frames_at(container, container.streams.video[0], targets, label)
        audio = None
        if info.has_audio:
            stream = container.streams.audio[0]
            end = min(info.duration_s or math.inf, _end(stream))  # a sound shorter than the video: the window inside it
            start = _window_start(t, clip_seconds, end if math.isfinite(end) else None)
            audio = _decode_audio_window(container, stream, start, clip_seconds, label)
    return VideoClip(frames, times, audio, info.audio_rate if info.has_audio else None, t, info)


def read_audio_window(source: Any, *, seconds: float, centre: float | None = None, name: str | None = None,
                      max_duration: float | None = None,
                      check: Callable[[VideoInfo], None] | None = None) -> tuple[np.ndarray, int]:
    """The `seconds` of sound centred on `centre` (default: the middle of the file) -> (mono float32, rate).

    `max_duration`: refuse files whose header says they are longer (checked before decoding); a file that does not
    say its duration is decoded from its start up to `max_duration` (default
    :data:`UNKNOWN_DURATION_LIMIT_SECONDS`) + 0.5 s, refused if its sound goes on, and returned whole otherwise.
    `check`: as for :func:`read_video_clip`.

    Raises:
        MediaError: refused/unreadable file, absurd headers, no audio stream, too long, or undecodable audio.
    """
    label = _display_name(source, name)
    with open_media(source, label) as container:
        info = _info(container, label, read_rotation=False, check=check)
        if not info.has_audio:
            raise MediaError(f"'{label}' has no audio stream.", "no audio")
        stream = container.streams.audio[0]
        duration = info.duration_s
        if max_duration is not None and duration is not None and duration > max_duration:
            raise MediaError(f"'{label}' is {duration:.1f} s long; the limit is {max_duration:g} s.", "too long")
        if duration is None:
            limit = max_duration if max_duration is not None else UNKNOWN_DURATION_LIMIT_SECONDS
            samples = _decode_audio_window(container, stream, 0.0, limit + 0.5, label)
            if samples.size > limit * info.audio_rate:
                raise MediaError(f"'{label}' is longer than the limit of {limit:g} s.", "too long")
            return samples, info.audio_rate
        centre = duration / 2 if centre is None else _check_time(centre, duration, label)
        start = _window_start(centre, seconds, duration)
        return _decode_audio_window(container, stream, start, seconds, label), info.audio_rate
