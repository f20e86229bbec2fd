"""Configuration of an XPL dual audio-visual source-localization model: the architecture only.

The training method's settings (λ, τ, T, α, the curriculum) are not part of the model: they live in
`xpl_hf.method.XPLMethod`, and a trained model's card reports the ones its run used.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

IMAGE_BACKBONES = ("resnet18", "efficientnet_lite0")
AUDIO_BACKBONES = ("vggish", "soundnet8")
FEATURE_STRIDE = 32  # both image backbones downsample by 32: 224 px -> 7 x 7 map


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
        if image_size < FEATURE_STRIDE or image_size % FEATURE_STRIDE:
            raise ValueError(f"image_size={image_size} must be a positive multiple of {FEATURE_STRIDE}.")
        if clip_seconds < 0.96:
            raise ValueError(f"clip_seconds={clip_seconds} must be >= 0.96 (one VGGish example).")
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
        super().__init__(**kwargs)

    @property
    def map_size(self) -> int:
        """Side h = w of the localization map (the image encoder's output stride is 32)."""
        return self.image_size // FEATURE_STRIDE
