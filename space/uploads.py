"""The Space's uploads: Gradio payloads -> the image, sound or video frame the model uses, within the page's limits.

Every reader checks the upload's size, then the sizes, durations and pixel counts its headers give, before decoding
anything; only what the model uses is decoded (the audio window, the video frame). Images follow the package's image
rule (`xpl_hf.image.load_image`, EXIF orientation included); videos and the audio formats soundfile does not read go
through `xpl_hf.media`, the package's one way to open a user's media with PyAV: allow-listed container formats only
(playlists such as an uploaded `x.m3u8`, concat scripts, image sequences and protocol URLs are refused), seek, then
decode the window. Messages name an upload by its own file name, never by the server's temporary path.
"""

from __future__ import annotations

import functools
import math
import os
import re

import numpy as np
import PIL.Image

from xpl_hf.audio import WINDOW_MARGIN_SECONDS, AudioError, decode_audio
from xpl_hf.image import MAX_PIXELS, ImageError, load_image
from xpl_hf.media import MediaError, VideoInfo, probe_video, read_audio_window, read_video_clip

try:  # PyAV's wheels bundle the FFmpeg libraries: no system FFmpeg needed.
    import av  # noqa: F401

    HAVE_AV = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_AV = False

MAX_IMAGE_MB = 20
MAX_AUDIO_MB = 20
MAX_VIDEO_MB = 100
MAX_AUDIO_SECONDS = 60.0
MAX_VIDEO_SECONDS = 30 * 60.0
MAX_IMAGE_SIDE = 4096  # images and video frames; also at most xpl_hf.image.MAX_PIXELS pixels
MIN_IMAGE_SIDE = 8
IMAGE_FORMATS = "JPEG, PNG, WebP, BMP, GIF, TIFF"
AUDIO_FORMATS = "WAV, FLAC, OGG, MP3"
VIDEO_FORMATS = "MP4, MOV, M4V, Matroska/WebM, AVI"


class InputError(ValueError):
    """A user input the app cannot use; the message is shown in the page as is."""


def file_path(value) -> str | None:
    """A Gradio file payload (FileData dict, as received with preprocess=False), or a path -> the local path."""
    if value is None:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("video"), dict):  # gr.Video's payload: {"video": FileData, "subtitles": ...}
            value = value["video"]
        return value.get("path")
    return str(getattr(value, "path", value))


def _name(path: str | None) -> str:
    """How a message calls an uploaded file: its own name (Gradio keeps it), else "the uploaded file"."""
    name = os.path.basename(path or "")
    return f"'{name}'" if name else "the uploaded file"


_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s'"/]+/)+([^\s'"/]+)""")


def strip_paths(text: str) -> str:
    """Replace every absolute path in `text` by its file name (the server's folders stay private)."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def _gone(path: str, what: str) -> InputError:
    return InputError(f"The {what} file {_name(path)} is no longer on the server (uploads are deleted after 15 "
                      f"minutes): please upload it again.")


def _reads_upload(what: str):
    """A reader of an upload: when it fails because the file vanished while it read (the cache clean-up deletes
    uploads older than 15 minutes, at any moment), the user gets `_gone`'s message instead of a raw
    FileNotFoundError or a misleading "not a supported file"."""
    def wrap(read):
        @functools.wraps(read)
        def reader(value, *args, **kwargs):
            try:
                return read(value, *args, **kwargs)
            except (InputError, OSError) as err:
                path = file_path(value)
                if path and not os.path.isfile(path):
                    raise _gone(path, what) from err
                raise
        return reader
    return wrap


def _check_size(path: str, limit_mb: float, what: str) -> None:
    if not os.path.isfile(path):  # the cache clean-up deletes uploads older than 15 minutes
        raise _gone(path, what)
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"The {what} file is empty.")
    if size > limit_mb * 1024 * 1024:
        raise InputError(f"The {what} file is {size / 1024 / 1024:.1f} MB; the limit is {limit_mb:g} MB.")


def _check_pixels(width: int, height: int, what: str) -> None:
    """Refuse pictures / video frames beyond the side and megapixel caps (from the header, before decoding)."""
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_PIXELS:
        raise InputError(f"The {what} is {width}×{height} px; the limit is {MAX_IMAGE_SIDE} px a side.")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"The {what} is {width}×{height} px; it must be at least {MIN_IMAGE_SIDE} px a side.")


def _too_long(duration: float, limit: float, what: str) -> InputError:
    if limit >= 120:
        return InputError(f"The {what} is {duration / 60:.1f} min long; the limit is {limit / 60:g} min.")
    return InputError(f"The {what} is {duration:.1f} s long; the limit is {limit:g} s.")


@_reads_upload("image")
def read_image(value, target_size: int | None = None) -> PIL.Image.Image:
    """Uploaded image -> RGB PIL image by the package's image rule (EXIF orientation applied), within the limits.

    `target_size`: the model's input side; a large JPEG then decodes at the reduced scale training uses for it, so
    the model sees the pixels it was trained on (`xpl_hf.image`).
    """
    path = file_path(value)
    if not path:
        raise InputError("Please add an image (a video frame).")
    _check_size(path, MAX_IMAGE_MB, "image")
    try:
        with PIL.Image.open(path) as im:
            _check_pixels(*im.size, "image")  # from the header: nothing decoded yet
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise InputError(f"Could not read the image {_name(path)}: not a supported image file "
                         f"({IMAGE_FORMATS}).") from err
    try:
        return load_image(path, name=_name(path), target_size=target_size)
    except ImageError as err:
        raise InputError(f"Could not read the image {_name(path)}: the file is truncated or corrupt "
                         f"({strip_paths(str(err))}).") from err


def _check_audio_info(info: VideoInfo) -> None:
    if info.duration_s is not None and info.duration_s > MAX_AUDIO_SECONDS:
        raise _too_long(info.duration_s, MAX_AUDIO_SECONDS, "audio")


@_reads_upload("audio")
def read_audio(value, clip_seconds: float = 3.0) -> tuple[np.ndarray, int]:
    """Uploaded / recorded audio -> (samples (channels, n), rate) of the window the model uses.

    WAV, FLAC, OGG and MP3 are read with soundfile; the other allow-listed formats (e.g. M4A, AAC, WebM) with
    `xpl_hf.media`. Either way the duration comes from the headers and is checked before anything is decoded, and
    only the window around the middle is decoded.
    """
    path = file_path(value)
    if not path:
        raise InputError("Please add a sound: upload an audio file or record one with the microphone.")
    _check_size(path, MAX_AUDIO_MB, "audio")
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - not a libsndfile format: try PyAV, else say what is supported
        info = None
    if info is not None:
        duration = info.frames / info.samplerate if info.samplerate else 0.0
        if duration > MAX_AUDIO_SECONDS:
            raise _too_long(duration, MAX_AUDIO_SECONDS, "audio")
        try:
            return decode_audio(path, clip_seconds=clip_seconds + WINDOW_MARGIN_SECONDS)
        except AudioError as err:
            raise InputError(f"Could not read the audio {_name(path)}: {strip_paths(str(err))}") from err
    if not HAVE_AV:
        raise InputError(f"Could not read the audio {_name(path)}: not a supported audio file ({AUDIO_FORMATS}).")
    try:
        samples, rate = read_audio_window(path, seconds=clip_seconds + WINDOW_MARGIN_SECONDS,
                                          max_duration=MAX_AUDIO_SECONDS, check=_check_audio_info,
                                          name=os.path.basename(path))
    except MediaError as err:
        raise InputError(f"Could not read the audio {_name(path)}: {strip_paths(str(err))} Supported: "
                         f"{AUDIO_FORMATS}, M4A/AAC, WebM.") from err
    return samples[None], rate


def video_duration(value) -> float:
    """Duration in seconds of an uploaded video, from its headers (0 when it cannot be read)."""
    path = file_path(value)
    if not path or not HAVE_AV:
        return 0.0
    try:
        info = probe_video(path, name=os.path.basename(path))
    except MediaError:
        return 0.0
    return info.duration_s or 0.0 if info.has_video else 0.0


def _check_video_info(info: VideoInfo) -> None:
    if info.duration_s is not None and info.duration_s > MAX_VIDEO_SECONDS:
        raise _too_long(info.duration_s, MAX_VIDEO_SECONDS, "video")
    if info.has_video:
        _check_pixels(info.width, info.height, "video")


@_reads_upload("video")
def read_video(value, time_s: float, clip_seconds: float = 3.0) -> tuple[PIL.Image.Image, np.ndarray, int, float]:
    """Video -> (the frame at `time_s`, mono audio (1, n) around it, rate, the time used).

    The window is `clip_seconds` plus the margin the processor's centred crop expects (as for an audio upload).
    """
    if not HAVE_AV:
        raise InputError("Video needs the `av` package (PyAV): `pip install av`.")
    path = file_path(value)
    if not path:
        raise InputError("Please add a video.")
    try:
        time_s = float(time_s)
    except (TypeError, ValueError):
        raise InputError(f"The time {time_s!r} is not a number of seconds.") from None
    if not math.isfinite(time_s) or time_s < 0:
        raise InputError(f"The time {time_s} s is not a time in the video: pick one from 0 s to its end.")
    _check_size(path, MAX_VIDEO_MB, "video")
    try:
        clip = read_video_clip(path, time=time_s, clip_seconds=clip_seconds + WINDOW_MARGIN_SECONDS,
                               check=_check_video_info, name=os.path.basename(path))
    except MediaError as err:
        if err.reason == "bad time":
            raise InputError(f"The time {time_s:g} s is past the end of the video {_name(path)}: pick one from 0 to "
                             f"{video_duration(path):.2f} s.") from err
        raise InputError(f"Could not read the video {_name(path)}: {strip_paths(str(err))} Supported: "
                         f"{VIDEO_FORMATS}.") from err
    if clip.audio is None:
        raise InputError(f"The video {_name(path)} has no audio track; the model needs the sound.")
    return clip.frames[0], clip.audio[None], clip.sampling_rate, clip.time
