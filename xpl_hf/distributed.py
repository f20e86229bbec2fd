"""Collective helpers for several training processes (Accelerate), each a no-op on a single process."""

from __future__ import annotations

import torch

__all__ = ["gather_varlen"]


def gather_varlen(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """All-gather a tensor whose first dimension may differ between processes (including 0).

    Returns the concatenation over ranks, in rank order, on every rank: (Σ_r n_r, ...). Works with an
    ``accelerate.Accelerator`` (uses its ``gather`` and ``pad_across_processes``); ``accelerator=None`` or a
    single process returns ``tensor`` unchanged. Tensors travel on ``accelerator.device`` (needed by NCCL)
    and come back on the input's device.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return tensor
    device = tensor.device
    x = tensor.to(accelerator.device)
    sizes = accelerator.gather(torch.tensor([x.shape[0]], device=accelerator.device)).cpu()
    padded = accelerator.pad_across_processes(x, dim=0)  # (max_n, ...) on every rank
    allx = accelerator.gather(padded).to(device)  # (world * max_n, ...)
    max_n = int(sizes.max())
    keep = torch.arange(max_n).unsqueeze(0) < sizes.unsqueeze(1)  # (world, max_n)
    return allx[keep.flatten().to(device)]
