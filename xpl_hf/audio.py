"""Audio decoding and conditioning, without FFmpeg.

Rules applied to every clip (also documented in the README, "Input rules"):

- files (WAV, FLAC, OGG/Vorbis, anything libsndfile reads) are decoded with `soundfile`; other formats are rejected
  with a message naming the format problem;
- integer samples are scaled to [-1, 1] by their type's range; float clips whose peak exceeds 1 are divided by the
  peak (no clipping);
- several channels are averaged to mono; a 2-D array is read as (channels, samples) when it has fewer rows than
  columns, else as (samples, channels);
- empty clips, clips shorter than `MIN_SECONDS`, clips holding NaN or infinite values, and sample rates outside
  [`MIN_SAMPLE_RATE`, `MAX_SAMPLE_RATE`] are rejected. `check_waveform` holds these rules; the processor (through
  `prepare_clip`) and the dataset converters (`xpl_hf.data.convert`) both call it, so a clip a converter accepts is
  a clip training and inference accept;
- silent clips are accepted (they are valid, if uninformative, input);
- a clip is cut to `clip_seconds` around its centre, or tiled (repeated) to that length when shorter.
"""

from __future__ import annotations

import io
import math
import os
import struct
from fractions import Fraction
from functools import lru_cache

import numpy as np
import soundfile as sf
import torch
from scipy.signal import firwin, resample_poly

MIN_SECONDS = 0.01
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000


class AudioError(ValueError):
    """An audio input that cannot be used; the message names the problem.

    `reason` is a short category of the problem ("empty audio", "NaN audio", "audio too short", "bad sample rate",
    "bad audio array", "unreadable audio"), used to group problems in reports.
    """

    def __init__(self, message: str, reason: str = "unreadable audio"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keep `reason` across processes (converter workers)
        return type(self), (str(self), self.reason)


def check_sample_rate(sampling_rate) -> int:
    """Return `sampling_rate` as an int, or raise AudioError if it is missing, not a whole number or implausible."""
    if sampling_rate is None:
        raise AudioError("sampling_rate is required for audio given as an array (e.g. sampling_rate=16000).",
                         "bad sample rate")
    if isinstance(sampling_rate, bool) or not float(sampling_rate).is_integer():
        raise AudioError(f"sampling_rate={sampling_rate!r} is not a whole number of Hz.", "bad sample rate")
    rate = int(sampling_rate)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"sampling_rate={rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}].",
                         "bad sample rate")
    return rate


def _open(source) -> sf.SoundFile:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise AudioError("the audio file is empty (0 bytes).", "empty audio")
            return sf.SoundFile(io.BytesIO(bytes(source)))
        if isinstance(source, (str, os.PathLike)):
            if not os.path.exists(source):
                raise AudioError(f"audio file {os.fspath(source)!r} does not exist.")
        return sf.SoundFile(source)
    except sf.LibsndfileError as err:
        detail = getattr(err, "error_string", None) or str(err)  # without the file object's repr
        raise AudioError(f"could not decode the audio (WAV, FLAC and OGG are supported): {detail}") from None


def _pcm16_wav(data: bytes) -> tuple[int, int, int, int] | None:
    """(channels, rate, data offset, frames) of a complete, plain 16-bit PCM WAV; None for anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, fmt = 12, None
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], int.from_bytes(data[offset + 4:offset + 8], "little")
        body = offset + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(data):
            fmt = struct.unpack_from("<HHIIHH", data, body)  # format, channels, rate, byte rate, block align, bits
        elif chunk == b"data":
            if fmt is None or body + size > len(data):
                return None
            audio_format, channels, rate, _, block_align, bits = fmt
            if audio_format != 1 or bits != 16 or channels < 1 or block_align != 2 * channels:
                return None
            return channels, rate, body, size // block_align
        offset = body + size + (size & 1)  # chunks are word-aligned
    return None


WINDOW_MARGIN_SECONDS = 0.1
"""Extra audio read around a clip's centred window, for the resampling filter's edges."""


def decode_audio(source, clip_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a WAV/FLAC/OGG file with soundfile: the package's one audio-file decoder (processor, collator,
    converters; `xpl_hf.data.decoding` re-exports it).

    `source`: a path, bytes, a binary file object, or a stored dataset value ``{"bytes": ..., "path": ...}``
    (``Audio(decode=False)``). With `clip_seconds`, only the centred window of that length is read, so a 10-minute
    file costs what 3 s cost. Plain 16-bit PCM WAV bytes (the usual stored format) are read with numpy instead: the
    same values as soundfile's (sample / 32768, tested), several times faster. Other containers (MP4, M4A, WebM, ...)
    are read with `xpl_hf.media.read_audio_window`.

    Returns:
        `(waveform, sample_rate)` with waveform float32 of shape (channels, samples).

    Raises:
        AudioError: a missing value or file, an unsupported type, an undecodable, truncated or empty file.
    """
    if isinstance(source, dict):
        data, path = source.get("bytes"), source.get("path")
        if not data and not path:
            raise AudioError("the audio value has neither bytes nor path.", "empty audio")
        source = data if data else path
    if source is None:
        raise AudioError("the audio is missing (None).", "empty audio")
    if not isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)) and not hasattr(source, "read"):
        raise AudioError(f"unsupported audio type {type(source).__name__}; pass a path, bytes or a file object.")
    wav = _pcm16_wav(source) if isinstance(source, bytes) else None
    if wav is not None:
        channels, rate, start, frames = wav
        if clip_seconds is not None and frames > 0:
            wanted = math.ceil(clip_seconds * rate)
            if frames > wanted:
                start += (frames - wanted) // 2 * 2 * channels
                frames = wanted
        samples = np.frombuffer(source, "<i2", count=frames * channels, offset=start)
        return np.ascontiguousarray(samples.reshape(frames, channels).T) * np.float32(1 / 32768), rate
    with _open(source) as f:
        rate, frames = f.samplerate, f.frames
        if clip_seconds is not None and frames > 0:
            wanted = math.ceil(clip_seconds * rate)
            if frames > wanted:
                f.seek((frames - wanted) // 2)
                frames = wanted
        try:
            data = f.read(frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(f"the audio file is truncated or corrupt: {err}") from None
    return np.ascontiguousarray(data.T), rate


def to_mono_float(waveform, what: str = "audio") -> np.ndarray:
    """Any 1-D or 2-D array of samples -> float32 mono (samples,) in [-1, 1] (see the module rules).

    `what` names the clip in error messages (e.g. "audio 'clip.wav'").
    """
    x = np.asarray(waveform)
    if x.dtype == object or x.dtype.kind not in "iuf":
        raise AudioError(f"{what} array has dtype {x.dtype}; expected integer or floating-point samples.",
                         "bad audio array")
    if x.ndim == 2:
        if x.shape[0] > x.shape[1]:  # (samples, channels)
            x = x.T
    elif x.ndim != 1:
        raise AudioError(f"{what} array has shape {x.shape}; expected (samples,) or (channels, samples).",
                         "bad audio array")
    if x.size == 0:
        raise AudioError(f"{what} is empty (0 samples).", "empty audio")
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    x = x.astype(np.float32, copy=False)
    low, high = float(x.min()), float(x.max())  # NaN and inf propagate: one check, no temporary array
    if not (math.isfinite(low) and math.isfinite(high)):
        raise AudioError(f"{what} contains NaN or infinite samples.", "NaN audio")
    if x.ndim == 2:
        if x.shape[0] == 1:
            x = x[0]
        else:
            x = x.mean(axis=0)
            low, high = float(x.min()), float(x.max())
    peak = max(high, -low)
    return x / peak if peak > 1.0 else x


def check_waveform(waveform, sampling_rate, what: str = "audio") -> tuple[np.ndarray, int]:
    """Apply the input rules (module docstring) to one clip; the one check behind the processor and the converters.

    Args:
        waveform: array (samples,) or (channels, samples) / (samples, channels), integer or float samples.
        sampling_rate: its rate in Hz.
        what: names the clip in error messages (e.g. "audio 'clip.wav'").

    Returns:
        `(mono, rate)`: float32 (samples,) in [-1, 1] and the rate as an int.

    Raises:
        AudioError: bad rate, dtype or shape, empty, NaN/infinite, or shorter than `MIN_SECONDS`; its `reason` says
            which.
    """
    rate = check_sample_rate(sampling_rate)
    x = to_mono_float(waveform, what)
    if len(x) < MIN_SECONDS * rate:
        raise AudioError(f"{what} is {len(x) / rate * 1000:.1f} ms long; at least {MIN_SECONDS * 1000:.0f} ms is "
                         "needed (shorter clips are tiled to the clip length).", "audio too short")
    return x, rate


def fix_length(x: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop, or tile (repeat) a short clip, to exactly `length` samples."""
    if len(x) < length:
        x = np.tile(x, math.ceil(length / len(x)))[:length]
    elif len(x) > length:
        start = (len(x) - length) // 2
        x = x[start:start + length]
    return x


MAX_RESAMPLE_FACTOR = 4096
"""Largest up / down factor of a resampling plan: any rate pair costs at most a (20 x 4096 + 1)-tap filter.

A rate pair whose exact ratio needs larger factors (e.g. 383,999 -> 16,000 Hz is 16,000 / 383,999: a 7.7M-tap filter,
20-27 s per call) is resampled by the closest ratio within the bound (:func:`resample_factors`): the output rate is
then off by at most :data:`MAX_RATE_ERROR`. The standard rates (8, 11.025, 12, 16, 22.05, 24, 32, 44.1, 48, 64, 88.2,
96, 176.4, 192, 352.8 and 384 kHz) to 16 or 22.05 kHz are exact.
"""
MAX_RATE_ERROR = 1.25e-4
"""Largest relative output-rate error of a bounded plan over all whole rates from 1 to 384 kHz to 16 or 22.05 kHz
(measured 1.22e-4, at 383,953 -> 16,000 Hz: 1/24): 0.2 cent of pitch, 0.4 ms over a 3 s clip."""


@lru_cache(maxsize=256)
def resample_factors(orig_rate: int, new_rate: int) -> tuple[int, int]:
    """(up, down) with new_rate / orig_rate ≈ up / down and both factors at most :data:`MAX_RESAMPLE_FACTOR`.

    The exact reduced ratio when it fits (all common rates); otherwise its best rational approximation with the larger
    factor bounded (continued fractions, ``Fraction.limit_denominator``), within :data:`MAX_RATE_ERROR`.
    """
    ratio = Fraction(new_rate, orig_rate)
    if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_FACTOR:
        if ratio < 1:
            ratio = ratio.limit_denominator(MAX_RESAMPLE_FACTOR)
        else:  # bound the numerator: approximate the inverse
            ratio = 1 / (1 / ratio).limit_denominator(MAX_RESAMPLE_FACTOR)
    return ratio.numerator, ratio.denominator


@lru_cache(maxsize=16)  # at most 16 x 0.66 MB (float64, 81,921 taps)
def _lowpass(up: int, down: int) -> np.ndarray:
    # Kaiser-windowed sinc, the filter scipy designs by default, designed once per rate pair.
    taps = 2 * 10 * max(up, down) + 1
    return firwin(taps, 1.0 / max(up, down), window=("kaiser", 5.0))  # resample_poly multiplies by `up`


_MATMUL_MIN_UP = 8  # below this many phases scipy's polyphase loop is as fast (e.g. 48 -> 16 kHz, up = 1)


@lru_cache(maxsize=16)  # at most 16 x about 0.4 MB (float32 weights: about the filter's taps, plus padding)
def _polyphase_plan(up: int, down: int) -> tuple[torch.Tensor, int, int, int]:
    """The filter of :func:`_lowpass` rearranged so that resampling is one batched matrix product.

    Output sample n = up·m + j (block m, phase j) is Σ_r x[down·m + r] · W_j[r]: the weights depend on the phase
    only. Phases are taken in groups of ``group``; the inputs a group needs in block m start at
    ``down·m + base + step·g`` and span ``width`` samples, so they are a strided view of the (padded) input.

    Returns:
        (weights (groups, width, group) float32, group, step, base).
    """
    h = _lowpass(up, down) * up
    half = (len(h) - 1) // 2
    group = min(up, 32 if up >= down else 16)
    groups = math.ceil(up / group)
    step = (group * down) // up
    g = np.arange(groups)
    first = -((half - g * group * down) // up)  # ceil((g·group·down - half) / up): first input of group g
    last = ((np.minimum(up, (g + 1) * group) - 1) * down + half) // up
    base = int((first - step * g).min())
    width = int((last + 1 - (base + step * g)).max())
    j = g[:, None, None] * group + np.arange(group)[None, None, :]  # (groups, 1, group) phase
    r = base + step * g[:, None, None] + np.arange(width)[None, :, None]  # (groups, width, 1) input offset
    k = j * down - r * up + half  # index into h
    valid = (k >= 0) & (k < len(h)) & (j < up)
    weights = np.where(valid, h[np.clip(k, 0, len(h) - 1)], 0.0).astype(np.float32)
    return torch.from_numpy(weights), group, step, base


def _resample_matmul(x: np.ndarray, up: int, down: int, start: int, length: int) -> np.ndarray:
    """Output samples [start, start + length) of the resampled signal (see :func:`_polyphase_plan`)."""
    weights, group, step, base = _polyphase_plan(up, down)
    groups, width = weights.shape[0], weights.shape[1]
    first, last = start // up, -(-(start + length) // up)  # the blocks holding the requested outputs
    lo = down * first + base  # the first input read
    hi = down * (last - 1) + base + step * (groups - 1) + width  # one past the last input read
    pad_left, pad_right = max(0, -lo), max(0, hi - len(x))
    signal = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if pad_left or pad_right:  # zeros outside the clip, as resample_poly; an inner window needs no copy
        signal = torch.nn.functional.pad(signal, (pad_left, pad_right))
    view = signal.as_strided((groups, last - first, width), (step, down, 1), storage_offset=lo + pad_left)
    y = torch.matmul(view, weights)  # (groups, blocks, group)
    y = y.transpose(0, 1).reshape(last - first, groups * group)[:, :up].reshape(-1)
    return y[start - first * up:start - first * up + length].numpy()


def resampled_length(n: int, orig_rate: int, new_rate: int) -> int:
    """Number of samples :func:`resample` returns for `n` input samples (as ``resample_poly``)."""
    up, down = resample_factors(orig_rate, new_rate)
    return -(-n * up // down)


def resample(x: np.ndarray, orig_rate: int, new_rate: int, start: int = 0, length: int | None = None) -> np.ndarray:
    """Polyphase resampling, equal to ``scipy.signal.resample_poly`` with its default Kaiser filter.

    The factors come from :func:`resample_factors`: exact for common rates, bounded (at most an 81,921-tap filter)
    for any rate, so that a hostile sample rate cannot make one call cost seconds and hundreds of MB.

    Rate pairs with many phases (16 -> 22.05 kHz: 441 / 320) run as one batched matrix product over the
    polyphase components (:func:`_polyphase_plan`), 4-5x faster than scipy's loop and equal to it to float32
    rounding (tested); the others call ``resample_poly`` with the same, cached, filter. Returns float32.

    `start`, `length`: return only the output samples [start, start + length) (computing only those where the
    matrix product is used); default: all of them.
    """
    total = resampled_length(len(x), orig_rate, new_rate)
    length = total - start if length is None else length
    if not 0 <= start <= start + length <= total:
        raise ValueError(f"output window [{start}, {start + length}) is outside the {total} resampled samples")
    if orig_rate == new_rate:
        return x[start:start + length]
    up, down = resample_factors(orig_rate, new_rate)
    if up >= _MATMUL_MIN_UP:
        return _resample_matmul(x, up, down, start, length)
    y = resample_poly(x, up, down, window=_lowpass(up, down)).astype(np.float32, copy=False)
    return y[start:start + length]


def prepare_clip(waveform, sampling_rate: int, clip_seconds: float,
                 target_rates: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Mono clip of `clip_seconds` around the centre (tiled when short), at each of `target_rates`.

    Returns:
        {rate: float32 array of exactly round(clip_seconds * rate) samples}.

    Raises:
        AudioError: the clip breaks a rule of `check_waveform`.
    """
    x, sampling_rate = check_waveform(waveform, sampling_rate)
    # Cut at the source rate first (with a margin for the filter) so long inputs cost no more than short ones.
    margin = math.ceil(0.05 * sampling_rate)
    source_length = math.ceil(clip_seconds * sampling_rate)
    if len(x) > source_length + 2 * margin:
        x = fix_length(x, source_length + 2 * margin)
    elif len(x) < source_length:
        x = fix_length(x, source_length)
    clips = {}
    for rate in target_rates:
        length, available = round(clip_seconds * rate), resampled_length(len(x), sampling_rate, rate)
        if available >= length:  # the centred window, as fix_length would crop it, and only that is computed
            clips[rate] = resample(x, sampling_rate, rate, (available - length) // 2, length)
        else:
            clips[rate] = fix_length(resample(x, sampling_rate, rate), length)
    return clips
