"""A video clip -> the stored frame(s) and audio window of one row (through :mod:`xpl_hf.media`).

Per clip: the frame at the candidate's ``time`` (else ``ClipOptions.frame_time``, else the middle of the video, the
protocol's frame), optionally K frames spread over the audio window (the ``frames`` column), and the
``clip_seconds`` of sound centred on the frame (moved inside the file near its ends), mixed to mono by PyAV and
resampled once, here, to ``ClipOptions.sample_rate`` with :func:`xpl_hf.audio.resample` (the rule training and
inference use), then checked by :func:`xpl_hf.audio.check_waveform` and stored as 16-bit WAV (or FLAC) bytes.
Only the window is decoded: :func:`xpl_hf.media.read_video_clip` seeks to it.

Refused (the sample is skipped, with the reason in the report): a format outside the allow-list, playlists and
concat scripts (``refused format``), no video stream (``no video``), no audio stream (``no audio``), a time outside
the clip (``bad time``), corrupt or truncated files (``unreadable media`` / ``truncated media``). Silent audio is kept
and reported (``silent audio``).
"""

from __future__ import annotations

import io
import os
import time

from ...audio import AudioError, check_waveform, resample
from ...media import MediaError, read_video_clip
from .archive import ArchiveMember
from .report import SampleProblem
from .samples import MAX_VIDEO_BYTES, Candidate, ClipOptions, encode_audio, encode_jpeg, media_name, silence_notes


def _source(c: Candidate, loaded: dict[str, bytes]):
    """The video as something :func:`xpl_hf.media.open_media` reads: a path, or an archive member's bytes."""
    ref = c.video
    if isinstance(ref, ArchiveMember):
        if ref.size > MAX_VIDEO_BYTES:
            raise SampleProblem("video file too large", f"video '{ref}' is {ref.size} bytes; the limit is "
                                f"{MAX_VIDEO_BYTES}")
        data = loaded[str(ref)]
        return io.BytesIO(data) if isinstance(data, bytes) else data  # bytes, or the path of a temporary copy
    if not os.path.isfile(ref):
        raise SampleProblem("missing video", f"video file '{media_name(ref)}' does not exist")
    if os.path.getsize(ref) > MAX_VIDEO_BYTES:
        raise SampleProblem("video file too large", f"video '{media_name(ref)}' is {os.path.getsize(ref)} bytes; "
                            f"the limit is {MAX_VIDEO_BYTES} (not read)")
    return ref


def video_media(c: Candidate, loaded: dict[str, bytes], options: ClipOptions
                ) -> tuple[dict, list[tuple[str, str]], dict[str, float]]:
    """``({"image", "audio"[, "frames"]}, notes, seconds per stage)`` of a video candidate; raises SampleProblem."""
    name = media_name(c.video)
    when = c.time if c.time is not None else options.frame_time
    k = options.frames_per_clip
    t0 = time.perf_counter()
    try:
        clip = read_video_clip(_source(c, loaded), time=when, clip_seconds=options.clip_seconds,
                               num_frames=k, name=name)
        if k > 1 and k % 2 == 0:  # an even K does not hold the frame at `time` itself: read it on its own
            image = read_video_clip(_source(c, loaded), time=clip.time, clip_seconds=options.clip_seconds,
                                    name=name).frames[0]
        else:
            image = clip.frames[k // 2]
    except MediaError as err:
        raise SampleProblem(err.reason, str(err)) from None
    if clip.audio is None:
        raise SampleProblem("no audio", f"video '{name}' has no audio stream")
    t1 = time.perf_counter()
    try:
        mono, rate = check_waveform(clip.audio, clip.sampling_rate, what=f"the audio of '{name}'")
        mono = resample(mono, rate, options.sample_rate)
        mono, _ = check_waveform(mono, options.sample_rate, what=f"the audio of '{name}'")
    except AudioError as err:
        raise SampleProblem(err.reason, str(err)) from None
    t2 = time.perf_counter()
    stem = name.rsplit(".", 1)[0]
    media = {
        "image": {"bytes": encode_jpeg(image, options.jpeg_quality), "path": f"{stem}.jpg"},
        "audio": {"bytes": encode_audio(mono, options.sample_rate, options.audio_format),
                  "path": f"{stem}.{options.audio_format}"},
    }
    if k > 1:
        media["frames"] = [{"bytes": encode_jpeg(f, options.jpeg_quality), "path": f"{stem}-{i}.jpg"}
                           for i, f in enumerate(clip.frames)]
    t3 = time.perf_counter()
    return media, silence_notes(mono), {"decode": t1 - t0, "resample": t2 - t1, "encode": t3 - t2}
