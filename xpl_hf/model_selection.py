"""Which validated model a run keeps (``--model_selection``): one rule for every method row.

No torch here: `xpl_hf.training_args` checks the flag with :class:`BestModelTracker` while parsing, and
``train_xpl.py --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODEL_SELECTION_RULES", "BestModelTracker", "validation_line"]

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
