"""Decode the stored ``image`` / ``audio`` values of a row, with checks that name the problem.

``image`` values are PIL images (``Image(decode=True)``) or ``{"bytes", "path"}`` dicts (``Image(decode=False)``).
``audio`` values are ``{"bytes", "path"}`` dicts (``Audio(decode=False)``), raw bytes or a path; they are decoded with
soundfile (``xpl_hf.audio.decode_audio`` when available), never through ``datasets``' torchcodec-based decoder.

Both functions raise :class:`~xpl_hf.data.schema.DataValidationError` (a ``ValueError``) on a corrupt or truncated
image, unreadable / empty / non-finite audio. Callers add the sample id.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import PIL.Image

from .schema import DataValidationError


def _value_bytes_or_path(value: Any, what: str) -> tuple[bytes | None, str | None]:
    if value is None:
        raise DataValidationError(f"{what} is missing (None)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, (str, os.PathLike)):
        return None, os.fspath(value)
    if isinstance(value, dict):
        b, p = value.get("bytes"), value.get("path")
        if b:
            return bytes(b), None
        if p:
            return None, p
        raise DataValidationError(f"{what} has neither bytes nor path")
    raise DataValidationError(f"{what} has unsupported type {type(value).__name__}")


def decode_image(value: Any) -> PIL.Image.Image:
    """Decode an image value to an RGB PIL image (fully loaded, so truncation is detected here)."""
    if isinstance(value, PIL.Image.Image):
        image = value
    else:
        data, path = _value_bytes_or_path(value, "image")
        try:
            image = PIL.Image.open(io.BytesIO(data) if data is not None else path)
            image.load()
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise DataValidationError(f"image is corrupt or unreadable ({type(err).__name__}: {err})") from err
    if image.width < 1 or image.height < 1:
        raise DataValidationError(f"image is empty ({image.width}x{image.height})")
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max()
        arr = (arr / (hi if hi > 0 else 1.0) * 255.0).astype(np.uint8)
        return PIL.Image.fromarray(arr).convert("RGB")
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _soundfile_decode(data: bytes | None, path: str | None) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data) if data is not None else path) as f:
        wave = f.read(dtype="float32", always_2d=True)  # (samples, channels)
        sr = f.samplerate
    return np.ascontiguousarray(wave.T), int(sr)


def _decoder():
    try:  # the package's one audio decoder, when present
        from xpl_hf.audio import decode_audio as lead_decode  # noqa: PLC0415
    except Exception:  # pragma: no cover - fallback while xpl_hf.audio is not there
        lead_decode = None
    return lead_decode


def decode_audio(value: Any) -> tuple[np.ndarray, int]:
    """Decode an audio value to ``(float32 array (channels, samples), sample_rate)``.

    Raises:
        DataValidationError: unreadable file, no samples, or NaN/inf samples.
    """
    data, path = _value_bytes_or_path(value, "audio")
    lead_decode = _decoder()
    try:
        if lead_decode is not None:
            wave, sr = lead_decode(data if data is not None else path)
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim == 1:
                wave = wave[None]
        else:
            wave, sr = _soundfile_decode(data, path)
    except DataValidationError:
        raise
    except Exception as err:
        raise DataValidationError(f"audio is unreadable ({type(err).__name__}: {err})") from err
    if wave.size == 0 or wave.shape[-1] == 0:
        raise DataValidationError("audio is empty (0 samples)")
    if not np.isfinite(wave).all():
        raise DataValidationError("audio contains NaN or infinite samples")
    return wave, int(sr)
