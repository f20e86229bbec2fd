"""Curriculum data selection for XPL (docs/method.md, eq. 1-3).

Two models A and B each predict a localization map for an unlabeled sample. Their agreement (Pearson correlation,
eq. 1: `xpl_hf.maps.pearson_consensus`) measures how trustworthy the cross pseudo-labels are. A sample is admitted to
the cross loss when its consensus passes a hard floor ρ_min (eq. 2) and lies in the top r(t) fraction of recent
consensus scores (eq. 3), where r(t) ramps from r_0 to 1 during training. "Recent" is a fixed-size sliding
window gathered across processes, so the curriculum works on streamed data without a full pass.
"""

from __future__ import annotations

import torch

from .distributed import gather_varlen

__all__ = ["admitted_fraction", "masked_quantile", "CurriculumSelector"]


def admitted_fraction(step: int, r0: float, rampup_steps: int) -> float:
    """Admitted fraction r(t) of the curriculum (eq. 3): linear ramp from r_0 at t = 0 to 1 at t = rampup_steps.

    r(t) = r_0 + (1 - r_0) · min(t / rampup_steps, 1);  rampup_steps <= 0 -> 1.0 (no curriculum ramp).
    ``step`` counts stage-2 (pseudo-label) steps; negative steps are treated as 0.
    """
    if rampup_steps <= 0:
        return 1.0
    progress = min(max(step, 0) / rampup_steps, 1.0)
    return float(r0 + (1.0 - r0) * progress)


def masked_quantile(values: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values[valid], q)`` (linear interpolation) without a data-dependent shape.

    The invalid entries sort last as +inf and the interpolation ranks come from the number of valid entries, a
    device tensor, so nothing is read on the host. Returns a 0-d tensor; +inf when no entry is valid.
    """
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    ordered = torch.where(valid, values, inf).sort().values
    count = valid.sum()
    rank = (count - 1).clamp_min(0).to(values.dtype) * q  # as torch.quantile: q · (n - 1), in the input's dtype
    below = rank.to(torch.int64)
    above = rank.ceil().to(torch.int64)
    low = ordered.gather(0, below.reshape(1))
    high = ordered.gather(0, above.reshape(1))
    result = torch.lerp(low, high, rank - below.to(values.dtype)).reshape(())
    return torch.where(count > 0, result, inf)


class CurriculumSelector:
    """Curriculum data selection (eq. 2-3) over a sliding window of consensus scores.

    At step t, given the batch's consensus ρ (B,):
      1. the scores of the whole (global) batch are pushed into a ring buffer of the last ``window`` scores;
      2. q(t) = quantile_{1 - r(t)} of the window's scores that pass ρ_min (linear interpolation);
      3. admitted_i = (ρ_i >= ρ_min) and (ρ_i >= q(t)).
    With ``enabled=False`` (the "without data selection" ablation) every sample is admitted.

    The window lives on the device of the scores it receives (moved there on the first push) and q(t) is a 0-d
    tensor on that device (``last_threshold``): a step costs no device synchronisation. The write position and
    fill count are host integers (batch sizes are known on the host).

    state_dict() holds the window contents and write position; load_state_dict() restores them exactly (the trainer's
    checkpoints store them as safetensors + JSON).
    """

    def __init__(self, window: int = 2048, r0: float = 0.2, rampup_steps: int = 0, rho_min: float = 0.0,
                 enabled: bool = True):
        if not (isinstance(window, int) and 0 < window <= 2**24):  # the rules of these settings live here only
            raise ValueError(f"curriculum_window {window!r}: must be an integer in [1, 16777216] (recent scores).")
        if not 0.0 < r0 <= 1.0:
            raise ValueError(f"curriculum_r0 {r0!r}: must be in (0, 1] (the admitted fraction r(0), eq. 3).")
        self.window, self.r0, self.rampup_steps, self.rho_min, self.enabled = window, r0, rampup_steps, rho_min, enabled
        self.scores = torch.zeros(window, dtype=torch.float32)  # ring buffer
        self.count = 0  # number of valid entries (<= window)
        self.pos = 0  # next write position
        self.last_threshold = torch.tensor(float("nan"))  # q(t) of the latest select() (0-d tensor), for logging

    def push(self, scores: torch.Tensor) -> None:
        """Append (N,) scores to the window (oldest overwritten). Call with the scores of ALL processes."""
        s = scores.detach().flatten().float()
        if self.scores.device != s.device:
            self.scores = self.scores.to(s.device)
        if s.numel() >= self.window:  # only the most recent `window` survive
            s = s[-self.window:]
        n = s.numel()
        first = min(n, self.window - self.pos)  # the ring as at most two slices: no index tensor, no sync
        self.scores[self.pos:self.pos + first] = s[:first]
        self.scores[: n - first] = s[first:]
        self.pos = (self.pos + n) % self.window
        self.count = min(self.count + n, self.window)

    def threshold(self, step: int) -> torch.Tensor:
        """q(t): the (1 - r(t)) quantile of the window's scores that pass ρ_min (+inf if none pass), 0-d tensor."""
        w = self.scores[: self.count]
        return masked_quantile(w, w >= self.rho_min, 1.0 - admitted_fraction(step, self.r0, self.rampup_steps))

    def select(self, consensus: torch.Tensor, step: int, accelerator=None,
               all_consensus: torch.Tensor | None = None) -> torch.Tensor:
        """Admission mask for this process's batch (eq. 2-3).

        Args:
            consensus: (B,) this process's ρ.
            step: stage-2 step t for r(t).
            accelerator: if given, the window receives the consensus of all processes (via ``gather_varlen``),
                so every rank keeps the same window. Alternatively pass ``all_consensus`` gathered yourself.
        Returns:
            (B,) bool on ``consensus.device``.
        """
        if not self.enabled:
            return torch.ones(consensus.shape[0], dtype=torch.bool, device=consensus.device)
        if all_consensus is None:
            all_consensus = gather_varlen(accelerator, consensus.detach().float())
        self.push(all_consensus)
        q = self.threshold(step)
        self.last_threshold = q
        rho = consensus.detach().float()
        return (rho >= self.rho_min) & (rho >= q.to(rho.device))

    def state_dict(self) -> dict:
        return {"scores": self.scores.cpu().clone(), "count": self.count, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        scores = state["scores"].float()
        if scores.shape != (self.window,):
            raise ValueError(f"window size mismatch: checkpoint {tuple(scores.shape)}, selector ({self.window},)")
        self.scores = scores.to(self.scores.device).clone()
        self.count, self.pos = int(state["count"]), int(state["pos"])
