"""The training method: what one step optimises (docs/method.md), as one settings object and one loss function.

Methods (the rows of the paper's tables):

| method            | L_sup | L_avc                 | pseudo-labels on unlabeled                              |
| ----------------- | ----- | --------------------- | ------------------------------------------------------- |
| `xpl`             | yes   | labeled + unlabeled   | soft, sharpened, PL-EMA, cross (A <- Y_B, B <- Y_A), curriculum |
| `sup_only`        | yes   | labeled               | none (unlabeled data unused)                            |
| `hard_pl`         | yes   | labeled + unlabeled   | each branch's own binarised map, no EMA, no selection  |
| `sup_contrastive` | yes   | labeled + unlabeled   | none                                                    |
| `self_supervised` | no    | labeled + unlabeled   | none (boxes unused)                                     |
| `full_supervision`| yes   | labeled + unlabeled   | none: unlabeled rows' true boxes as labels (a ceiling)  |

`xpl` ablations: `no_pl_ema` (α = 0), `no_cross_refine` (each branch learns from its own soft label),
`no_sharpening` (Ŷ = min-max-normalised P), `no_data_selection` (every unlabeled sample admitted), and any α.
`hard_pl` trains both branches, each as an independent vanilla self-trainer, so A and B are each a "one model"
hard-PL baseline.

:class:`XPLMethod` is the single source of the method's settings: the trainer builds the PL-EMA bank and the
curriculum from it, :func:`compute_losses` reads it, and the model card and ``eval_results.json`` report
``XPLMethod.to_dict()``, i.e. exactly what the run used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .curriculum import CurriculumSelector
from .losses import cross_bce, infonce_max_pool, supervised_bce, total_loss
from .maps import pearson_consensus
from .metrics.protocol import per_sample_ciou
from .pseudo_labels import PseudoLabelBank, hard_pseudo_labels, soft_pseudo_labels, synced_bank_update

__all__ = ["METHODS", "ABLATIONS", "XPLMethod", "compute_losses", "term_grad_shares", "pseudo_label_quality"]

METHODS = ("xpl", "sup_only", "hard_pl", "sup_contrastive", "self_supervised", "full_supervision")
ABLATIONS = ("no_pl_ema", "no_cross_refine", "no_sharpening", "no_data_selection")


@dataclass(frozen=True)
class XPLMethod:
    """Every setting of the training method (not of the model architecture: see `XPLConfig`).

    Args:
        name: one of :data:`METHODS`, with ablation suffixes (``xpl-no_pl_ema``, ``xpl-alpha0.5``, ...).
        supervised: L_sup on labelled samples (eq. 7).
        avc_on_unlabeled: L_avc (eq. 8) over labelled + unlabelled samples (else labelled only).
        pseudo_labels: ``"soft"`` (eq. 4-5), ``"hard"`` (the hard_pl baseline) or ``None``.
        cross_refine: each branch learns from the *other* branch's pseudo-labels (eq. 6); else from its own.
        pl_ema_alpha: α of eq. 5; 0 disables PL-EMA.
        sharpen_temperature: T of eq. 4; ``None`` disables sharpening.
        data_selection: the curriculum of eq. 2-3 (else every unlabelled sample is admitted).
        consensus_min: ρ_min of eq. 2.
        curriculum_r0: r(0), the admitted fraction at the start of stage 2.
        curriculum_rampup_steps: stage-2 steps over which r(t) ramps linearly from r0 to 1.
        curriculum_window: recent consensus scores (all processes) used for the admission quantile.
        avc_weight: λ of eq. 9. The paper uses 0.5; the default 0.05 balances the update: at 0.5, ½·L_avc held 89% of
            the initial gradient norm and L_sup 11% (55% / 45% at 0.05), and validation improved
            (results/ISSUE11_FINDINGS.md). `configs/paper.yaml` sets 0.5.
        avc_temperature: τ of eq. 8.
        cross_normalization: the denominator of L_cross: ``"unlabeled"`` (the sum over admitted samples divided by
            all unlabelled samples of the batch, so the pseudo-label term grows with the admitted fraction) or
            ``"admitted"`` (the mean over admitted samples only: one admitted clip weighs like a full batch).
        oracle_labels: the ``full_supervision`` ceiling of benchmarks: the unlabelled rows' true boxes (kept for
            diagnostics) become labels. Never a semi-supervised method; it needs a split that keeps true boxes.
    """

    name: str = "xpl"
    supervised: bool = True
    avc_on_unlabeled: bool = True
    pseudo_labels: str | None = "soft"
    cross_refine: bool = True
    pl_ema_alpha: float = 0.7
    sharpen_temperature: float | None = 0.1
    data_selection: bool = True
    consensus_min: float = 0.0
    curriculum_r0: float = 0.2
    curriculum_rampup_steps: int = 100
    curriculum_window: int = 2048
    avc_weight: float = 0.05
    avc_temperature: float = 0.03
    cross_normalization: str = "unlabeled"
    oracle_labels: bool = False

    def __post_init__(self):
        if self.cross_normalization not in ("unlabeled", "admitted"):
            raise ValueError(f"cross_normalization must be 'unlabeled' or 'admitted', got {self.cross_normalization!r}")

    @property
    def uses_unlabeled(self) -> bool:
        return self.avc_on_unlabeled or self.pseudo_labels is not None

    @classmethod
    def from_name(cls, method: str, *, no_pl_ema: bool = False, no_cross_refine: bool = False,
                  no_sharpening: bool = False, no_data_selection: bool = False, **settings) -> XPLMethod:
        """The settings of ``method`` and its ablation switches; ``settings`` override the paper's values."""
        if method not in METHODS:
            raise ValueError(f"method {method!r} is unknown; choose one of {METHODS}.")
        ablations = {"no_pl_ema": no_pl_ema, "no_cross_refine": no_cross_refine, "no_sharpening": no_sharpening,
                     "no_data_selection": no_data_selection}
        on = [name for name, value in ablations.items() if value]
        if on and method != "xpl":
            raise ValueError(f"--{on[0]} is an ablation of --method xpl, not of {method!r}.")
        base = cls(**settings)
        if method == "xpl":
            name = "-".join(["xpl", *on])
            if not no_pl_ema and base.pl_ema_alpha != cls.pl_ema_alpha:
                name += f"-alpha{base.pl_ema_alpha:g}"
            return dataclasses.replace(
                base, name=name, pl_ema_alpha=0.0 if no_pl_ema else base.pl_ema_alpha,
                sharpen_temperature=None if no_sharpening else base.sharpen_temperature,
                cross_refine=not no_cross_refine, data_selection=not no_data_selection)
        # the rows without soft pseudo-labels: no cross-refinement, PL-EMA, sharpening or selection
        none = dict(pseudo_labels=None, cross_refine=False, pl_ema_alpha=0.0, sharpen_temperature=None,
                    data_selection=False)
        if method == "sup_only":
            return dataclasses.replace(base, name=method, avc_on_unlabeled=False, **none)
        if method == "hard_pl":
            return dataclasses.replace(base, name=method, **{**none, "pseudo_labels": "hard"})
        if method == "sup_contrastive":
            return dataclasses.replace(base, name=method, **none)
        if method == "full_supervision":
            return dataclasses.replace(base, name=method, oracle_labels=True, **none)
        return dataclasses.replace(base, name=method, supervised=False, **none)

    def to_dict(self) -> dict:
        """The settings as a flat dict (for the model card, eval_results.json and trackers)."""
        return dataclasses.asdict(self)

    def make_bank(self, map_size: int) -> PseudoLabelBank:
        """The PL-EMA memory bank of eq. 5 for maps of side ``map_size``."""
        return PseudoLabelBank(map_size, alpha=self.pl_ema_alpha)

    def make_selector(self) -> CurriculumSelector:
        """The curriculum of eq. 2-3."""
        return CurriculumSelector(window=self.curriculum_window, r0=self.curriculum_r0,
                                  rampup_steps=self.curriculum_rampup_steps, rho_min=self.consensus_min,
                                  enabled=self.data_selection)


def compute_losses(out, batch: dict, method: XPLMethod, *, bank: PseudoLabelBank | None,
                   selector: CurriculumSelector | None, pl_step: int, accelerator=None,
                   terms_out: dict | None = None,
                   diagnostics: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 9 for one batch of labeled and/or unlabeled samples.

    Args:
        out: `XPLModelOutput` of the model on `batch` (maps (B, h, w), visual features (B, D, h, w), ...).
        batch: collated batch: `is_labeled` (B,), `gt_maps` (B, 224, 224), `ids`; `true_gt_maps` optional
            (diagnostics only: never used in a loss).
        method: the method's settings.
        bank, selector: the PL-EMA bank and the curriculum (XPL); None for methods without soft pseudo-labels.
        pl_step: stage-2 step t, for the curriculum's r(t).
        terms_out: if a dict, filled with each weighted term summed over both branches (``"sup"``, ``"cross"``,
            ``"avc"``: tensors with their graph), for :func:`term_grad_shares`.
        diagnostics: compute the pseudo-label quality logs when `true_gt_maps` is present (they read maps on the
            host: the trainer asks for them on logging steps only).
    Returns:
        (total loss, logs {name: 0-d tensor, detached}); logs stay on the device so that a step needs no host
        synchronisation (reduce them when logging). With `is_labeled` on the host (the trainer keeps it there) and
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
        maps_a, maps_b = take(out.maps_a, rows_unlabeled), take(out.maps_b, rows_unlabeled)
        ids = [batch["ids"][i] for i in rows_unlabeled.tolist()]  # host indices
        if method.pseudo_labels == "hard":
            targets = {"a": hard_pseudo_labels(maps_a.detach()), "b": hard_pseudo_labels(maps_b.detach())}
        else:
            sharpened = {"a": soft_pseudo_labels(maps_a, method.sharpen_temperature),
                         "b": soft_pseudo_labels(maps_b, method.sharpen_temperature)}
            targets = synced_bank_update(bank, ids, sharpened, accelerator, alpha=method.pl_ema_alpha)
        consensus = pearson_consensus(maps_a, maps_b)
        if method.data_selection:
            admitted = selector.select(consensus, pl_step, accelerator)
            logs["curriculum_threshold"] = selector.last_threshold  # 0-d tensor on the device
        else:
            admitted = torch.ones_like(consensus, dtype=torch.bool)
        teacher = {"a": "b", "b": "a"} if method.cross_refine else {"a": "a", "b": "b"}
        terms["a"]["cross"] = cross_bce(maps_a, targets[teacher["a"]], admitted)
        terms["b"]["cross"] = cross_bce(maps_b, targets[teacher["b"]], admitted)
        share = admitted.float().mean()
        if method.cross_normalization == "unlabeled":  # mean over admitted -> sum over admitted / all unlabelled
            terms["a"]["cross"], terms["b"]["cross"] = terms["a"]["cross"] * share, terms["b"]["cross"] * share
        logs.update(admitted_fraction=share, consensus_mean=consensus.mean(),
                    consensus_p10=consensus.quantile(0.1), consensus_p90=consensus.quantile(0.9))
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
def pseudo_label_quality(targets: dict[str, torch.Tensor], true_gt_maps: torch.Tensor,
                         admitted: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagnostics only: CIoU (%) of each model's pseudo-labels against the true boxes of the unlabeled samples,
    over all of them and over the admitted ones (the evaluation protocol)."""
    logs = {}
    admitted = admitted.cpu()
    for m, y in targets.items():
        scores = torch.as_tensor(per_sample_ciou(list(y.float().cpu()), list(true_gt_maps.cpu())))
        logs[f"pl_ciou_{m}"] = 100.0 * (scores >= 0.5).float().mean()
        if admitted.any():
            logs[f"pl_ciou_admitted_{m}"] = 100.0 * (scores[admitted] >= 0.5).float().mean()
    return logs
