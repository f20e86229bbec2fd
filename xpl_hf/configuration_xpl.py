"""Configuration of an XPL dual audio-visual source-localization model: the architecture only.

The training method's settings (λ, τ, T, α, the curriculum) are not part of the model: they live in
`xpl_hf.method.XPLMethod`, and a trained model's card reports the ones its run used.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedConfig

IMAGE_BACKBONES = ("resnet18", "efficientnet_lite0")
AUDIO_BACKBONES = ("vggish", "soundnet8")
AUDIO_BACKBONE_NAMES = {"vggish": "VGGish", "soundnet8": "SoundNet-8"}  # as tables print them
FEATURE_STRIDE = 32  # both image backbones downsample by 32: 224 px -> 7 x 7 map

# Bounds of the input settings, shared with XPLProcessor (a value outside them is refused, naming the setting).
IMAGE_SIZE_RANGE = (FEATURE_STRIDE, 1024)  # a multiple of 32: 1 x 1 to 32 x 32 maps
CLIP_SECONDS_RANGE = (0.96, 60.0)  # one VGGish example to a minute (the decode window is read whole)
VGGISH_RATE_RANGE = (16_000, 48_000)  # the log-mel's top band ends at 7.5 kHz: the Nyquist frequency must exceed it
SOUNDNET_RATE_RANGE = (8_000, 48_000)
WIDTH_RANGE = (1, 8192)  # embed_dim, vggish_fc_dim
DTYPES = ("float32", "bfloat16", "float16")  # a config's `dtype`: a name or the torch.dtype itself


def check_range(name: str, value, low: float, high: float, integer: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite number in [low, high] (a whole one if
    ``integer``)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not low <= value <= high or (integer and value != int(value)):
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{name}={value!r} is out of range: expected {kind} in [{low:g}, {high:g}].")


def _check_dtype(dtype: str | torch.dtype | None) -> None:
    if dtype is not None and str(dtype).removeprefix("torch.") not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {DTYPES} or leave it unset.")


def check_input_settings(image_size, clip_seconds, vggish_sample_rate, soundnet_sample_rate) -> None:
    """The input settings a model and its processor share, checked against the bounds above."""
    check_range("image_size", image_size, *IMAGE_SIZE_RANGE, integer=True)
    if image_size % FEATURE_STRIDE:
        raise ValueError(f"image_size={image_size} must be a multiple of {FEATURE_STRIDE} (the backbones' stride).")
    check_range("clip_seconds", clip_seconds, *CLIP_SECONDS_RANGE)
    check_range("vggish_sample_rate", vggish_sample_rate, *VGGISH_RATE_RANGE, integer=True)
    check_range("soundnet_sample_rate", soundnet_sample_rate, *SOUNDNET_RATE_RANGE, integer=True)


class XPLConfig(PreTrainedConfig):
    r"""
    Configuration of [`XPLModel`]: two AVSL branches, A and B, that differ in their audio backbone.

    Args:
        image_backbone_a / image_backbone_b (`str`, defaults to `"resnet18"`):
            Image encoder of each branch: `"resnet18"` or `"efficientnet_lite0"`.
        audio_backbone_a (`str`, defaults to `"vggish"`), audio_backbone_b (`str`, defaults to `"soundnet8"`):
            Audio encoder of each branch: `"vggish"` (log-mel patches at 16 kHz) or `"soundnet8"` (raw waveform
            at 22.05 kHz).
        embed_dim (`int`, defaults to 512): D, the shared dimension of visual feature maps and audio embeddings.
        vggish_fc_dim (`int`, defaults to 4096): width of VGGish's two FC layers (4096 in the original; smaller only
            for tiny test configurations, which then cannot load the released weights).
        image_size (`int`, defaults to 224): side of the square input image; the map is `image_size // 32` a side.
        clip_seconds (`float`, defaults to 3.0): length of the audio clip around the frame.
        vggish_sample_rate (`int`, defaults to 16000), soundnet_sample_rate (`int`, defaults to 22050).
        map_init_scale (`float`, defaults to 5.0), map_init_bias (`float`, defaults to 0.0):
            initial scale w and bias b of the learnable monotone map P = sigmoid(w * S + b), w > 0.

    Bounds, checked on creation and on load (a ValueError names the setting): `image_size` a multiple of 32 in
    [32, 1024]; `clip_seconds` in [0.96, 60]; `vggish_sample_rate` in [16000, 48000]; `soundnet_sample_rate` in
    [8000, 48000]; `embed_dim` and `vggish_fc_dim` in [1, 8192]; `map_init_scale` in [1e-6, 1e6]; `map_init_bias`
    in [-1e6, 1e6]; `dtype` float32, bfloat16, float16 or unset (`from_pretrained` loads float32 unless told).
    """

    model_type = "xpl"

    def __init__(
        self,
        image_backbone_a: str = "resnet18",
        image_backbone_b: str = "resnet18",
        audio_backbone_a: str = "vggish",
        audio_backbone_b: str = "soundnet8",
        embed_dim: int = 512,
        vggish_fc_dim: int = 4096,
        image_size: int = 224,
        clip_seconds: float = 3.0,
        vggish_sample_rate: int = 16000,
        soundnet_sample_rate: int = 22050,
        map_init_scale: float = 5.0,
        map_init_bias: float = 0.0,
        **kwargs,
    ):
        for name, value, allowed in (
            ("image_backbone_a", image_backbone_a, IMAGE_BACKBONES),
            ("image_backbone_b", image_backbone_b, IMAGE_BACKBONES),
            ("audio_backbone_a", audio_backbone_a, AUDIO_BACKBONES),
            ("audio_backbone_b", audio_backbone_b, AUDIO_BACKBONES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; choose one of {allowed}.")
        self.image_backbone_a = image_backbone_a
        self.image_backbone_b = image_backbone_b
        self.audio_backbone_a = audio_backbone_a
        self.audio_backbone_b = audio_backbone_b
        self.embed_dim = embed_dim
        self.vggish_fc_dim = vggish_fc_dim
        self.image_size = image_size
        self.clip_seconds = clip_seconds
        self.vggish_sample_rate = vggish_sample_rate
        self.soundnet_sample_rate = soundnet_sample_rate
        self.map_init_scale = map_init_scale
        self.map_init_bias = map_init_bias
        for legacy in ("avc_weight", "avc_temperature", "sharpen_temperature", "pl_ema_alpha", "consensus_min",
                       "curriculum_r0", "curriculum_rampup_steps", "curriculum_window"):
            kwargs.pop(legacy, None)  # method settings stored by version 0.1; they never configured the model
        _check_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))  # before transformers turns a name into a type
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Check every setting against its bounds (class docstring); raises a ValueError naming the setting.
        Called on creation, so on `from_pretrained` too, and by `save_pretrained`."""
        check_input_settings(self.image_size, self.clip_seconds, self.vggish_sample_rate, self.soundnet_sample_rate)
        check_range("embed_dim", self.embed_dim, *WIDTH_RANGE, integer=True)
        check_range("vggish_fc_dim", self.vggish_fc_dim, *WIDTH_RANGE, integer=True)
        check_range("map_init_scale", self.map_init_scale, 1e-6, 1e6)
        check_range("map_init_bias", self.map_init_bias, -1e6, 1e6)
        _check_dtype(self.dtype)

    @property
    def map_size(self) -> int:
        """Side h = w of the localization map (the image encoder's output stride is 32)."""
        return self.image_size // FEATURE_STRIDE

    def branch_label(self, branch: str) -> str:
        """How tables and the Space name a map: ``"a"`` -> ``"A (VGGish)"``, ``"b"`` -> ``"B (SoundNet-8)"`` (from the
        configured audio backbones, so a swapped configuration is named as it is), ``"fused"`` -> ``"fused"``."""
        if branch == "fused":
            return "fused"
        if branch not in ("a", "b"):
            raise ValueError(f"branch {branch!r}: expected 'a', 'b' or 'fused'.")
        audio = getattr(self, f"audio_backbone_{branch}")
        return f"{branch.upper()} ({AUDIO_BACKBONE_NAMES.get(audio, audio)})"
