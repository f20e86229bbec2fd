"""One XPL training step, as a whole, and the bookkeeping around it (docs/method.md).

:class:`TrainingStep` is the step that ``train_xpl.py``, the tests and the benchmarks all call:

1. the stage switch (stage 1: a labelled batch; stage 2: + an unlabelled batch) and, for the ``full_supervision``
   ceiling, the unlabelled rows' true boxes as labels (:meth:`TrainingStep.assemble`);
2. the forward pass of both branches and eq. 9 for the batch (:func:`compute_losses`), with the gradient share of
   each loss term every few steps (:func:`term_grad_shares`) and the pseudo-label quality on logging steps;
3. on reporting steps, the non-finite check (before the update, so a bad loss never reaches the weights);
4. backward, gradient clipping, the optimiser and scheduler steps.

A step reads no device data on the host except on reporting steps (tests/test_no_sync.py). :class:`BestModelTracker`
is the model-selection rule, one for every method row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .curriculum import CurriculumSelector
from .data.streams import concat_batches
from .distributed import NonFiniteWatch, StepLogs
from .losses import cross_bce, downsample_gt, infonce_max_pool, supervised_bce, total_loss
from .maps import pearson_consensus
from .method import XPLMethod
from .metrics.protocol import per_sample_ciou
from .pseudo_labels import PseudoLabelBank, hard_pseudo_labels, soft_pseudo_labels, synced_bank_update

__all__ = ["compute_losses", "term_grad_shares", "pseudo_label_dynamics", "pseudo_label_quality", "TrainingStep",
           "StepOutput", "NonFiniteLossError", "BestModelTracker", "MODEL_SELECTION_RULES", "validation_line",
           "warn_on_split_overlap"]


# ------------------------------------------------------------------------------------------------- eq. 9
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


# ------------------------------------------------------------------------------------------------- the step
class NonFiniteLossError(FloatingPointError):
    """A non-finite loss, found on a reporting step; ``bad_step`` is the first step whose loss was not finite.

    When ``bad_step == found_step`` the weights are still those before that step (the check runs before the update).
    """

    def __init__(self, bad_step: int, found_step: int, where: str = ""):
        self.bad_step, self.found_step = bad_step, found_step
        where = f"; {where}" if where else ""
        super().__init__(f"non-finite loss at step {bad_step} (found at step {found_step}){where}. Lower "
                         "--learning_rate or use --mixed_precision no.")

    def explain(self, checkpoint_before: Callable[[], Path], newest_checkpoint: Path | None) -> NonFiniteLossError:
        """The same error, saying where the last good state is: saved now (``checkpoint_before()``) when the bad
        loss is this step's own, else the newest checkpoint (written before the bad update: checkpoints are only
        written after a check)."""
        if self.bad_step == self.found_step:
            where = f"the state before this step is saved in {checkpoint_before()}"
        else:
            where = (f"the newest checkpoint, {newest_checkpoint}, predates it" if newest_checkpoint else
                     "no checkpoint predates it") + " (no checkpoint is written after a non-finite step)"
        return NonFiniteLossError(self.bad_step, self.found_step, where)


@dataclass
class StepOutput:
    """What one call of :class:`TrainingStep` returns: the loss (0-d, on the device), its logs (0-d tensors on the
    device), the model's outputs, and whether the optimiser stepped (False while accumulating gradients)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    outputs: object
    optimizer_stepped: bool


@dataclass
class TrainingStep:
    """One optimiser step of XPL (any method row): the callable every trainer, test and benchmark uses.

    Args:
        model: an ``XPLModel`` (possibly wrapped by Accelerate).
        optimizer: its optimiser; ``scheduler`` (optional) steps with it.
        method: the run's :class:`XPLMethod`.
        bank, selector: ``method.make_bank(map_size)`` / ``method.make_selector()`` (on the model's device).
        warmup_stage_steps: stage-1 length; from that step on, methods that use unlabelled data get stage-2 batches.
        accelerator: an ``accelerate.Accelerator`` (gradient accumulation, DDP, mixed precision, gathers); None runs
            plain PyTorch on the batch's device (tests, benchmarks).
        max_grad_norm: gradient clipping (0: off).
        grad_share_steps: every N steps, log each term's gradient share (one extra backward per term; 0: off).
        frozen: modules kept in eval mode (frozen backbones: their BatchNorm statistics do not move).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    method: XPLMethod
    bank: PseudoLabelBank | None = None
    selector: CurriculumSelector | None = None
    warmup_stage_steps: int = 0
    scheduler: object | None = None
    accelerator: object | None = None
    max_grad_norm: float = 0.0
    grad_share_steps: int = 0
    frozen: Sequence[torch.nn.Module] = ()
    running: StepLogs = field(default_factory=StepLogs)  # logged values since the last `running.pop()` (device)
    watch: NonFiniteWatch = field(default_factory=NonFiniteWatch)

    def in_stage2(self, step: int) -> bool:
        """Whether step ``step`` (0-based) adds unlabelled data (stage 2)."""
        return self.method.uses_unlabeled and step >= self.warmup_stage_steps

    def assemble(self, labeled: dict, unlabeled: dict | None = None) -> dict:
        """One batch for the step: the labelled batch, plus the unlabelled one in stage 2 (one forward pass, shared
        BatchNorm statistics). Under ``full_supervision`` the unlabelled rows' true boxes become their labels.
        Tensors go to the accelerator's device; ``is_labeled`` stays on the host (its row indices cost no sync)."""
        batch = labeled
        if unlabeled is not None:
            if self.method.oracle_labels:  # the full-supervision ceiling
                if "true_gt_maps" not in unlabeled:
                    raise ValueError("--method full_supervision needs an unlabelled split whose rows carry boxes "
                                     "(true_boxes, as the synthetic benchmark keeps them).")
                unlabeled = {**unlabeled, "gt_maps": unlabeled["true_gt_maps"],
                             "is_labeled": torch.ones_like(unlabeled["is_labeled"])}
            batch = concat_batches(labeled, unlabeled)
        if self.accelerator is not None:
            from accelerate.utils import send_to_device

            batch = send_to_device(batch, self.accelerator.device, non_blocking=True, skip_keys="is_labeled")
        return batch

    def __call__(self, batch: dict, step: int, *, log_diagnostics: bool = False,
                 check_finite: bool = False) -> StepOutput:
        """Forward, eq. 9, (diagnostics), (non-finite check), backward, clip, optimiser and scheduler step.

        Args:
            batch: from :meth:`assemble`.
            step: the global step (0-based) this update makes; stage-2 step t = step - warmup_stage_steps.
            log_diagnostics: also compute the pseudo-label quality against true boxes (reads maps on the host).
            check_finite: read the non-finite flag (one small copy) before the update; raises
                :class:`NonFiniteLossError` naming the first bad step since the start (a logging step, say).
        """
        self.model.train()
        for module in self.frozen:  # eval-mode BatchNorm for frozen trunks
            module.eval()
        accumulate = (self.accelerator.accumulate(self.model) if self.accelerator is not None
                      else contextlib.nullcontext())
        with accumulate:
            out = self.model(**batch)
            measure = bool(self.grad_share_steps) and step % self.grad_share_steps == 0
            terms: dict | None = {} if measure else None
            loss, logs = compute_losses(out, batch, self.method, bank=self.bank, selector=self.selector,
                                        pl_step=step - self.warmup_stage_steps, accelerator=self.accelerator,
                                        terms_out=terms, diagnostics=log_diagnostics)
            if measure:
                logs.update(term_grad_shares(terms, [p for p in self.model.parameters() if p.requires_grad]))
            self.watch.observe(loss, step)  # no sync; read on reporting steps only, before the update
            synced = self.accelerator is None or self.accelerator.sync_gradients
            if check_finite and synced and (bad := self.watch.first_bad(self.accelerator)) is not None:
                raise NonFiniteLossError(bad, step)
            if self.accelerator is not None:
                self.accelerator.backward(loss)
            else:
                loss.backward()
            if synced and self.max_grad_norm:
                clip = (self.accelerator.clip_grad_norm_ if self.accelerator is not None
                        else torch.nn.utils.clip_grad_norm_)
                clip(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if synced:
            if self.scheduler is not None:
                self.scheduler.step()
            self.running.add({"loss": loss, **logs})
        return StepOutput(loss=loss, logs=logs, outputs=out, optimizer_stepped=synced)


# ------------------------------------------------------------------------------------------- model selection
MODEL_SELECTION_RULES = ("best", "best_stage2", "last")


@dataclass(frozen=True)
class BestModelTracker:
    """Which validated model a run keeps. ONE rule for every method row (`sup_only` and `xpl` alike).

    Rules (``--model_selection``):
        ``best`` (default): the highest validation fused CIoU over all evaluations; a tie goes to the later step.
        ``best_stage2``: the same, over evaluations after ``stage2_start`` steps only (every method, even those
            that never read unlabelled data), so every row's kept model trained as long past stage 1.
        ``last``: the last evaluation.

    The kept score and step live in the trainer's checkpointed state (``state.best_metric``, ``state.best_step``).
    """

    rule: str = "best"
    stage2_start: int = 0

    def __post_init__(self):
        if self.rule not in MODEL_SELECTION_RULES:
            raise ValueError(f"model_selection {self.rule!r}: must be one of {MODEL_SELECTION_RULES}.")

    def consider(self, state, step: int, summary: dict[str, float]) -> bool:
        """Record the validation ``summary`` (it has ``fused/ciou``) of the model at ``step`` in ``state``; True when
        this model is now the one to keep."""
        if self.rule == "best_stage2" and step <= self.stage2_start:
            return False
        score = float(summary["fused/ciou"])
        if self.rule == "last" or state.best_metric is None or score >= state.best_metric:
            state.best_metric, state.best_step = score, step
            return True
        return False


def validation_line(step: int, summary: dict[str, float]) -> str:
    """One line per validation (printed above the progress bar): CIoU/AUC of A, B and the fused map."""
    parts = [f"{name} {summary[f'{key}/ciou']:.1f}/{summary[f'{key}/auc']:.1f}"
             for key, name in (("a", "A"), ("b", "B"), ("fused", "fused"))]
    return f"step {step}: validation CIoU/AUC  " + "  ".join(parts)


def warn_on_split_overlap(splits: dict[str, tuple[str, Sequence]], unlabeled_split: str | None, logger) -> list[str]:
    """Warn loudly when the training, validation and test splits overlap: by name (``--test_split labeled``) or by
    shared sample ids. A model selected or scored on rows it trained on reports a number that means nothing.

    Args:
        splits: {role: (split name, dataset with an ``id`` column)} for ``labeled``, ``validation``, ``test``.
        unlabeled_split: the streamed split's name (checked by name only), or None when the method does not read it.
    Returns:
        the warnings (also logged).
    """
    found = []
    roles = list(splits)
    named = [(role, name) for role, (name, _) in splits.items()]
    if unlabeled_split is not None:
        named.append(("unlabeled", unlabeled_split))
    for i, (role_a, name_a) in enumerate(named):
        for role_b, name_b in named[i + 1:]:
            if name_a == name_b:
                found.append(f"the {role_a} and {role_b} splits are the same split ({name_a!r})")
    ids = {role: set(data["id"]) for role, (_, data) in splits.items()}
    for i, role_a in enumerate(roles):
        for role_b in roles[i + 1:]:
            if splits[role_a][0] != splits[role_b][0] and (shared := ids[role_a] & ids[role_b]):
                found.append(f"the {role_a} split {splits[role_a][0]!r} and the {role_b} split {splits[role_b][0]!r} "
                             f"share {len(shared)} sample id(s), e.g. {sorted(shared)[0]!r}")
    for message in found:
        logger.warning(f"SPLITS OVERLAP: {message}: validation and test scores on rows the model trained on (or "
                       "selected on) measure nothing. Pass disjoint --labeled_split/--validation_split/--test_split.")
    return found
