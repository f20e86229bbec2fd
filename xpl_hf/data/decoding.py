"""Decode the stored ``image`` / ``audio`` values of a dataset row, with errors that name the problem.

``image`` values are PIL images (``Image(decode=True)``), ``{"bytes", "path"}`` dicts (``Image(decode=False)``),
bytes or paths; they go through :func:`xpl_hf.image.load_image`, the same rule as `XPLProcessor` (so training and
inference see identical pixels). ``audio`` values are ``{"bytes", "path"}`` dicts (``Audio(decode=False)``), raw
bytes or a path, decoded with soundfile by :func:`xpl_hf.audio.decode_audio`, never through ``datasets``'
torchcodec-based decoder.

Both functions raise :class:`~xpl_hf.data.schema.DataValidationError` (a ``ValueError``); callers add the sample id.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image

from .. import audio as _audio
from ..image import ImageError, load_image
from .schema import DataValidationError


def decode_image(value: Any) -> PIL.Image.Image:
    """Decode an image value to an RGB PIL image (fully loaded, so truncation is detected here)."""
    try:
        return load_image(value, name="image")
    except ImageError as err:
        raise DataValidationError(str(err)) from None


def decode_audio(value: Any) -> tuple[np.ndarray, int]:
    """Decode an audio value to ``(float32 array (channels, samples), sample_rate)``.

    Raises:
        DataValidationError: missing value, unreadable file, no samples, or NaN/inf samples.
    """
    if value is None:
        raise DataValidationError("audio is missing (None)")
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if not data and not path:
            raise DataValidationError("audio has neither bytes nor path")
        value = bytes(data) if data else path
    elif isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    elif not isinstance(value, (bytes, str, os.PathLike)):
        raise DataValidationError(f"audio has unsupported type {type(value).__name__}")
    try:
        wave, sr = _audio.decode_audio(value)
    except Exception as err:
        raise DataValidationError(f"audio is unreadable ({type(err).__name__}: {err})") from err
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.size == 0 or wave.shape[-1] == 0:
        raise DataValidationError("audio is empty (0 samples)")
    if not np.isfinite(wave).all():
        raise DataValidationError("audio contains NaN or infinite samples")
    return wave, int(sr)
