"""Decode the stored ``image`` / ``audio`` values of a dataset row by the package's one image and one audio rule.

``image`` values are PIL images (``Image(decode=True)``), ``{"bytes", "path"}`` dicts (``Image(decode=False)``),
bytes or paths; :func:`decode_image` sends them through :func:`xpl_hf.image.load_image`, the same rule as
`XPLProcessor` (so training and inference see identical pixels), and raises
:class:`~xpl_hf.data.schema.DataValidationError`. ``audio`` values (``{"bytes", "path"}`` dicts of
``Audio(decode=False)``, bytes or a path) are decoded by :func:`xpl_hf.audio.decode_audio` itself, re-exported here
(soundfile, never ``datasets``' torchcodec-based decoder); it raises :class:`~xpl_hf.audio.AudioError`. Both errors
are ``ValueError``s; callers add the sample id.
"""

from __future__ import annotations

from typing import Any

import PIL.Image

from ..audio import decode_audio
from ..image import ImageError, load_image
from .schema import DataValidationError

__all__ = ["decode_audio", "decode_image"]


def decode_image(value: Any) -> PIL.Image.Image:
    """Decode an image value to an RGB PIL image (fully loaded, so truncation is detected here)."""
    try:
        return load_image(value, name="image")
    except ImageError as err:
        raise DataValidationError(str(err)) from None
