"""The XPL objective for one batch (eq. 9, docs/method.md) and the diagnostics logged beside it.

:func:`compute_losses` assembles L_sup, L_cross (pseudo-labels, PL-EMA, cross-refinement, the curriculum) and L_avc
of both branches from the model's outputs; :func:`term_grad_shares` measures each weighted term's share of the
gradient; :func:`pseudo_label_dynamics` and :func:`pseudo_label_quality` say what PL-EMA and cross-refinement change
in the targets and how good the targets are against the true boxes (diagnostics only: never in a loss). The training
step (:class:`xpl_hf.trainer.TrainingStep`) calls them.
"""

from __future__ import annotations

import torch

from .curriculum import CurriculumSelector
from .losses import cross_bce, downsample_gt, infonce_max_pool, supervised_bce, total_loss
from .maps import pearson_consensus
from .method import XPLMethod
from .metrics.protocol import per_sample_ciou
from .pseudo_labels import PseudoLabelBank, hard_pseudo_labels, soft_pseudo_labels, synced_bank_update

__all__ = ["compute_losses", "term_grad_shares", "pseudo_label_dynamics", "pseudo_label_quality"]


def compute_losses(out, batch: dict, method: XPLMethod, *, bank: PseudoLabelBank | None,
                   selector: CurriculumSelector | None, pl_step: int, accelerator=None,
                   terms_out: dict | None = None,
                   diagnostics: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 9 for one batch of labeled and/or unlabeled samples.

    Args:
        out: `XPLModelOutput` of the model on `batch` (maps (B, h, w), visual features (B, D, h, w), ...).
        batch: collated batch: `is_labeled` (B,) bool, `gt_maps` (B, 224, 224), `ids`; `true_gt_maps` optional
            (diagnostics only: never used in a loss).
        method: the method's settings (which terms, which teacher: ``method.teachers``).
        bank, selector: the PL-EMA bank (it holds α) and the curriculum (XPL); None for methods without soft
            pseudo-labels.
        pl_step: stage-2 step t, for the curriculum's r(t).
        terms_out: if a dict, filled with each weighted term summed over both branches (``"sup"``, ``"cross"``,
            ``"avc"``: tensors with their graph), for :func:`term_grad_shares`.
        diagnostics: compute the pseudo-label quality logs when `true_gt_maps` is present (they read maps on the
            host: the trainer asks for them on logging steps only).
    Returns:
        (total loss, logs {name: 0-d tensor, detached}). Logs stay on the device; with `is_labeled` on the host and
        the bank on the model's device, nothing here reads device data on the host.
    """
    # `is_labeled` is batch metadata: on the host, the counts and row indices below cost no device synchronisation
    # (rows are selected with index_select, never with a boolean mask, whose result size the host would need).
    is_labeled = batch["is_labeled"]
    labeled_host = is_labeled if is_labeled.device.type == "cpu" else is_labeled.cpu()
    rows_labeled, rows_unlabeled = labeled_host.nonzero().flatten(), (~labeled_host).nonzero().flatten()

    def take(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, rows.to(x.device, non_blocking=True))

    branches = {"a": (out.maps_a, out.visual_features_a, out.audio_embeds_a),
                "b": (out.maps_b, out.visual_features_b, out.audio_embeds_b)}
    terms: dict[str, dict[str, torch.Tensor]] = {"a": {}, "b": {}}
    num_labeled, num_unlabeled = rows_labeled.numel(), rows_unlabeled.numel()
    num_avc = num_labeled + num_unlabeled if method.avc_on_unlabeled else num_labeled
    for m, (maps, visual, audio) in branches.items():
        if method.supervised and num_labeled:
            terms[m]["sup"] = supervised_bce(take(maps, rows_labeled),
                                             take(batch["gt_maps"].to(maps.device), rows_labeled))
        if num_avc >= 2:
            if not method.avc_on_unlabeled:
                visual, audio = take(visual, rows_labeled), take(audio, rows_labeled)
            terms[m]["avc"] = infonce_max_pool(visual, audio, method.avc_temperature)
    logs: dict[str, torch.Tensor] = {}
    if method.pseudo_labels is not None and num_unlabeled:
        maps = {"a": take(out.maps_a, rows_unlabeled), "b": take(out.maps_b, rows_unlabeled)}
        ids = [batch["ids"][i] for i in rows_unlabeled.tolist()]  # host indices
        if method.pseudo_labels == "hard":
            targets = {m: hard_pseudo_labels(p.detach()) for m, p in maps.items()}
        else:  # eq. 4, then eq. 5 (every process applies the same gathered update)
            sharpened = {m: soft_pseudo_labels(p, method.sharpen_temperature) for m, p in maps.items()}
            targets = synced_bank_update(bank, ids, sharpened, accelerator)
        consensus = pearson_consensus(maps["a"], maps["b"])  # eq. 1
        if method.data_selection:  # eq. 2-3
            admitted = selector.select(consensus, pl_step, accelerator)
            logs["curriculum_threshold"] = selector.last_threshold  # 0-d tensor on the device
        else:
            admitted = torch.ones_like(consensus, dtype=torch.bool)
        share = admitted.float().mean()
        for m, teacher in method.teachers.items():  # eq. 6: P_A against Y_B and P_B against Y_A
            terms[m]["cross"] = cross_bce(maps[m], targets[teacher], admitted)
            if method.cross_normalization == "unlabeled":  # mean over admitted -> sum over admitted / all unlabelled
                terms[m]["cross"] = terms[m]["cross"] * share
        logs.update(admitted_fraction=share, consensus_mean=consensus.mean(),
                    consensus_p10=consensus.quantile(0.1), consensus_p90=consensus.quantile(0.9))
        if diagnostics and method.pseudo_labels == "soft":  # what PL-EMA and cross-refinement change in the targets
            logs.update(pseudo_label_dynamics(sharpened, targets))
        if diagnostics and "true_gt_maps" in batch:
            logs.update(pseudo_label_quality(targets, take(batch["true_gt_maps"], rows_unlabeled), admitted))
    loss = total_loss({m: t for m, t in terms.items() if t}, method.avc_weight)
    if terms_out is not None:
        for name, weight in (("sup", 1.0), ("cross", 1.0), ("avc", method.avc_weight)):
            parts = [t[name] for t in terms.values() if name in t]
            if parts:
                terms_out[name] = weight * sum(parts)
    for m, parts in terms.items():
        for name, value in parts.items():
            logs[f"loss_{name}_{m}"] = value.detach()
    return loss, logs


def term_grad_shares(terms: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diagnostics: the gradient norm of each weighted loss term on ``params`` and its share of their sum.

    One extra backward pass per term (the graph is retained), so call it every few steps only.

    Returns:
        ``{"gradnorm_<term>": norm, "gradshare_<term>": norm / Σ norms}`` (0-d tensors).
    """
    norms = {}
    for name, term in terms.items():
        if term.requires_grad:
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            norms[name] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))
    total = sum(norms.values()) if norms else 1.0
    return {**{f"gradnorm_{k}": v.detach() for k, v in norms.items()},
            **{f"gradshare_{k}": (v / total).detach() for k, v in norms.items()}}


@torch.no_grad()
def pseudo_label_dynamics(sharpened: dict[str, torch.Tensor],
                          targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Diagnostics only: how far PL-EMA (eq. 5) and cross-refinement (eq. 6) move a branch's target.

    Args:
        sharpened: {model: Ŷ_t (B, h, w)}, this visit's sharpened labels (eq. 4).
        targets: {model: Y_t (B, h, w)}, the PL-EMA labels (eq. 5) of the same samples.
    Returns:
        ``pl_ema_shift_<m>`` = mean |Y_t − Ŷ_t| (= α·|Y_{t−1} − Ŷ_t| on a revisit, 0 on a first visit: the part of the
        target that PL-EMA changes) and ``pl_teacher_gap`` = mean |Y_A − Y_B| (how far the other branch's label is
        from a branch's own: what cross-refinement changes). 0-d tensors on the labels' device.
    """
    logs = {f"pl_ema_shift_{m}": (targets[m] - sharpened[m]).abs().mean() for m in targets}
    if "a" in targets and "b" in targets:
        logs["pl_teacher_gap"] = (targets["a"] - targets["b"]).abs().mean()
    return logs


@torch.no_grad()
def pseudo_label_quality(targets: dict[str, torch.Tensor], true_gt_maps: torch.Tensor,
                         admitted: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagnostics only: CIoU (%) of each model's pseudo-labels (B, h, w) against the true boxes (B, 224, 224) of the
    unlabeled samples, over all of them and over the admitted ones (B,) (the evaluation protocol), and
    ``pl_error_<m>``, the mean |Y − G| against the true map G area-pooled to the labels' size (the scale on which
    ``pseudo_label_dynamics``' shifts are read)."""
    logs = {}
    admitted = admitted.cpu()
    some = next(iter(targets.values()))
    truth = downsample_gt(true_gt_maps.to(some.device), some.shape[-2:])  # G at the labels' size, once
    for m, y in targets.items():
        logs[f"pl_error_{m}"] = (y.float() - truth).abs().mean()
        scores = torch.as_tensor(per_sample_ciou(list(y.float().cpu()), list(true_gt_maps.cpu())))
        logs[f"pl_ciou_{m}"] = 100.0 * (scores >= 0.5).float().mean()
        if admitted.any():
            logs[f"pl_ciou_admitted_{m}"] = 100.0 * (scores[admitted] >= 0.5).float().mean()
    return logs
