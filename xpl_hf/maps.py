"""Operations on localization maps shared by the model, the method and the demo.

A localization map is a (B, h, w) tensor, one value per image position (h = w = image_size / 32). These helpers
are pure tensor functions with no knowledge of training or evaluation; see docs/method.md for where each enters
the method.
"""

from __future__ import annotations

import torch

__all__ = ["minmax_normalize", "pearson_consensus"]


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample min-max normalisation of (B, h, w) maps to [0, 1] (P̂ of eq. 4; also the fusion of A and B).

    A flat map becomes all zeros ("no confident location"). The evaluation protocol has its own rule for flat maps
    (left unchanged, as the community's code does): see `xpl_hf.metrics.protocol.normalize_maps`.
    """
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(eps)).view_as(maps)


def pearson_consensus(maps_a: torch.Tensor, maps_b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Consensus ρ_i between two models' maps (eq. 1): their Pearson correlation over spatial positions.

    ρ_i = Σ_u (P_A(u) - mean P_A)(P_B(u) - mean P_B) / sqrt(Σ_u (P_A(u) - mean P_A)² · Σ_u (P_B(u) - mean P_B)²)

    Args:
        maps_a, maps_b: (B, h, w) (any trailing shape; positions are flattened per sample).
    Returns:
        (B,) float32 in [-1, 1], detached (a selection statistic, not a loss). A sample where either map is
        flat (zero spatial variance) gets ρ = 0, never NaN.
    """
    a = maps_a.detach().flatten(1).float()
    b = maps_b.detach().flatten(1).float()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    cov = (a * b).sum(dim=1)
    denom = ((a * a).sum(dim=1) * (b * b).sum(dim=1)).sqrt()
    rho = torch.where(denom > eps, cov / denom.clamp_min(eps), torch.zeros_like(cov))
    return rho.clamp(-1.0, 1.0)
