"""XPL: two audio-visual source-localization (AVSL) branches that teach each other.

One branch (docs/method.md), for an image x and its audio a:

    V = normalize(conv1x1(image_encoder(x)))         (B, D, h, w)   unit norm at each position u
    e = normalize(linear(audio_encoder(a)))          (B, D)
    S(u) = <V(u), e>                                 (B, h, w)      cosine similarity in [-1, 1]
    P(u) = sigmoid(w * S(u) + b),  w = exp(log w) > 0  (B, h, w)    localization map in (0, 1)

[`XPLModel`] holds branch A (image encoder + VGGish) and branch B (image encoder + SoundNet-8) and fuses their maps
as the mean of the per-sample min-max-normalised maps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbones import build_audio_encoder, build_image_encoder
from .configuration_xpl import XPLConfig
from .maps import minmax_normalize

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""The weight files `from_pretrained` reads, in its order of preference."""


class WeightsError(OSError):
    """Weights that would make a broken model: tensors missing or of the wrong shape, or NaN / infinite values. The
    message names the file."""


def weights_file(name_or_path: str | os.PathLike | None, subfolder: str = "") -> str:
    """The weight file `from_pretrained` reads in a local folder (for messages), or a description of a Hub id's."""
    if name_or_path is None:
        return "the given state_dict"
    folder = Path(name_or_path, subfolder or "")
    found = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    return str(found[0]) if found else f"the weights of {os.fspath(name_or_path)!r}"


def check_finite_weights(tensors: nn.Module | Mapping[str, torch.Tensor], source: str) -> None:
    """Raise [`WeightsError`] naming ``source`` and the tensors that hold NaN or infinite values.

    Args:
        tensors: a model (its parameters and buffers) or a state dict, e.g. one read from a checkpoint.
        source: the file the tensors came from, for the message.
    """
    state = tensors.state_dict() if isinstance(tensors, nn.Module) else tensors
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise WeightsError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); the file is corrupt "
                           "or was saved after training diverged.")


@dataclass
class AVSLBranchOutput(ModelOutput):
    """Outputs of one AVSL branch.

    Args:
        maps (`torch.FloatTensor` of shape `(batch, h, w)`): localization map P in (0, 1).
        similarity (`torch.FloatTensor` of shape `(batch, h, w)`): cosine similarity S in [-1, 1].
        visual_features (`torch.FloatTensor` of shape `(batch, embed_dim, h, w)`): V, unit norm per position.
        audio_embeds (`torch.FloatTensor` of shape `(batch, embed_dim)`): e, unit norm.
    """

    maps: torch.FloatTensor | None = None
    similarity: torch.FloatTensor | None = None
    visual_features: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None


@dataclass
class XPLModelOutput(ModelOutput):
    """Outputs of [`XPLModel`]: both branches' fields (suffix `_a` / `_b`) and the fused map.

    Args:
        maps (`torch.FloatTensor` of shape `(batch, h, w)`): fused map, mean of the min-max-normalised maps of A and B.
        maps_a, maps_b (`torch.FloatTensor` of shape `(batch, h, w)`): each branch's localization map P in (0, 1).
        similarity_a, similarity_b (`torch.FloatTensor` of shape `(batch, h, w)`): cosine similarity maps S.
        visual_features_a, visual_features_b (`torch.FloatTensor` of shape `(batch, embed_dim, h, w)`).
        audio_embeds_a, audio_embeds_b (`torch.FloatTensor` of shape `(batch, embed_dim)`).
    """

    maps: torch.FloatTensor | None = None
    maps_a: torch.FloatTensor | None = None
    maps_b: torch.FloatTensor | None = None
    similarity_a: torch.FloatTensor | None = None
    similarity_b: torch.FloatTensor | None = None
    visual_features_a: torch.FloatTensor | None = None
    visual_features_b: torch.FloatTensor | None = None
    audio_embeds_a: torch.FloatTensor | None = None
    audio_embeds_b: torch.FloatTensor | None = None


class AVSLBranch(nn.Module):
    """One AVSL model: an image encoder and an audio encoder meeting in a D-dim cosine space."""

    def __init__(self, config: XPLConfig, image_backbone: str, audio_backbone: str):
        super().__init__()
        self.audio_backbone = audio_backbone
        self.image_encoder = build_image_encoder(image_backbone)
        self.audio_encoder = build_audio_encoder(audio_backbone, config.vggish_fc_dim)
        self.visual_proj = nn.Conv2d(self.image_encoder.out_channels, config.embed_dim, kernel_size=1)
        self.audio_proj = nn.Linear(self.audio_encoder.out_channels, config.embed_dim)
        # P = sigmoid(w * S + b) with w = exp(map_log_scale) > 0, so P is a monotone function of S.
        self.map_log_scale = nn.Parameter(torch.tensor(math.log(config.map_init_scale)))
        self.map_bias = nn.Parameter(torch.tensor(float(config.map_init_bias)))

    @property
    def audio_input_name(self) -> str:
        return "audio_log_mel" if self.audio_backbone == "vggish" else "audio_waveform"

    def localization_map(self, similarity: torch.Tensor) -> torch.Tensor:
        """P = sigmoid(w * S + b): any-shaped similarity in [-1, 1] -> probability in (0, 1), in fp32 (under bf16
        autocast a bf16 P would resolve only ~0.004 near 0 and 1, where the BCE terms live)."""
        return torch.sigmoid(self.map_log_scale.exp() * similarity.float() + self.map_bias)

    def forward(self, pixel_values: torch.Tensor, audio_input: torch.Tensor) -> AVSLBranchOutput:
        """
        Args:
            pixel_values: (B, 3, S, S) ImageNet-normalised images.
            audio_input: (B, N, 96, 64) log-mel examples for VGGish, or (B, L) waveform for SoundNet-8.
        """
        return self.forward_features(self.image_encoder(pixel_values), self.audio_encoder(audio_input))

    def forward_features(self, image_features: torch.Tensor, audio_features: torch.Tensor) -> AVSLBranchOutput:
        """The heads on the trunks' outputs (what trains when the trunks are frozen; a feature cache calls this).

        Args:
            image_features: (B, C_img, h, w) output of `image_encoder`.
            audio_features: (B, C_audio) output of `audio_encoder`.
        """
        # normalised in float32: F.normalize's eps (1e-12) is 0 in float16, where a zero vector (silence) gives NaN
        visual = F.normalize(self.visual_proj(image_features).float(), dim=1).to(image_features.dtype)
        audio = F.normalize(self.audio_proj(audio_features).float(), dim=-1).to(audio_features.dtype)
        similarity = torch.einsum("bdhw,bd->bhw", visual, audio)
        return AVSLBranchOutput(
            maps=self.localization_map(similarity), similarity=similarity, visual_features=visual, audio_embeds=audio
        )


class XPLPreTrainedModel(PreTrainedModel):
    config_class = XPLConfig
    base_model_prefix = "xpl"
    main_input_name = "pixel_values"
    input_modalities = ("image", "audio")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, strict about the weights and in float32 by default.

        The processor's inputs are float32, so the model loads in float32 whatever `dtype` its config records (a run
        on a GPU may save `float16`), unless `dtype=` is passed. Where transformers would only warn and initialise
        the missing tensors at random, this raises.

        Raises:
            WeightsError: the weight file lacks some of the model's tensors (an empty file lacks all), holds some
                with another shape, or holds NaN or infinite values; the message names the file and the tensors.
        """
        return_info = kwargs.pop("output_loading_info", False)
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = torch.float32
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)
        source = weights_file(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
        for kind, keys in (("is missing", sorted(info["missing_keys"])),
                           ("has another shape for", sorted(str(key[0]) for key in info["mismatched_keys"]))):
            if keys:
                shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                raise WeightsError(f"{source} {kind} {len(keys)} of the model's {len(model.state_dict())} tensors "
                                   f"({shown}); it was not saved from this model (or its config.json), or is "
                                   "truncated.")
        check_finite_weights(model, source)
        return (model, info) if return_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, AVSLBranch):
            init.constant_(module.map_log_scale, math.log(self.config.map_init_scale))
            init.constant_(module.map_bias, float(self.config.map_init_bias))


class XPLModel(XPLPreTrainedModel):
    r"""
    The XPL dual model: branch A (`image_backbone_a` + `audio_backbone_a`, VGGish by default) and branch B
    (`image_backbone_b` + `audio_backbone_b`, SoundNet-8 by default).

    A fresh model has randomly initialised weights; `xpl_hf.pretrained.load_pretrained_backbones(model)` loads the
    pretrained backbones (offline-aware). `from_pretrained` restores a trained checkpoint.

    Example:

    ```python
    >>> from xpl_hf import XPLModel, XPLProcessor
    >>> model = XPLModel.from_pretrained("path/or/hub-id")
    >>> processor = XPLProcessor.from_pretrained("path/or/hub-id")
    >>> inputs = processor(images=image, audio=waveform, sampling_rate=44100, return_tensors="pt")
    >>> maps = model(**inputs).maps  # (1, 7, 7) fused heat map in [0, 1]
    ```
    """

    def __init__(self, config: XPLConfig):
        super().__init__(config)
        self.branch_a = AVSLBranch(config, config.image_backbone_a, config.audio_backbone_a)
        self.branch_b = AVSLBranch(config, config.image_backbone_b, config.audio_backbone_b)
        self.post_init()

    @staticmethod
    def _audio_input(branch: AVSLBranch, audio_log_mel, audio_waveform) -> torch.Tensor:
        audio = audio_log_mel if branch.audio_input_name == "audio_log_mel" else audio_waveform
        if audio is None:
            raise ValueError(f"Branch with audio backbone {branch.audio_backbone!r} needs `{branch.audio_input_name}`; "
                             "pass the XPLProcessor's output unchanged: model(**processor(...)).")
        return audio

    def forward(
        self,
        pixel_values: torch.Tensor,
        audio_log_mel: torch.Tensor | None = None,
        audio_waveform: torch.Tensor | None = None,
        pixel_values_b: torch.Tensor | None = None,
        **kwargs,
    ) -> XPLModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, 3, S, S)`): images for branch A (and B by default).
            audio_log_mel (`torch.FloatTensor` of shape `(batch, N, 96, 64)`): VGGish log-mel examples.
            audio_waveform (`torch.FloatTensor` of shape `(batch, L)`): 22.05 kHz waveform in [-256, 256].
            pixel_values_b (`torch.FloatTensor` of shape `(batch, 3, S, S)`, *optional*): a separate view for
                branch B (training uses independently colour-augmented views per branch).
            kwargs: other keys of a collated batch (`ids`, `gt_maps`, ...) are accepted and ignored, so that
                `model(**batch)` works with `xpl_hf.data.XPLCollator`'s batches as with the processor's output.
        """
        if pixel_values_b is None:
            pixel_values_b = pixel_values
        out_a = self.branch_a(pixel_values, self._audio_input(self.branch_a, audio_log_mel, audio_waveform))
        out_b = self.branch_b(pixel_values_b, self._audio_input(self.branch_b, audio_log_mel, audio_waveform))
        return self.fuse(out_a, out_b)

    @staticmethod
    def fuse(out_a: AVSLBranchOutput, out_b: AVSLBranchOutput) -> XPLModelOutput:
        """Both branches' outputs and the fused map, the mean of their per-sample min-max-normalised maps."""
        fused = 0.5 * (minmax_normalize(out_a.maps) + minmax_normalize(out_b.maps))
        return XPLModelOutput(
            maps=fused,
            maps_a=out_a.maps,
            maps_b=out_b.maps,
            similarity_a=out_a.similarity,
            similarity_b=out_b.similarity,
            visual_features_a=out_a.visual_features,
            visual_features_b=out_b.visual_features,
            audio_embeds_a=out_a.audio_embeds,
            audio_embeds_b=out_b.audio_embeds,
        )


@dataclass(frozen=True)
class TopStages:
    """How many top stages of each trunk train while the rest stays frozen (`xpl_hf.backbones.Trunk`).

    The stages below are computed once per clip and view and cached (`xpl_hf.trunk_features`); 0 caches a trunk's
    whole output (only the projections and the map heads learn).

    Args:
        image: top stages of both branches' image trunks (EfficientNet-Lite0 has 18: stem, 16 blocks, head).
        audio_a, audio_b: top stages of branch A's and B's audio trunks (VGGish has 4, SoundNet-8 has 7).
    """

    image: int = 0
    audio_a: int = 0
    audio_b: int = 0

    def check(self, model: XPLModel) -> TopStages:
        """Raise a ValueError naming the setting when a count does not fit its trunk; returns self."""
        for name, trunk in (("image", model.branch_a.image_encoder), ("image", model.branch_b.image_encoder),
                            ("audio_a", model.branch_a.audio_encoder), ("audio_b", model.branch_b.audio_encoder)):
            try:
                trunk.check_top(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"{name}_top_stages: {err}") from None
        return self

    def trainable(self, model: XPLModel) -> list[nn.Module]:
        """The trunks' stages that train (parameters to unfreeze and optimise)."""
        return [stage for branch, audio in ((model.branch_a, self.audio_a), (model.branch_b, self.audio_b))
                for stage in (*branch.image_encoder.top_stages(self.image), *branch.audio_encoder.top_stages(audio))]


class XPLFromTrunkFeatures(nn.Module):
    """An [`XPLModel`] run on cached trunk stems: the top stages of each trunk, the heads and the fusion.

    The module the training step calls when the lower trunk stages are frozen and cached; it owns no weights of its
    own (the parameters are ``model``'s, so the trained ``model`` is saved as usual), and ``model(**batch)`` works on
    the batches of `xpl_hf.trunk_features.FeatureBatches`.

    Args:
        model: the `XPLModel` being trained.
        top: its `TopStages` (the cache was computed with the same).
    """

    def __init__(self, model: XPLModel, top: TopStages):
        super().__init__()
        self.model = model
        self.top = top.check(model)

    def forward(self, image_features: torch.Tensor, audio_features_a: torch.Tensor, audio_features_b: torch.Tensor,
                image_features_b: torch.Tensor | None = None, **kwargs) -> XPLModelOutput:
        r"""
        Args:
            image_features (`torch.Tensor` of shape `(batch, C, h, w)`): branch A's image stem output (its view).
            audio_features_a, audio_features_b (`torch.Tensor`): the audio stems of branch A and B, e.g.
                `(batch, N, 4096)` for VGGish below its last stage or `(batch, 512, T)` for SoundNet-8 below conv7.
            image_features_b (`torch.Tensor` of shape `(batch, C, h, w)`, *optional*): branch B's image stem output
                (its own view, or its own trunk's); defaults to ``image_features``.
            kwargs: other keys of the batch (`ids`, `gt_maps`, ...), ignored.
        """
        if image_features_b is None:
            image_features_b = image_features
        outs = []
        for branch, image, audio, audio_top in ((self.model.branch_a, image_features, audio_features_a,
                                                 self.top.audio_a),
                                                (self.model.branch_b, image_features_b, audio_features_b,
                                                 self.top.audio_b)):
            visual = branch.image_encoder.forward_top(image.float(), self.top.image)
            outs.append(branch.forward_features(visual, branch.audio_encoder.forward_top(audio.float(), audio_top)))
        return self.model.fuse(*outs)


__all__ = ["XPLModel", "XPLPreTrainedModel", "XPLModelOutput", "AVSLBranch", "AVSLBranchOutput", "TopStages",
           "XPLFromTrunkFeatures", "WeightsError",
           "check_finite_weights", "weights_file", "WEIGHT_FILES"]
