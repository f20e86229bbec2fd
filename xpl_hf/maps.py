"""Operations on localization maps shared by the model, the method and the demo.

A localization map is a (B, h, w) tensor, one value per image position (h = w = image_size / 32). These helpers
are pure tensor functions with no knowledge of training or evaluation; see docs/method.md for where each enters
the method, and docs/evaluation.md for the confidence of a map (:func:`map_confidence`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["CONFIDENCE_SHARE", "branch_confidences", "map_confidence", "minmax_normalize", "pearson_consensus"]


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


CONFIDENCE_SHARE = 0.25
"""Share of a map's positions whose mean is its confidence (the top quarter, as SLAVC's confidence)."""


def map_confidence(maps: torch.Tensor, share: float = CONFIDENCE_SHARE) -> torch.Tensor:
    """Confidence that a map shows a source of its sound: the mean of its top ``share`` of positions.

    ``c = mean of the k = ceil(share * h * w) largest values of P`` (the top quarter by default; SLAVC's choice,
    computed here on the model's own (h, w) grid). ``P`` is a branch's map before any normalisation, in the fixed
    range [0, 1]: for an :class:`xpl_hf.XPLModel` the probability map ``P = sigmoid(w * S + b)`` (``maps_a`` /
    ``maps_b``), so ``c`` is in (0, 1) and ``c >= 0.5`` reads "the model's most likely quarter of the frame is, on
    average, more likely sounding than not". A min-max-normalised map (the fused map) has no such scale: see
    :func:`branch_confidences` for the fused confidence.

    Args:
        maps: (B, h, w) (any trailing shape; positions are flattened per sample) tensor or array with values in
            [0, 1].
        share: the share of positions averaged, in (0, 1].

    Returns:
        (B,) float64, of the input's kind: a tensor (on the input's device) for a tensor, a numpy array otherwise.

    Raises:
        ValueError: ``share`` outside (0, 1], an empty map, or values that are not finite or outside [0, 1] (e.g. a
            cosine similarity in [-1, 1]: map it to [0, 1] first).
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    is_tensor = isinstance(maps, torch.Tensor)
    values = (maps.detach() if is_tensor else torch.as_tensor(maps)).double()
    if values.ndim < 2 or values[0].numel() == 0:
        raise ValueError(f"expected maps of shape (B, h, w), got {tuple(values.shape)}")
    flat = values.flatten(1)
    if not torch.isfinite(flat).all() or flat.min() < 0.0 or flat.max() > 1.0:
        raise ValueError(f"map_confidence needs maps with values in [0, 1] (probability maps P = sigmoid(w S + b)); "
                         f"got values in [{float(flat.min()):g}, {float(flat.max()):g}]")
    k = math.ceil(share * flat.shape[1])
    confidence = flat.topk(k, dim=1).values.mean(dim=1)
    return confidence if is_tensor else confidence.cpu().numpy()


def branch_confidences(maps_a: torch.Tensor, maps_b: torch.Tensor, share: float = CONFIDENCE_SHARE
                       ) -> dict[str, torch.Tensor]:
    """The confidence of each map of an :class:`xpl_hf.XPLModel`: ``{"a": c_A, "b": c_B, "fused": (c_A + c_B) / 2}``.

    ``c_A`` and ``c_B`` are :func:`map_confidence` of the branches' probability maps; the fused map is the mean of
    the two min-max-normalised maps and has no scale of its own, so its confidence is the mean of theirs.

    Args:
        maps_a, maps_b: (B, h, w) probability maps ``maps_a`` / ``maps_b`` in [0, 1].

    Returns:
        ``{"a" | "b" | "fused": (B,) float64}`` (tensors for tensors, numpy arrays otherwise).
    """
    a, b = map_confidence(maps_a, share), map_confidence(maps_b, share)
    return {"a": a, "b": b, "fused": 0.5 * (a + b)}
