"""The fast preprocessing paths equal their references: polyphase resampling (scipy), the colour RandAugment
(torchvision), log-mel and normalisation (the formulas), and reduced-size JPEG decoding (within a stated tolerance,
identically on the training and inference paths)."""

import io
import math

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter
import pytest
import torch
from scipy.signal import resample_poly
from torchvision.transforms import v2

from xpl_hf.audio import _lowpass, resample
from xpl_hf.data.synthetic import SyntheticConfig, generate_sample
from xpl_hf.data.transforms import ColorRandAugment, XPLCollator
from xpl_hf.image import load_image
from xpl_hf.processing_xpl import XPLProcessor


@pytest.mark.parametrize("orig, new", [(16000, 22050), (48000, 22050), (44100, 16000), (8000, 22050), (48000, 16000),
                                       (22050, 16000), (384000, 22050), (11025, 22050)])
def test_resample_equals_scipy_resample_poly(orig, new):
    rng = np.random.default_rng(0)
    g = math.gcd(orig, new)
    up, down = new // g, orig // g
    for n in (1, 7, 160, 4801, orig // 10):
        x = rng.uniform(-1, 1, n).astype(np.float32)
        reference = resample_poly(x, up, down, window=_lowpass(up, down))
        y = resample(x, orig, new)
        assert y.dtype == np.float32 and y.shape == reference.shape, (n, y.shape, reference.shape)
        np.testing.assert_allclose(y, reference, atol=2e-6, rtol=0)
        start, length = len(reference) // 3, len(reference) // 2  # an output window: only it is computed
        np.testing.assert_allclose(resample(x, orig, new, start, length), reference[start:start + length],
                                   atol=2e-6, rtol=0)


class _TorchvisionColorRandAugment(v2.RandAugment):
    _AUGMENTATION_SPACE = ColorRandAugment._AUGMENTATION_SPACE


def _images():
    rng = np.random.default_rng(1)
    config = SyntheticConfig(image_size=64)
    images = [load_image(generate_sample(config, "labeled", i)["image"]) for i in range(12)]
    images.append(PIL.Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)))  # every level present
    images.append(PIL.Image.new("RGB", (16, 16), (10, 200, 30)))  # flat: autocontrast/equalize identity cases
    dark = rng.integers(0, 40, (24, 24, 3), dtype=np.uint8)
    images.append(PIL.Image.fromarray(dark))  # narrow histogram
    return images


@pytest.mark.parametrize("num_ops, magnitude", [(1, 9), (2, 9), (3, 0), (2, 20), (4, 30)])
def test_color_randaugment_is_torchvision_pixel_for_pixel(num_ops, magnitude):
    """Same seed -> same operations, magnitudes and pixels as torchvision's RandAugment (colour space)."""
    ours = ColorRandAugment(num_ops=num_ops, magnitude=magnitude)
    reference = _TorchvisionColorRandAugment(num_ops=num_ops, magnitude=magnitude)
    for i, image in enumerate(_images()):
        for seed in range(4):
            torch.manual_seed(100 * i + seed)
            expected = np.asarray(reference(image))
            torch.manual_seed(100 * i + seed)
            got = np.asarray(ours(image))
            assert np.array_equal(got, expected), (i, seed)
    tensor = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)  # other inputs: torchvision's own path
    torch.manual_seed(0)
    expected = reference(tensor)
    torch.manual_seed(0)
    assert torch.equal(ours(tensor), expected)


def test_log_mel_and_normalisation_match_their_formulas():
    processor = XPLProcessor(image_size=32)
    waveform = torch.randn(2, 48000)
    spec = torch.stft(waveform, n_fft=processor.n_fft, hop_length=processor.hop_length,
                      win_length=processor.win_length, window=processor._window, center=False,
                      return_complex=True).abs()
    log_mel = torch.log(spec.transpose(-1, -2) @ processor._mel_filters + processor.log_offset)
    expected = log_mel[..., : 3 * 96, :].unflatten(-2, (3, 96))
    torch.testing.assert_close(processor.log_mel_examples(waveform), expected, atol=1e-5, rtol=1e-5)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    x = torch.from_numpy(np.asarray(image).copy()).float().permute(2, 0, 1) / 255.0
    mean, std = torch.tensor(processor.image_mean).view(3, 1, 1), torch.tensor(processor.image_std).view(3, 1, 1)
    torch.testing.assert_close(processor.image_to_tensor(image), (x - mean) / std, atol=1e-5, rtol=0)
    out = torch.full((32, 32, 3), float("nan"))
    assert torch.equal(processor.image_to_tensor(image, out=out), processor.image_to_tensor(image))


def _photo(width: int, height: int) -> bytes:
    """A photo-like JPEG: smooth gradients, noise and sharp-edged shapes."""
    rng = np.random.default_rng(width * height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 97), 128 + 100 * np.cos(y / 53), 128 + 60 * np.sin((x + y) / 31)], -1)
    image = PIL.Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(image)
    for _ in range(30):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse([x0, y0, x0 + int(rng.integers(10, width // 4)), y0 + int(rng.integers(10, height // 4))],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.filter(PIL.ImageFilter.GaussianBlur(1)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("size, decoded", [((1000, 800), (500, 400)), ((448, 448), (224, 224)), ((447, 900), None)])
def test_large_jpeg_decodes_reduced_within_tolerance_on_both_paths(size, decoded, tmp_path):
    """JPEGs >= 2 x 224 on both sides decode at a reduced scale: within 1.5 grey levels (mean) of a full decode,
    and the training collator and the processor's inference path give identical tensors."""
    processor = XPLProcessor(image_size=224, clip_seconds=1.0)
    data = _photo(*size)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert load_image(data, target_size=224).size == (decoded or size)
    full = processor.image_to_tensor(load_image(data))  # no hint: full decode, then the bilinear squash
    inference = processor(images=str(path))["pixel_values"][0]
    grey_levels = (inference - full).abs() * torch.tensor(processor.image_std).view(3, 1, 1) * 255
    if decoded is None:
        assert torch.equal(inference, full)  # smaller than 2 x 224 on a side: decoded exactly as before
    else:
        assert 0 < grey_levels.mean() <= 1.5
    row = {**generate_sample(SyntheticConfig(image_size=64, clip_seconds=1.0), "labeled", 0),
           "image": {"bytes": data, "path": None}}
    training = XPLCollator(processor, train=False)([row])["pixel_values"][0]
    assert torch.equal(training, inference)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_wav_bytes_decode_like_soundfile(channels, subtype):
    """16-bit PCM WAV bytes take the numpy path, with soundfile's values; other encodings go to soundfile."""
    import soundfile as sf

    from xpl_hf.audio import AudioError, _pcm16_wav, decode_audio

    rng = np.random.default_rng(channels)
    buffer = io.BytesIO()
    sf.write(buffer, rng.uniform(-1, 1, (32000, channels)).astype(np.float32), 16000, format="WAV", subtype=subtype)
    data = buffer.getvalue()
    assert (_pcm16_wav(data) is not None) == (subtype == "PCM_16")
    for clip_seconds in (None, 0.5, 3.0):
        fast, rate = decode_audio(data, clip_seconds)
        reference, reference_rate = decode_audio(bytearray(data), clip_seconds)  # bytearray: the soundfile path
        assert rate == reference_rate == 16000 and fast.dtype == np.float32
        assert fast.shape == reference.shape and np.array_equal(fast, reference)
    truncated = data[: len(data) // 2]  # the data chunk claims more bytes than the file holds: soundfile decides
    assert _pcm16_wav(truncated) is None
    with pytest.raises(AudioError):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVEjunk")


class _ReportShared:
    """A collate_fn returning (batch, {float tensor key: is_shared() inside the worker})."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, rows):
        batch = self.collate(rows)
        return batch, {k: v.is_shared() for k, v in batch.items() if torch.is_tensor(v) and v.is_floating_point()}


def test_worker_batches_are_built_in_shared_memory():
    """In a DataLoader worker the collator writes the batch into shared memory (no copy when it is sent over)."""
    from torch.utils.data import DataLoader

    rows = [generate_sample(SyntheticConfig(image_size=32, clip_seconds=1.0), "labeled", i) for i in range(4)]
    collate = XPLCollator(XPLProcessor(image_size=32, clip_seconds=1.0), train=False)
    (batch, shared), = DataLoader(rows, batch_size=4, num_workers=1, collate_fn=_ReportShared(collate))
    assert shared and all(shared.values()), shared
    in_process = collate(rows)
    assert not in_process["pixel_values"].is_shared()
    for key in ("pixel_values", "audio_log_mel", "audio_waveform", "gt_maps"):
        assert torch.equal(batch[key], in_process[key]), key


@pytest.mark.parametrize("factor", [0.0, 0.1, 0.73, 1.0, 1.27, 1.9, 3.0])
def test_sharpness_is_pil_pixel_for_pixel(factor):
    from PIL import ImageEnhance

    from xpl_hf.data.augment import _sharpness

    for image in _images() + [PIL.Image.new("RGB", (2, 5), (1, 2, 3))]:
        expected = np.asarray(ImageEnhance.Sharpness(image).enhance(factor))
        assert np.array_equal(np.asarray(_sharpness(image, factor)), expected), image.size
