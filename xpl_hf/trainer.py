"""One XPL training step, as a whole (docs/method.md).

:class:`TrainingStep` is the step that ``train_xpl.py``, the tests and the benchmarks all call:

1. the stage switch (stage 1: a labelled batch; stage 2: + an unlabelled batch) and, for the ``full_supervision``
   ceiling, the unlabelled rows' true boxes as labels (:meth:`TrainingStep.assemble`);
2. the forward pass of both branches and eq. 9 for the batch (:func:`xpl_hf.objective.compute_losses`), with the
   gradient share of each loss term every few steps and the pseudo-label quality on logging steps;
3. on reporting steps, the non-finite check (before the update, so a bad loss never reaches the weights);
4. backward, gradient clipping, the optimiser and scheduler steps.

A step reads no device data on the host except on reporting steps (tests/test_no_sync.py). Which validated model a
run keeps is :mod:`xpl_hf.model_selection`'s rule.
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
from .method import XPLMethod
from .objective import compute_losses, term_grad_shares
from .pseudo_labels import PseudoLabelBank

__all__ = ["TrainingStep", "StepOutput", "NonFiniteLossError"]


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
