"""Pictures of localization results: heat-map overlays (demo, evaluation grids), training curves (trainer).

Maps are always shown the way the protocol scores them (upsampled bicubic and min-max normalised: 224 x 224 in the
evaluation grids, the image's own size through `XPLProcessor.post_process_localization`), so what a reader sees is
what was measured. matplotlib runs on its Agg backend (no display needed); it is an extra (``pip install
"xpl-hf[train]"``, also in ``[space]``), imported only when a picture is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from .image import load_image
from .metrics.protocol import EVAL_SIZE, as_prediction_tensor, normalize_maps, upsample_maps

__all__ = ["overlay_heatmap", "pick_best_median_worst", "save_overlay_grid", "plot_training_curves"]


def overlay_heatmap(image: Any, heat_map: Any, alpha: float = 0.5, colormap: str = "jet") -> PIL.Image.Image:
    """Blend a heat map over an image with a matplotlib colormap (red = hot with "jet").

    Args:
        image: the picture (PIL image, path, bytes or array: anything `xpl_hf.image.load_image` reads), size (W, H).
        heat_map: `(H, W)` array or tensor in [0, 1] at the image's size, e.g. a `"map"` of
            `XPLProcessor.post_process_localization(outputs, target_sizes=[(H, W)])`; values outside [0, 1] are
            clipped. It is not resized: upsampling belongs to the post-processing, which does it as the protocol does.
        alpha: weight of the colours (0 = the image only, 1 = the colours only).
        colormap: a matplotlib colormap name.

    Returns:
        An RGB `PIL.Image.Image` of size (W, H): `(1 - alpha) * image + alpha * colormap(heat_map)`.
    """
    colormaps = _matplotlib("overlay_heatmap").colormaps
    picture = load_image(image)
    heat = np.asarray(heat_map.detach().cpu() if isinstance(heat_map, torch.Tensor) else heat_map, dtype=np.float32)
    if heat.shape != (picture.height, picture.width):
        raise ValueError(f"heat map has shape {heat.shape} but the image is {picture.height} x {picture.width} "
                         "(H x W); get maps at the image's size with XPLProcessor.post_process_localization(outputs, "
                         "target_sizes=[(H, W)]).")
    if not np.isfinite(heat).all():
        raise ValueError("heat map contains NaN or infinite values.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: expected a number in [0, 1].")
    try:
        cmap = colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colormap {colormap!r} (e.g. 'jet', 'inferno', 'viridis').") from None
    colours = cmap(np.clip(heat, 0.0, 1.0))[..., :3]  # (H, W, 3) floats in [0, 1]
    blended = (1.0 - alpha) * np.asarray(picture, dtype=np.float32) / 255.0 + alpha * colours
    return PIL.Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8))


def pick_best_median_worst(per_sample_ciou: Sequence[float], per_group: int = 4) -> dict[str, list[int]]:
    """Indices of the ``per_group`` best, median and worst samples by cIoU (stable order; groups may overlap
    when there are fewer than ``3 * per_group`` samples)."""
    scores = np.asarray(per_sample_ciou, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # best first
    n = len(order)
    k = min(per_group, n)
    start = max(0, min(n - k, n // 2 - k // 2))
    return {
        "best": order[:k].tolist(),
        "median": order[start : start + k].tolist(),
        "worst": order[::-1][:k].tolist(),
    }


def save_overlay_grid(
    path: str | os.PathLike,
    images: Sequence[Any],
    maps: Sequence[Any],
    ground_truths: Sequence[Any],
    titles: Sequence[str],
    row_names: Sequence[str] | None = None,
    columns: int = 4,
) -> str:
    """Save a PNG grid of heat-map overlays (matplotlib, Agg backend).

    Args:
        path: output PNG.
        images: the frames (PIL images or (H, W, 3) uint8 arrays), resized to 224 x 224 for display.
        maps: raw localization maps (h, w); shown upsampled and normalised exactly as the protocol scores them.
        ground_truths: (224, 224) ground-truth maps, drawn as a contour.
        titles: one title per panel.
        row_names: optional label of each row (``len(images) / columns`` rows).
        columns: panels per row.
    """
    plt = _pyplot("save_overlay_grid")
    from PIL import Image

    if not (len(images) == len(maps) == len(ground_truths) == len(titles)):
        raise ValueError("images, maps, ground_truths and titles must have the same length")
    if not images:
        raise ValueError("nothing to plot")
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    heat = normalize_maps(upsample_maps(torch.stack([as_prediction_tensor(m, i) for i, m in enumerate(maps)])))
    for index, (image, title) in enumerate(zip(images, titles)):
        ax = axes.flat[index]
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        frame = image.convert("RGB").resize((EVAL_SIZE, EVAL_SIZE), Image.BILINEAR)
        ax.imshow(np.asarray(overlay_heatmap(frame, heat[index], alpha=0.45)))
        gt = np.asarray(ground_truths[index], dtype=np.float32)
        if gt.any():
            ax.contour(gt, levels=[0.25, 0.75], colors=["white", "white"], linewidths=[0.8, 1.5])
        ax.set_title(title, fontsize=7)
    if row_names:
        for row, name in enumerate(row_names[:rows]):
            axes[row, 0].text(-12, EVAL_SIZE / 2, name, rotation=90, va="center", ha="right", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return str(path)


def plot_training_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Training curves: losses, curriculum / pseudo-label diagnostics, loss terms' gradient shares, validation CIoU."""
    plt = _pyplot("plot_training_curves")
    panels = [("losses", lambda k: k.startswith("train/loss")),
              ("curriculum (admitted fraction, mean consensus ρ)",
               lambda k: k in ("train/admitted_fraction", "train/consensus_mean")),
              ("pseudo-label CIoU vs true boxes (%, diagnostic)", lambda k: k.startswith("train/pl_ciou_")),
              ("share of the gradient norm per loss term (--grad_share_steps)",
               lambda k: k.startswith("train/gradshare_")),
              ("validation CIoU (%)", lambda k: k.startswith("val/") and k.endswith("/ciou"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, keep) in zip(axes, panels):
        keys = sorted({k for entry in history for k in entry if keep(k)})
        for key in keys:
            points = [(e["step"], e[key]) for e in history if key in e]
            ax.plot(*zip(*points), label=key.split("/", 1)[1], marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _matplotlib(caller: str):
    """matplotlib on its Agg backend, or an ImportError that says which extra installs it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f"{caller} draws with matplotlib, which is not installed: pip install \"xpl-hf[train]\" "
                          "(or matplotlib)") from err
    matplotlib.use("Agg")
    return matplotlib


def _pyplot(caller: str):
    _matplotlib(caller)
    import matplotlib.pyplot as plt

    return plt
