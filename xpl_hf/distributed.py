"""Reductions for the training loop, across processes (Accelerate) and across steps, without device synchronisation.

A training step must not wait for the accelerator: nothing here copies device data to the host or asks for a
data-dependent shape inside a step. Sizes that vary between processes (batches after bad samples are dropped) are
exchanged on the host through a CPU (gloo) process group, so a device all-gather never needs them from the device.
Values that are only needed now and then (logged means, the non-finite-loss flag) stay on the device and are read
once per logging step (:class:`StepLogs`, :class:`NonFiniteWatch`).

Every function is a no-op shortcut on a single process.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["gather_varlen", "gather_host", "host_sizes", "StepLogs", "NonFiniteWatch"]


def _world(accelerator) -> int:
    return 1 if accelerator is None else accelerator.num_processes


@functools.lru_cache(maxsize=1)
def _host_group():
    """A gloo group over the default group's ranks (the default group itself when it is gloo); created once."""
    import torch.distributed as dist

    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def gather_host(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """All-gather a **host** tensor whose first dimension may differ between processes (including 0).

    Runs on the CPU (gloo): the ranks meet on the host, the accelerator's queue is not waited for. Returns the
    concatenation over ranks, in rank order: (Σ_r n_r, ...) on the CPU.
    """
    if _world(accelerator) == 1:
        return tensor
    import torch.distributed as dist

    group = _host_group()
    sizes = host_sizes(accelerator, tensor.shape[0])
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def host_sizes(accelerator, n: int) -> list[int]:
    """Every process's ``n`` (an int known on its host), in rank order, exchanged on the CPU (gloo)."""
    if _world(accelerator) == 1:
        return [int(n)]
    import torch.distributed as dist

    parts = [torch.zeros(1, dtype=torch.int64) for _ in range(accelerator.num_processes)]
    dist.all_gather(parts, torch.tensor([int(n)], dtype=torch.int64), group=_host_group())
    return [int(p) for p in parts]


def gather_varlen(accelerator, tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """All-gather a tensor whose first dimension may differ between processes (including 0).

    Returns the concatenation over ranks, in rank order, on every rank: (Σ_r n_r, ...). The sizes are exchanged on
    the host (``host_sizes``, or pass them), the data is padded to the largest size and gathered by the accelerator
    (``accelerator.gather``, asynchronous on GPUs) and the padding is dropped with a host-built index: no step of it
    reads device data on the host. ``accelerator=None`` or a single process returns ``tensor`` unchanged. Tensors
    travel on ``accelerator.device`` (needed by NCCL) and come back on the input's device.
    """
    if _world(accelerator) == 1:
        return tensor
    sizes = host_sizes(accelerator, tensor.shape[0]) if sizes is None else [int(s) for s in sizes]
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]), device=accelerator.device)
    padded[: tensor.shape[0]] = tensor.to(accelerator.device)
    gathered = accelerator.gather(padded)  # (world * longest, ...)
    keep = torch.cat([torch.arange(n) + r * longest for r, n in enumerate(sizes)])
    return gathered.index_select(0, keep.to(gathered.device, non_blocking=True)).to(tensor.device)


class StepLogs:
    """Running sums of a step's logged values, kept on the device; read once per logging step.

    ``add({name: 0-d tensor})`` queues only asynchronous additions; ``pop()`` returns the means since the last
    ``pop()`` as floats with a single device-to-host copy, and resets. A name missing from some steps is averaged
    over the steps that logged it.
    """

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, logs: dict[str, torch.Tensor]) -> None:
        for name, value in logs.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self._sums[name] = value if name not in self._sums else self._sums[name] + value
            self._counts[name] = self._counts.get(name, 0) + 1

    def pop(self) -> dict[str, float]:
        if not self._sums:
            return {}
        names = list(self._sums)
        values = torch.stack([self._sums[n].reshape(()).to(self._sums[names[0]].device) for n in names]).cpu()
        means = {n: float(v) / self._counts[n] for n, v in zip(names, values.tolist())}
        self._sums, self._counts = {}, {}
        return means


class NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite; read only when asked.

    ``observe(loss, step)`` is asynchronous (a ``torch.where`` on the device). ``first_bad(accelerator)`` reads the
    flag (one small copy, on every process, all processes agreeing): the smallest step any process saw with a
    non-finite loss since the last ``reset()``, or None.
    """

    def __init__(self):
        self._first: torch.Tensor | None = None

    def observe(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.int64, device=loss.device)
        self._first = torch.where(bad & (self._first < 0), step, self._first)

    def first_bad(self, accelerator=None) -> int | None:
        if self._first is None:
            return None
        first = self._first.reshape(1)
        if _world(accelerator) > 1:
            first = accelerator.gather(first.to(accelerator.device))
        seen = [int(s) for s in first.cpu().tolist() if s >= 0]
        return min(seen) if seen else None

    def reset(self) -> None:
        self._first = None
