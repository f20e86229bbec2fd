"""The one image rule of xpl-hf: any image input -> an RGB PIL image.

`XPLProcessor` (inference), the training collator and the dataset converters all call :func:`load_image`, so the
same file gives the same pixels on every path.

| input | rule |
| --- | --- |
| PIL image | used as is (fully loaded) |
| path, bytes, ``{"bytes", "path"}`` (a ``datasets`` Image value) | opened with PIL; a missing file, a directory, an
  undecodable or truncated file raise :class:`ImageError` |
| array / tensor | (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4}; uint8, uint16 (or wider) integers, bool, or
  float in [0, 1] |

Modes: 8-bit RGB is kept; grey (L) is replicated; an alpha channel (RGBA, LA, PA, a palette with transparency) is
composited on **white**, so transparent areas look as they do in a browser; 16-bit and 32-bit integer images are
scaled from their type's **full range** (65535 -> 255), never by the image's own maximum, so brightness means the
same thing in every image. Images above :data:`MAX_PIXELS` are refused before decoding (decompression bombs).

Orientation: an EXIF Orientation tag (phone photos) is applied (``PIL.ImageOps.exif_transpose``) to every file,
bytes and PIL input, on every path, so a photo is never upright in one place and rotated in another.

Decode size: with ``target_size=S`` (the model's input side; `XPLProcessor` and the training collator both pass it), a
JPEG file or bytes whose sides are **both at least 2 S** is decoded at a reduced scale (1/2, 1/4 or 1/8, the
largest that keeps both sides >= S: PIL's ``draft``), which is 3-10x faster for large photos. The model input is
then the reduced image squashed to S x S; it differs from a full decode + resize by about one grey level on average
(at most 1.5, tested). Every model-input path passes the hint (the processor, the collator, the pipeline and the
Space), so they all see the same pixels; :func:`full_size` gives the size the file has at full scale (where maps are
drawn). Inputs that are already decoded (PIL images, arrays), other formats and smaller JPEGs decode exactly as
without the hint.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = ["ImageError", "MAX_PIXELS", "full_size", "load_image"]

MAX_PIXELS = 64_000_000
"""Largest accepted image (width x height), checked from the header before decoding: 64 MP (8000 x 8000)."""

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = 0x0112  # the EXIF Orientation tag; values 5-8 turn the picture a quarter
_FULL_SIZE = "xpl_full_size"  # image.info key: (width, height) at full scale, orientation applied
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
    """An image input that cannot be used; the message names the problem."""


def _open(source: Any, name: str, target_size: int | None = None) -> PIL.Image.Image:
    """Open and fully decode an image file (path or bytes), checking its size from the header first.

    ``target_size``: JPEGs with both sides >= 2 x target_size decode at a reduced scale (module docstring).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"image path {name!r} is a directory, not an image file.")
        if not path.is_file():
            raise ImageError(f"image file {name!r} does not exist.")
        opened_from: Any = path
    else:
        opened_from = io.BytesIO(source)
    try:
        with PIL.Image.open(opened_from) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"image {name} is {image.width} x {image.height} pixels; the limit is "
                                 f"{MAX_PIXELS / 1e6:.0f} megapixels.")
            width, height = image.size
            if image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
            if target_size and image.format == "JPEG":
                image.draft(image.mode, (target_size, target_size))  # DCT scaling; a no-op below 2 x target_size
            image.load()
            image = _upright(image)
            if isinstance(opened_from, Path):
                image = image.copy()
            image.info[_FULL_SIZE] = (width, height)
            return image
    except ImageError:
        raise
    except PIL.Image.DecompressionBombError as err:
        raise ImageError(f"image {name} is too large to decode safely ({err}).") from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"image {name} is corrupt or not an image ({type(err).__name__}: {err}).") from None


def _upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """Apply the EXIF orientation (the one rule for every path); images without the tag are returned as they are."""
    if image.getexif().get(_ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
        return PIL.ImageOps.exif_transpose(image)
    return image


def full_size(image: PIL.Image.Image) -> tuple[int, int]:
    """(width, height) of a :func:`load_image` result at full scale: its own size unless it was decoded reduced."""
    return tuple(image.info.get(_FULL_SIZE, image.size))


def _array_to_pil(array: np.ndarray) -> PIL.Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"image array has shape {a.shape}; expected (H, W), (H, W, C) or (C, H, W), C in 1/3/4.")
    if a.size == 0:
        raise ImageError(f"image array has shape {a.shape}; it must be at least 1 x 1 pixel.")
    if a.shape[0] * a.shape[1] > MAX_PIXELS:
        raise ImageError(f"image array is {a.shape[1]} x {a.shape[0]} pixels; the limit is "
                         f"{MAX_PIXELS / 1e6:.0f} megapixels.")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageError("image array contains NaN or infinite values.")
        if a.min() < 0 or a.max() > 1:
            raise ImageError(f"float image values span [{a.min():.3g}, {a.max():.3g}]; expected [0, 1].")
        a = np.round(a * 255)
    elif a.dtype.kind in "iu" and a.dtype.itemsize > 1:
        if a.min() < 0:
            raise ImageError("integer image array has negative values.")
        full_range = 65535 if a.dtype.itemsize == 2 or a.max() <= 65535 else np.iinfo(a.dtype).max
        a = np.round(a.astype(np.float64) * (255.0 / full_range))
    elif a.dtype == bool:
        a = a * 255
    elif a.dtype != np.uint8:
        raise ImageError(f"image array has dtype {a.dtype}; expected uint8, uint16 or float in [0, 1].")
    a = np.clip(a, 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(a)  # (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        if image.mode == "F":
            raise ImageError("32-bit float images (mode F) are not supported; pass an array in [0, 1].")
        return _to_rgb(_array_to_pil(np.asarray(image).astype(np.uint32 if image.mode == "I" else np.uint16)))
    if image.mode == "P" and "transparency" in image.info or image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: Any, name: str | None = None, target_size: int | None = None) -> PIL.Image.Image:
    """Any supported image input -> RGB PIL image (see the module's rules).

    Args:
        image: PIL image, path, bytes, ``{"bytes": ..., "path": ...}`` dict, np.ndarray or torch.Tensor.
        name: how to call the image in error messages (default: its path, or "image").
        target_size: the side the image will be resized to, if known: large JPEGs then decode at a reduced scale
            (module docstring). ``None`` decodes at full size.
    Raises:
        ImageError: missing/unreadable/corrupt/too large image, or an unsupported type, shape or value range.
    """
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if not data and not path:
            raise ImageError(f"{name or 'image'} has neither bytes nor path.")
        image = bytes(data) if data else path
    if isinstance(image, (str, os.PathLike)):
        name = name or os.fspath(image)
        image = _open(image, name, target_size)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        image = _open(bytes(image), name or "image", target_size)
    elif isinstance(image, torch.Tensor):
        image = _array_to_pil(image.detach().cpu().numpy())
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif image is None:
        raise ImageError(f"{name or 'image'} is missing (None).")
    elif isinstance(image, PIL.Image.Image):
        image = _upright(image)
    else:
        raise ImageError(f"unsupported image type {type(image).__name__}; pass a PIL image, an array, bytes or a path.")
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name or 'image'} has size {image.size}; it must be at least 1 x 1 pixel.")
    if image.width * image.height > MAX_PIXELS:
        raise ImageError(f"{name or 'image'} is {image.width} x {image.height} pixels; the limit is "
                         f"{MAX_PIXELS / 1e6:.0f} megapixels.")
    return _to_rgb(image)
