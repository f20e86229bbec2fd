"""Declared offline mode (HF_HUB_OFFLINE): no weight download is attempted, one warning line per missing weight."""

import pytest
import torch
from huggingface_hub import constants

import xpl_hf.pretrained as pretrained
from xpl_hf import XPLConfig, XPLModel

REAL_LOADER = torch.hub.load_state_dict_from_url


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline mode declared, an empty weight cache, and a record of every download attempt."""
    attempts = []

    def no_download(url, *args, **kwargs):
        attempts.append(url)
        raise AssertionError(f"download attempted: {url}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XPL_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(pretrained, "_warned", set())
    return attempts


def tiny_model():
    return XPLModel(XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=64))


def test_offline_mode_attempts_no_download(offline, caplog):
    model = tiny_model()
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"resnet18 backbone .*HF_HUB_OFFLINE"):
        pretrained.load_pretrained_backbones(model, skip=("soundnet8",))  # not allowed to stay random: stops
    with caplog.at_level("WARNING", logger="xpl_hf.pretrained"):
        report = pretrained.load_pretrained_backbones(model, skip=("soundnet8",), allow_random=("resnet18",))
        pretrained.load_pretrained_backbones(model, skip=("soundnet8",), allow_random=("resnet18",))  # warned once
    assert offline == []
    assert report["branch_a.image_encoder"] == report["branch_b.image_encoder"] == "random (offline mode; allowed)"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "ResNet-18" in messages[0] and "HF_HUB_OFFLINE" in messages[0] and "not downloading" in messages[0]
    with pytest.raises(pretrained.OfflineModeError, match="vggish"):
        pretrained.vggish_state_dict()
    assert offline == []


def test_offline_mode_uses_a_cached_file(offline, monkeypatch):
    model = tiny_model()
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v
             for k, v in model.branch_a.image_encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # torchvision's classifier: dropped on load
    cached = pretrained.cache_dir() / "resnet18-f37072fd.pth"
    torch.save(state, cached)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", REAL_LOADER)  # finds the cached file: no network
    report = pretrained.load_pretrained_backbones(model, skip=("soundnet8",))
    assert report["branch_a.image_encoder"].startswith("ResNet-18")
    assert torch.all(model.branch_b.image_encoder.conv1.weight == 0.5)


def test_offline_mode_is_read_at_call_time(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert not pretrained.offline_mode()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pretrained.offline_mode()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # declared in code
    assert pretrained.offline_mode()
