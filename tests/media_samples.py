"""Small media files written with PyAV for the tests (no fixtures downloaded).

`make_video` writes a clip whose frame k is a flat grey of level `frame_level(k)` and whose sound in second s is a
sine of `tone_hz(s)` Hz, so a test can tell which frame and which second of sound it got back.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frame_level(index: int, count: int) -> int:
    """Grey level of frame `index` of `count` (0 ... 250)."""
    return round(250 * index / max(count - 1, 1))


def tone_hz(second: int) -> float:
    """Frequency of the sine in second `second` of the sound: 200, 400, 600, ... Hz."""
    return 200.0 * (second + 1)


def tone_samples(seconds: float, rate: int) -> np.ndarray:
    """The sound `make_video` writes: float32 (samples,), amplitude 0.5, `tone_hz(s)` in second s."""
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * np.array([tone_hz(int(s)) for s in t]) * t)).astype(np.float32)


def make_video(path, *, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (32, 24), rate: int = 16000,
               channels: int = 1, video: bool = True, audio: bool = True, vcodec: str = "mpeg4",
               acodec: str = "aac", pix_fmt: str = "yuv420p", rotation: int | None = None, gop: int | None = None,
               frame_times: list[float] | None = None, container_format: str | None = None) -> Path:
    """Write a small test clip (see the module docstring) and return its path.

    `frame_times`: explicit frame times in seconds (variable frame rate); default: every 1 / fps s.
    `rotation`: display matrix rotation, counter-clockwise degrees. `gop`: keyframe interval in frames.
    """
    path = Path(path)
    width, height = size
    times = frame_times if frame_times is not None else [k / fps for k in range(round(seconds * fps))]
    with av.open(str(path), "w", format=container_format) as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream(vcodec, rate=fps)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
            vstream.codec_context.time_base = Fraction(1, 1000)
            if gop:
                vstream.codec_context.gop_size = gop
            if rotation:
                vstream.set_display_rotation(rotation)
        if audio:
            astream = container.add_stream(acodec, rate=rate)
            astream.layout = "mono" if channels == 1 else "stereo"
        if vstream is not None:
            for k, t in enumerate(times):
                picture = np.full((height, width, 3), frame_level(k, len(times)), np.uint8)
                picture[: height // 4, : width // 4] = (255, 0, 0)  # a red top-left corner shows the orientation
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
                for packet in vstream.encode(frame):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)
        if astream is not None:
            samples = np.repeat(tone_samples(seconds, rate)[None], channels, axis=0)
            encode_audio(container, astream, samples, rate, packed=acodec.startswith("pcm"))
    return path


def encode_audio(container, stream, samples: np.ndarray, rate: int, packed: bool = False) -> None:
    """Encode (channels, N) float samples in [-1, 1] into `stream` of `container`, 1024 samples a frame, and flush.
    `packed`: PCM encoders take packed (interleaved) 16-bit samples."""
    if packed:
        samples = np.round(samples * 32767).astype(np.int16)
    for start in range(0, samples.shape[1], 1024):
        chunk = samples[:, start:start + 1024]
        chunk = chunk.T.reshape(1, -1) if packed else chunk
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="s16" if packed else "fltp",
                                           layout=stream.layout.name)
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency of `samples` (Hz)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(spectrum.argmax())])
