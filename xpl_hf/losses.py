"""Loss terms of XPL (docs/method.md, eq. 6-9).

All maps P are probabilities in (0, 1) at the model's map resolution (B, h, w). BCE is computed in fp32 from
clamped probabilities (written out, not ``F.binary_cross_entropy``, which autocast refuses), so the losses
are safe under mixed precision.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["downsample_gt", "pixel_bce", "supervised_bce", "cross_bce", "cross_modal_logits", "infonce_max_pool",
           "total_loss"]

BCE_EPS = 1e-6


def downsample_gt(gt: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Ground-truth map G (B, H, W) (e.g. 224x224) -> (B, h, w) by area interpolation (the mean of each cell).

    Values stay in [0, 1] (a cell half covered by a box gets 0.5). No-op if already at ``size``.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(gt.shape[-2:]) == size:
        return gt.float()
    return F.interpolate(gt.float().unsqueeze(1), size=size, mode="area").squeeze(1)


def pixel_bce(maps: torch.Tensor, targets: torch.Tensor, eps: float = BCE_EPS) -> torch.Tensor:
    """Per-pixel BCE -(y·log p + (1 - y)·log(1 - p)) in fp32, p clamped to [eps, 1 - eps].  (B, h, w) -> (B, h, w)."""
    p = maps.float().clamp(eps, 1.0 - eps)
    y = targets.float()
    return -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))


def _masked_mean(per_pixel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, h, w) over the pixels of samples with mask (B,) True; 0 (graph kept) when none are True."""
    if mask is None:
        return per_pixel.mean()
    w = mask.to(per_pixel.dtype).view(-1, *([1] * (per_pixel.dim() - 1)))
    n_pix = per_pixel[0].numel() if per_pixel.shape[0] else 1
    return (per_pixel * w).sum() / (w.sum() * n_pix).clamp_min(1.0)


def supervised_bce(maps: torch.Tensor, gt_maps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised loss L_sup (eq. 7): mean pixel-wise BCE between P and the ground truth G of labeled samples.

    Args:
        maps: P (B, h, w) in (0, 1).
        gt_maps: G (B, H, W) in [0, 1]; area-downsampled to (h, w) when H, W differ (``downsample_gt``).
        mask: (B,) bool, True for labeled samples (``is_labeled``); None = all.
    Returns:
        scalar fp32; exactly 0 with the graph intact when no sample is labeled.
    """
    g = downsample_gt(gt_maps, maps.shape[-2:])
    return _masked_mean(pixel_bce(maps, g), mask)


def cross_bce(maps: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross pseudo-label loss L_cross (eq. 6): mean pixel-wise BCE between model m's P_m and the other
    model's soft pseudo-label Y (e.g. P_A vs Y_B), on curriculum-admitted samples only.

    Args:
        maps: P_m (B, h, w) in (0, 1) (gradient flows here).
        targets: Y (B, h, w) in [0, 1] (detached inside: pseudo-labels are constants).
        mask: (B,) bool admission mask (``CurriculumSelector.select``); None = all.
    Returns:
        scalar fp32; exactly 0 with the graph intact when nothing is admitted.
    """
    return _masked_mean(pixel_bce(maps, targets.detach()), mask)


def cross_modal_logits(visual_features: torch.Tensor, audio_embeds: torch.Tensor,
                       temperature: float = 0.03) -> torch.Tensor:
    """Max-pooled audio-visual logits: logit_ij = max_u <V_i(u), e_j> / τ (EZ-VSL global max pooling).

    Args:
        visual_features: V (B, D, h, w), L2-normalised per position.
        audio_embeds: e (B, D), L2-normalised.
    Returns:
        (B, B) fp32, row i = image i, column j = audio j. Computed with autocast disabled: with τ = 0.03 a bf16
        similarity error of ~4e-3 would move the logits by ~0.1.
    """
    with torch.autocast(visual_features.device.type, enabled=False):
        sims = torch.einsum("idhw,jd->ijhw", visual_features.float(), audio_embeds.float())  # S_ij(u) (B,B,h,w)
        return sims.flatten(2).amax(dim=2) / temperature


def infonce_max_pool(visual_features: torch.Tensor, audio_embeds: torch.Tensor,
                     temperature: float = 0.03) -> torch.Tensor:
    """Audio-visual contrastive loss L_avc (eq. 8): symmetric InfoNCE on max-pooled logits.

    L = ½ [ CE(logits, diag)  (image -> audio, softmax over audios j)
          + CE(logitsᵀ, diag) (audio -> image, softmax over images i) ],  logits from ``cross_modal_logits``.
    Shapes: V (B, D, h, w), e (B, D) -> scalar fp32. The positives are the pairs (i, i).
    """
    logits = cross_modal_logits(visual_features, audio_embeds, temperature)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def total_loss(terms: Mapping[str, Mapping[str, torch.Tensor]], avc_weight: float = 0.5) -> torch.Tensor:
    """Total objective (eq. 9): L = Σ_{m ∈ {A, B}} ( L_sup^m + L_cross^m + λ·L_avc^m ), λ = ``avc_weight``.

    Args:
        terms: {model: {"sup": ..., "cross": ..., "avc": ...}}; a missing term counts as 0 (e.g. ``sup_only``
            has no "cross", ``self_supervised`` only "avc").
    """
    total = None
    for parts in terms.values():
        part = parts.get("sup", 0.0) + parts.get("cross", 0.0) + avc_weight * parts.get("avc", 0.0)
        total = part if total is None else total + part
    if total is None or not isinstance(total, torch.Tensor):
        raise ValueError("total_loss needs at least one tensor term")
    return total
