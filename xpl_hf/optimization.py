"""What a training run optimises, and the schedule rules it derives from its length.

- :func:`freeze_backbones`: which trunks stay frozen (no gradient, eval-mode BatchNorm) and which of their top stages
  train anyway;
- :func:`parameter_groups`: the optimiser's groups (pretrained trunks at ``learning_rate x backbone_scale``);
- :func:`default_rampup_steps`: the curriculum's default ramp of r(t) (eq. 3), over the first half of stage 2.

``train_xpl.py`` and the study protocols of ``bench/`` call these, so every run freezes, groups and ramps alike. This
module imports no torch (argument parsing may use :func:`default_rampup_steps`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .modeling_xpl import TopStages, XPLModel

__all__ = ["FROZEN_SUFFIXES", "freeze_backbones", "parameter_groups", "default_rampup_steps"]

FROZEN_SUFFIXES = {"none": (), "image": ("image_encoder",), "all": ("image_encoder", "audio_encoder")}
"""``--freeze_backbones`` value -> the module-name suffixes of the trunks it freezes."""


def freeze_backbones(model: XPLModel, which: str, top: TopStages) -> list[torch.nn.Module]:
    """Freeze the trunks that ``which`` names (``"none"``, ``"image"`` or ``"all"``), except their ``top`` stages.

    Args:
        model: an `XPLModel`; its parameters' ``requires_grad`` flags are set in place.
        which: a key of :data:`FROZEN_SUFFIXES`.
        top: the `TopStages` that train although their trunk is frozen (checked against the trunks).
    Returns:
        The frozen trunk modules, for `xpl_hf.trainer.TrainingStep`'s ``frozen`` (kept in eval mode, so their
        BatchNorm statistics do not move).
    """
    if which not in FROZEN_SUFFIXES:
        raise ValueError(f"freeze_backbones {which!r}: must be one of {sorted(FROZEN_SUFFIXES)}.")
    frozen = [m for name, m in model.named_modules() if name.endswith(FROZEN_SUFFIXES[which])]
    for module in frozen:
        module.requires_grad_(False)
    if frozen:
        for stage in top.check(model).trainable(model):
            stage.requires_grad_(True)
    return frozen


def parameter_groups(model: XPLModel, learning_rate: float, backbone_scale: float,
                     weights_report: Mapping[str, str]) -> list[dict]:
    """The optimiser's parameter groups: the trainable parameters of pretrained trunks at ``learning_rate x
    backbone_scale``, every other trainable parameter at ``learning_rate``; empty groups are left out.

    Args:
        model: an `XPLModel` (frozen parameters, ``requires_grad`` False, are left out).
        learning_rate: the peak learning rate.
        backbone_scale: the factor of pretrained trunks (``--backbone_learning_rate_scale``).
        weights_report: what loaded each trunk, ``{"branch_a.image_encoder": source, ...}``
            (`xpl_hf.pretrained.load_pretrained_backbones`); a source starting with ``"random"`` is not pretrained.
            The key ``"all"`` (a model from ``from_pretrained``) stands for every trunk.
    Returns:
        ``[{"params": [...], "lr": ...}, ...]`` for ``torch.optim.AdamW``.
    """
    loaded = {part for part, source in weights_report.items() if not source.startswith("random")}

    def pretrained(name: str) -> bool:
        part = ".".join(name.split(".")[:2])  # e.g. "branch_a.image_encoder"
        return part in loaded or ("all" in loaded and part.endswith("_encoder"))

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not pretrained(n)], "lr": learning_rate},
              {"params": [p for n, p in params if pretrained(n)], "lr": learning_rate * backbone_scale}]
    return [g for g in groups if g["params"]]


def default_rampup_steps(max_train_steps: int, warmup_stage_steps: int) -> int:
    """The curriculum's default ``curriculum_rampup_steps``: r(t) ramps from r0 to 1 over the first half of stage 2,
    ``(max_train_steps - warmup_stage_steps) // 2`` steps (0, no ramp, when stage 2 is shorter than 2 steps)."""
    return max((max_train_steps - warmup_stage_steps) // 2, 0)
