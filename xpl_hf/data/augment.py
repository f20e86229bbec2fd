"""The colour part of RandAugment, for training: :class:`ColorRandAugment` (no geometric operation, so maps stay
aligned with boxes and pseudo-labels), with a fast exact path for RGB PIL images."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch
from PIL import ImageEnhance
from torchvision.transforms import v2

GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


_LEVELS = np.arange(256)


def _blend_table(degenerate: int, factor: float) -> np.ndarray:
    """``Image.blend(constant degenerate, image, factor)`` as a table: PIL's float32 arithmetic, truncated, clipped."""
    value = np.float32(degenerate) + np.float32(factor) * (_LEVELS.astype(np.float32) - np.float32(degenerate))
    return np.clip(value, 0, 255).astype(np.int64)


def _histogram_table(histogram: np.ndarray, op: str) -> np.ndarray:
    """PIL's ``ImageOps.autocontrast`` (cutoff 0) or ``ImageOps.equalize`` table for one band's histogram (256,)."""
    nonzero = np.flatnonzero(histogram)
    if op == "AutoContrast":
        lo, hi = nonzero[0], nonzero[-1]
        if hi <= lo:
            return _LEVELS
        scale = 255.0 / (hi - lo)
        return np.clip((_LEVELS * scale - lo * scale).astype(np.int64), 0, 255)
    if len(nonzero) <= 1:
        return _LEVELS
    step = (histogram.sum() - histogram[nonzero[-1]]) // 255
    if not step:
        return _LEVELS
    return np.minimum((step // 2 + np.concatenate([[0], np.cumsum(histogram)[:-1]])) // step, 255)


def _sharpness(image: PIL.Image.Image, factor: float) -> PIL.Image.Image:
    """``ImageEnhance.Sharpness(image).enhance(factor)`` with torch, about 2x faster and pixel-identical (tested).

    PIL blends the image with its SMOOTH-filtered copy (3 x 3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13 and
    rounded; border pixels kept): out = trunc(smooth + factor * (image - smooth)), clipped to [0, 255].
    """
    if image.width < 3 or image.height < 3:
        return ImageEnhance.Sharpness(image).enhance(factor)
    pixels = np.array(image)  # (H, W, 3) uint8, a writable copy: the border rows and columns stay as they are
    x = torch.from_numpy(pixels)
    xf = x.float()
    rows = xf[:-2] + xf[1:-1]
    rows += xf[2:]
    box = rows[:, :-2] + rows[:, 1:-1]
    box += rows[:, 2:]
    centre = xf[1:-1, 1:-1]
    smooth = box.add_(centre, alpha=4).div_(13).round_()
    x[1:-1, 1:-1] = centre.sub(smooth).mul_(factor).add_(smooth).clamp_(0, 255).to(torch.uint8)
    return PIL.Image.fromarray(pixels)


class ColorRandAugment(v2.RandAugment):
    """``torchvision.transforms.v2.RandAugment`` restricted to its colour operations.

    Kept: Identity, Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize.
    Removed: ShearX/Y, TranslateX/Y, Rotate (they would move the sounding object away from its box / pseudo-label).
    Arguments are RandAugment's (``num_ops``, ``magnitude``, ``num_magnitude_bins``).

    RGB PIL images take a faster path with the same random draws and **identical pixels** (tested against
    torchvision): the per-channel operations (Brightness, Contrast, Posterize, Solarize, AutoContrast, Equalize) are
    composed into one lookup table, computed with numpy from the image's histogram, and applied once; Color runs
    PIL's ``ImageEnhance`` as torchvision does and Sharpness its exact torch equivalent (:func:`_sharpness`). Other
    inputs use torchvision.
    """

    GEOMETRIC_OPS = GEOMETRIC_OPS
    _AUGMENTATION_SPACE = {k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items() if k not in GEOMETRIC_OPS}

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) != 1 or not isinstance(inputs[0], PIL.Image.Image) or inputs[0].mode != "RGB":
            return super().forward(*inputs)
        image, table = inputs[0], None  # table: pending (3, 256) per-channel lookup table
        for _ in range(self.num_ops):  # the draws of v2.RandAugment.forward, in the same order
            op, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            magnitude = self._magnitude(op, magnitudes_fn)
            if magnitude is not None:
                if signed and torch.rand(()) <= 0.5:
                    magnitude *= -1
            else:
                magnitude = 0.0
            image, table = self._apply_pil(image, table, op, magnitude)
        return image if table is None else image.point(table.ravel().tolist())

    def _magnitude(self, op: str, magnitudes_fn) -> float | None:
        """magnitudes_fn(bins, h, w)[magnitude], cached: the colour operations' magnitudes do not depend on h, w."""
        key = (op, self.num_magnitude_bins, self.magnitude)
        cache = self.__dict__.setdefault("_magnitudes", {})
        if key not in cache:
            magnitudes = magnitudes_fn(self.num_magnitude_bins, 1, 1)
            cache[key] = None if magnitudes is None else float(magnitudes[self.magnitude])
        return cache[key]

    @staticmethod
    def _apply_pil(image: PIL.Image.Image, table: np.ndarray | None, op: str, magnitude: float
                   ) -> tuple[PIL.Image.Image, np.ndarray | None]:
        """One colour operation: returns (image, pending table); torchvision's PIL semantics exactly."""
        if op == "Identity":
            return image, table
        if op in ("Color", "Sharpness", "Contrast"):  # need the pixels themselves: apply the pending table first
            if table is not None:
                image, table = image.point(table.ravel().tolist()), None
            if op == "Color":
                return ImageEnhance.Color(image).enhance(1.0 + magnitude), None
            if op == "Sharpness":
                return _sharpness(image, 1.0 + magnitude), None
            grey = np.asarray(image.convert("L").histogram(), dtype=np.float64)  # ImageEnhance.Contrast's mean
            step = np.broadcast_to(_blend_table(int((grey * _LEVELS).sum() / grey.sum() + 0.5), 1.0 + magnitude),
                                   (3, 256))
        elif op == "Brightness":
            step = np.broadcast_to(_blend_table(0, 1.0 + magnitude), (3, 256))
        elif op == "Posterize":
            step = np.broadcast_to(_LEVELS & ~(2 ** (8 - int(magnitude)) - 1), (3, 256))
        elif op == "Solarize":
            step = np.broadcast_to(np.where(_LEVELS < 255.0 * magnitude, _LEVELS, 255 - _LEVELS), (3, 256))
        elif op in ("AutoContrast", "Equalize"):  # from the histogram of the image with the pending table applied
            histogram = np.asarray(image.histogram(), dtype=np.int64).reshape(3, 256)
            if table is not None:
                mapped = np.zeros_like(histogram)
                for c in range(3):
                    np.add.at(mapped[c], table[c], histogram[c])
                histogram = mapped
            step = np.stack([_histogram_table(histogram[c], op) for c in range(3)])
        else:
            raise ValueError(f"ColorRandAugment has no operation {op!r}")
        step = np.clip(step, 0, 255)
        return image, step if table is None else np.take_along_axis(step, table, axis=1)
