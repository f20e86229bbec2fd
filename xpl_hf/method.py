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

:class:`XPLMethod` is the single source of the method's settings (:meth:`XPLMethod.validate` checks them all, each
rule in one place): the trainer builds the
PL-EMA bank and the curriculum from it, `xpl_hf.objective.compute_losses` reads it (which branch teaches which:
:attr:`XPLMethod.teachers`), and the model card and ``eval_results.json`` report ``XPLMethod.to_dict()``, i.e.
exactly what the run used. This module imports no torch, so that parsing the options (and ``--help``) is fast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .curriculum import CurriculumSelector
    from .pseudo_labels import PseudoLabelBank

__all__ = ["METHODS", "ABLATIONS", "CROSS_NORMALIZATIONS", "XPLMethod"]

METHODS = ("xpl", "sup_only", "hard_pl", "sup_contrastive", "self_supervised", "full_supervision")
ABLATIONS = ("no_pl_ema", "no_cross_refine", "no_sharpening", "no_data_selection")
CROSS_NORMALIZATIONS = ("unlabeled", "admitted")


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
        avc_weight: λ of eq. 9, the paper's 0.5. The contrastive term is what teaches a branch to use the sound:
            on the CPU protocol's validation split (docs/method.md, "Deviations and evidence"), λ = 0.05 left
            sup_only selecting the sounding object in 64.8% of scenes and xpl in 60.4%; λ = 0.5 gave 72.0% and 86.8%.
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
    avc_weight: float = 0.5
    avc_temperature: float = 0.03
    cross_normalization: str = "unlabeled"
    oracle_labels: bool = False

    def __post_init__(self):
        """The settings' rules, each in one place: here, except α (the PL-EMA bank's), r0 and the window (the
        curriculum's), checked when :meth:`validate` builds them. Messages read ``<setting> <value>: <rule>``."""
        def need(ok: bool, setting: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{setting} {getattr(self, setting)!r}: {rule}.")

        finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)  # noqa: E731
        need(self.sharpen_temperature is None or (finite(self.sharpen_temperature) and self.sharpen_temperature > 0),
             "sharpen_temperature", "must be > 0")
        need(finite(self.consensus_min) and -1.0 <= self.consensus_min <= 1.0, "consensus_min",
             "must be in [-1, 1] (a correlation)")
        need(isinstance(self.curriculum_rampup_steps, int) and self.curriculum_rampup_steps >= 0,
             "curriculum_rampup_steps", "must be an integer >= 0")
        need(finite(self.avc_weight) and 0.0 <= self.avc_weight <= 1e3, "avc_weight", "must be in [0, 1000]")
        need(finite(self.avc_temperature) and 0.0 < self.avc_temperature <= 10.0, "avc_temperature",
             "must be in (0, 10]")
        need(self.cross_normalization in CROSS_NORMALIZATIONS, "cross_normalization",
             f"must be one of {CROSS_NORMALIZATIONS}")
        need(self.pseudo_labels in (None, "soft", "hard"), "pseudo_labels", "must be 'soft', 'hard' or None")

    def validate(self) -> XPLMethod:
        """Every setting checked, the bank's and the curriculum's by themselves (imports torch); returns self."""
        self.make_bank(1)
        self.make_selector()
        return self

    @property
    def teachers(self) -> dict[str, str]:
        """Whose pseudo-labels each branch learns from in L_cross (eq. 6): the other branch's ({"a": "b", "b": "a"}),
        or its own under the ``no_cross_refine`` ablation and the ``hard_pl`` baseline."""
        return {"a": "b", "b": "a"} if self.cross_refine else {"a": "a", "b": "b"}

    @property
    def uses_unlabeled(self) -> bool:
        return self.avc_on_unlabeled or self.pseudo_labels is not None

    @classmethod
    def from_name(cls, method: str, *, no_pl_ema: bool = False, no_cross_refine: bool = False,
                  no_sharpening: bool = False, no_data_selection: bool = False, **settings) -> XPLMethod:
        """The settings of ``method`` and its ablation switches; ``settings`` override the paper's values."""
        if method not in METHODS:
            raise ValueError(f"method {method!r}: must be one of {METHODS}.")
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
        """The PL-EMA memory bank of eq. 5 for maps of side ``map_size``; it holds the run's α (``pl_ema_alpha``)."""
        from .pseudo_labels import PseudoLabelBank

        return PseudoLabelBank(map_size, alpha=self.pl_ema_alpha)

    def make_selector(self) -> CurriculumSelector:
        """The curriculum of eq. 2-3."""
        from .curriculum import CurriculumSelector

        return CurriculumSelector(window=self.curriculum_window, r0=self.curriculum_r0,
                                  rampup_steps=self.curriculum_rampup_steps, rho_min=self.consensus_min,
                                  enabled=self.data_selection)
