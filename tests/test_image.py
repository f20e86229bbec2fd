"""The one image rule (xpl_hf.image): training and inference paths see identical pixels; hostile images refused."""

import io

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import soundfile as sf
import torch

from xpl_hf import ImageError, XPLProcessor
from xpl_hf.data.decoding import decode_image
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.image import MAX_PIXELS, full_size, load_image


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _images():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    rgba[:10, :10, 3] = 0  # a transparent corner
    palette = PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 0
    sixteen = PIL.Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16))
    return {"rgba": PIL.Image.fromarray(rgba), "palette": palette, "16-bit": sixteen}


@pytest.mark.parametrize("kind", ["rgba", "palette", "16-bit"])
def test_training_and_inference_paths_give_identical_tensors(kind, tmp_path):
    png = _png(_images()[kind])
    path = tmp_path / f"{kind}.png"
    path.write_bytes(png)
    processor = XPLProcessor(image_size=64, clip_seconds=1.0)
    wav = io.BytesIO()
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
    row = {"id": kind, "image": {"bytes": png, "path": None}, "audio": {"bytes": wav.getvalue(), "path": None},
           "boxes": [[0.1, 0.1, 0.5, 0.5]], "gt_rule": "union"}
    training_path = XPLCollator(processor, train=False)([row])["pixel_values"]
    inference_path = processor(images=str(path))["pixel_values"]
    assert torch.equal(training_path, inference_path)


def test_alpha_is_composited_on_white_and_16_bit_uses_the_full_range():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    assert np.asarray(load_image(rgba)).min() == 255
    grey16 = np.full((4, 4), 65535 // 2, dtype=np.uint16)  # half of the full range, whatever the image's maximum
    assert int(np.asarray(load_image(grey16))[0, 0, 0]) == 127


def test_hostile_images_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="corrupt or not an image"):
        load_image(b"\x89PNG\r\n\x1a\n garbage")
    big = _png(PIL.Image.new("L", (300, 300)))
    monkeypatch.setattr("xpl_hf.image.MAX_PIXELS", 300 * 300 - 1)  # a bomb, scaled down to test quickly
    with pytest.raises(ImageError, match="megapixels"):
        load_image(big)
    assert MAX_PIXELS >= 4096 * 4096


def test_decompression_bomb_is_an_image_error(monkeypatch):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own bomb check, scaled down
    monkeypatch.setattr("xpl_hf.image.MAX_PIXELS", 10**9)
    with pytest.raises(ImageError, match="too large|megapixels|corrupt"):
        load_image(_png(PIL.Image.new("L", (100, 100))))


def _jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    """A JPEG stored sideways, as phones write them: a red block at the stored top-left, EXIF Orientation set."""
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
    pixels[: height // 4, : width // 4] = (255, 0, 0)
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_on_every_path(orientation, tmp_path):
    """Issue 18.9: the Space turned a phone photo upright, training did not; now every input kind does."""
    data = _jpeg_with_orientation(96, 64, orientation)
    path = tmp_path / "phone.jpg"
    path.write_bytes(data)
    expected = PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(data))).convert("RGB")
    if orientation in (6, 8):
        assert expected.size == (64, 96)
    for source in (data, str(path), {"bytes": data, "path": None}, PIL.Image.open(io.BytesIO(data))):
        image = load_image(source)
        assert image.size == expected.size and np.array_equal(np.asarray(image), np.asarray(expected)), type(source)
    assert np.array_equal(np.asarray(decode_image({"bytes": data, "path": None})), np.asarray(expected))
    assert load_image(load_image(data)).size == expected.size  # applied once: the tag is gone afterwards
    processor = XPLProcessor(image_size=64, clip_seconds=1.0)  # no reduced decode: compare with the full one too
    wav = io.BytesIO()
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
    row = {"id": "phone", "image": {"bytes": data, "path": None}, "audio": {"bytes": wav.getvalue(), "path": None},
           "boxes": [[0.1, 0.1, 0.5, 0.5]], "gt_rule": "union"}
    training = XPLCollator(processor, train=False)([row])["pixel_values"]
    assert torch.equal(training, processor(images=str(path))["pixel_values"])
    assert torch.equal(training, processor(images=expected)["pixel_values"])


def test_full_size_of_a_reduced_decode():
    data = _jpeg_with_orientation(640, 480, 6)  # stored 640 x 480, shown 480 x 640
    reduced = load_image(data, target_size=64)
    assert reduced.size == (120, 160) and full_size(reduced) == (480, 640)
    assert full_size(load_image(data)) == (480, 640) == load_image(data).size
    assert full_size(PIL.Image.new("RGB", (5, 7))) == (5, 7)
