"""Listening checks: does a localization model use the sound, or only the picture?

A model that localizes *sounding* objects must change its map when the sound changes. Two checks, reported beside
cIoU / AUC by :func:`xpl_hf.evaluation.evaluate_model` (``listening=True``) and ``python -m xpl_hf.evaluate``:

1. **Negative audio.** The same images are scored with the protocol of :mod:`xpl_hf.metrics.protocol` after each
   clip's sound is replaced by

   - ``swapped``: the sound of another clip of the evaluation set, of a different ``label`` when labels exist
     (:func:`swap_permutation`: a seeded permutation without fixed points);
   - ``silence``: an all-zero waveform;
   - ``noise``: seeded noise (:func:`noise_waveform`: pink by default, RMS 0.1 of full scale, i.e. -20 dBFS): a
     pool of ``noise_clips`` draws (32 by default, so that the audio encoders run 32 times, not once per scene),
     clip ``noise_clip_index(id)`` for each scene, chosen by a hash of its id.

   The drop ``true - variant`` of CIoU / AUC is reported per branch; a model that ignores the sound drops by 0.

2. **Object selection**, on scenes whose ``objects`` column lists every visible object (box, label, sounding):
   the map, upsampled to 224 x 224 as in the protocol (bicubic, ``align_corners=False``; in float64 here), is
   averaged inside each object's box, taken to 224-px integer coordinates by the VGG-SS rule
   ``(clip(b, 0, 1) * 224).astype(int)`` (a box under one pixel wide or high keeps one pixel); the scene scores 1
   when a sounding object gets the highest mean, 0 when a silent one does. **Ties** (means within
   :data:`TIE_TOLERANCE` times the map's largest absolute value of the best) **count as a fraction**: a scene whose
   k tied best objects hold s sounding ones scores s / k. So a map that ignores the sound -- a constant map, or any
   map computed from the picture alone -- scores the **chance level** ``mean over scenes of (number of sounding
   objects) / (number of objects)`` in expectation over which object sounds (exactly, for a constant map). A scene
   takes part when it lists at least one sounding and one silent object.

Everything here is a pure function of arrays; the model loop lives in :mod:`xpl_hf.evaluation`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .extended import SIZE_SUBSETS
from .protocol import EVAL_SIZE

NEGATIVE_AUDIO = ("swapped", "silence", "noise")
"""The negative-audio variants, in report order."""

AUDIO_VARIANTS = ("true", *NEGATIVE_AUDIO)
"""Every audio condition a map is scored under."""

NOISE_COLORS = ("pink", "white")
DEFAULT_NOISE_RMS = 0.1
"""RMS of the noise clips, relative to full scale [-1, 1] (-20 dBFS)."""

TIE_TOLERANCE = 1e-9
"""Object means closer to the best than this times the map's largest absolute value are tied (a float32 map holds
about 7 significant digits; the float64 box means of a constant map agree to about 1e-16)."""

@dataclasses.dataclass(frozen=True)
class ListeningSettings:
    """Settings of the listening checks (recorded in every result).

    Args:
        seed: seed of the swap permutation and of the noise clips.
        noise_color: ``"pink"`` (1 / f power) or ``"white"``.
        noise_rms: RMS of the noise clips relative to full scale (0.1 = -20 dBFS).
        noise_clips: size of the pool of noise draws the scenes share (see :func:`noise_clip_index`).
    """

    seed: int = 0
    noise_color: str = "pink"
    noise_rms: float = DEFAULT_NOISE_RMS
    noise_clips: int = 32

    def __post_init__(self):
        if self.noise_color not in NOISE_COLORS:
            raise ValueError(f"noise_color must be one of {NOISE_COLORS}, got {self.noise_color!r}")
        if not 0 < self.noise_rms < math.inf:
            raise ValueError(f"noise_rms must be a positive finite number, got {self.noise_rms}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative (a numpy seed), got {self.seed}")
        if self.noise_clips < 1:
            raise ValueError(f"noise_clips must be at least 1, got {self.noise_clips}")


def swap_permutation(labels: Sequence[str], seed: int = 0) -> tuple[np.ndarray, str]:
    """Donor of each clip's sound for the ``swapped`` check: a seeded permutation without fixed points.

    Clip ``i`` is given the sound of clip ``donors[i]``; every sound is used exactly once. When labels exist, a clip's
    donor has a different label (clips with an empty label only need another clip). That is possible only when no
    label holds more than half of the clips; otherwise only "another clip" is required, and the returned rule says
    why. The permutation is drawn with ``numpy.random.default_rng(seed)`` and repaired by swaps, so it depends only
    on the labels, their order and the seed.

    Args:
        labels: one label per clip ("" when unknown), in evaluation order.
        seed: the seed of the draw.

    Returns:
        ``(donors, rule)``: int64 array (N,) and a description of the rule that holds.
    """
    n = len(labels)
    if n < 2:
        raise ValueError(f"the swapped-sound check needs at least 2 clips, got {n}")
    counts = Counter(label for label in labels if label)
    rule = "another clip (the set has no labels)"
    groups = np.arange(n, dtype=np.int64)  # a group per clip: only "another clip" is required
    if counts:
        top_label, top_count = counts.most_common(1)[0]
        if top_count <= n // 2:
            codes = {label: -1 - k for k, label in enumerate(counts)}  # negative: never equal to a clip's own index
            groups = np.array([codes[label] if label else i for i, label in enumerate(labels)], dtype=np.int64)
            rule = "another clip of a different label"
        else:
            rule = (f"another clip (label {top_label!r} holds {top_count} of {n} clips, more than half: a different "
                    "label for every clip is impossible)")
    rng = np.random.default_rng(seed)
    donors = rng.permutation(n)
    for i in np.flatnonzero(groups[donors] == groups):
        if groups[donors[i]] != groups[i]:
            continue  # repaired by an earlier swap
        # j gives its donor to i and takes i's: both end up with a donor of another group. Such a j exists when the
        # group holds at most half of the clips (at least n - 2 * count + 1 candidates).
        group = groups[i]
        candidates = np.flatnonzero((groups != group) & (groups[donors] != group))
        j = rng.choice(candidates)
        donors[i], donors[j] = donors[j], donors[i]
    return donors.astype(np.int64), rule


def noise_waveform(key: str, num_samples: int, sample_rate: int, *, seed: int = 0, color: str = "pink",
                   rms: float = DEFAULT_NOISE_RMS) -> np.ndarray:
    """A seeded noise clip for the ``noise`` check -> float32 (num_samples,) with RMS ``rms`` (relative to [-1, 1]).

    ``pink``: power spectral density proportional to 1 / f (white Gaussian noise shaped in the Fourier domain, no
    DC); ``white``: flat. The draw depends on ``(seed, key, sample_rate)`` only (``key``: the clip's id), so a clip
    hears the same noise whatever the batch size or order.
    """
    if color not in NOISE_COLORS:
        raise ValueError(f"noise color must be one of {NOISE_COLORS}, got {color!r}")
    if not rms > 0:
        raise ValueError(f"noise rms must be positive, got {rms}")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8")), sample_rate])
    noise = rng.standard_normal(num_samples)
    if color == "pink":
        spectrum = np.fft.rfft(noise)
        frequencies = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
        spectrum[0] = 0.0
        spectrum[1:] /= np.sqrt(frequencies[1:])
        noise = np.fft.irfft(spectrum, num_samples)
    noise *= rms / max(float(np.sqrt(np.mean(noise * noise))), 1e-12)
    return noise.astype(np.float32)


def noise_clip_index(sample_id: str, num_clips: int) -> int:
    """The noise draw (``noise_waveform(f"noise-{index}", ...)``) a scene hears: a hash of its id, so that it does
    not depend on the order, the batch size or the other scenes."""
    return zlib.crc32(sample_id.encode("utf-8")) % num_clips


def box_pixels(box: Sequence[float], size: int = EVAL_SIZE) -> tuple[int, int, int, int]:
    """Normalised ``[x0, y0, x1, y1]`` -> integer ``(x0, y0, x1, y1)`` on the size x size grid (VGG-SS rule), at
    least one pixel wide and high (``map[y0:y1, x0:x1]`` is never empty)."""
    x0, y0, x1, y1 = (int(v) for v in (np.clip(np.asarray(box, dtype=np.float64), 0, 1) * size).astype(int))
    x0, y0 = min(x0, size - 1), min(y0, size - 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


@functools.lru_cache(maxsize=16)
def _cumulative_upsampling(length: int, size: int = EVAL_SIZE) -> torch.Tensor:
    """(size + 1, length) float64: row t holds, for each input pixel, the sum of its bicubic weights
    (``align_corners=False``) over the output pixels 0 .. t-1 along one axis.

    Bicubic upsampling is separable (``upsample(m) = U_y @ m @ U_x.T``), so the sum of the upsampled map over rows
    ``y0:y1`` and columns ``x0:x1`` is ``(C_y[y1] - C_y[y0]) @ m @ (C_x[x1] - C_x[x0])``: no 224 x 224 map is built.
    """
    basis = torch.eye(length, dtype=torch.float64)[:, None, :, None]  # image k: a column with a 1 at row k
    weights = F.interpolate(basis, size=(size, 1), mode="bicubic", align_corners=False)[:, 0, :, 0]  # (length, size)
    return F.pad(weights.T.cumsum(0), (0, 0, 1, 0))


def object_means(maps: torch.Tensor, objects: Sequence[Sequence[Mapping[str, Any]]]) -> list[np.ndarray]:
    """Mean map value inside each object's box, on the map upsampled to 224 x 224 (bicubic, ``align_corners=False``,
    in float64; computed without building the upsampled map, see :func:`_cumulative_upsampling`).

    Args:
        maps: (N, h, w) raw maps (any resolution).
        objects: N lists of objects (mappings with a ``box``); an empty list gives an empty array.

    Returns:
        N float64 arrays, one mean per object.
    """
    if len(maps) != len(objects):
        raise ValueError(f"got {len(maps)} maps but {len(objects)} object lists")
    maps = torch.as_tensor(maps).double()
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (N, h, w), got {tuple(maps.shape)}")
    counts = [len(items) for items in objects]
    if not sum(counts):
        return [np.zeros(0) for _ in objects]
    boxes = torch.tensor([box_pixels(item["box"]) for items in objects for item in items])  # (M, 4): x0, y0, x1, y1
    scene = torch.repeat_interleave(torch.arange(len(objects)), torch.tensor(counts))  # (M,)
    rows, columns = _cumulative_upsampling(maps.shape[1]), _cumulative_upsampling(maps.shape[2])
    weight_y = rows[boxes[:, 3]] - rows[boxes[:, 1]]  # (M, h)
    weight_x = columns[boxes[:, 2]] - columns[boxes[:, 0]]  # (M, w)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double()
    means = torch.einsum("mh,mhw,mw->m", weight_y, maps[scene], weight_x) / area
    return list(np.split(means.numpy(), np.cumsum(counts)[:-1]))


def select_objects(maps: torch.Tensor, objects: Sequence[Sequence[Mapping[str, Any]] | None]) -> dict[str, np.ndarray]:
    """The object-selection check for each scene (module docstring).

    Args:
        maps: (N, h, w) raw maps.
        objects: N object lists (``box``, ``sounding``), or ``None`` where a scene's objects are unknown.

    Returns:
        ``{"selected", "score", "chance"}`` arrays (N,): the index of the best object (the first of tied ones; -1
        where the scene takes no part), its score in [0, 1] (s / k on a k-way tie holding s sounding objects) and
        the scene's chance level (sounding / objects); NaN where the scene takes no part.
    """
    n = len(objects)
    selected = np.full(n, -1, dtype=np.int64)
    score = np.full(n, np.nan)
    chance = np.full(n, np.nan)
    taking_part = [i for i, items in enumerate(objects) if items and 0 < sum(bool(o["sounding"]) for o in items)
                   < len(items)]
    if not taking_part:
        return {"selected": selected, "score": score, "chance": chance}
    maps = torch.as_tensor(maps)[taking_part]
    scale = maps.flatten(1).abs().amax(dim=1).double().clamp_min(1.0e-300).numpy()
    means = object_means(maps, [objects[i] for i in taking_part])
    for i, values, largest in zip(taking_part, means, scale):
        sounding = np.array([bool(o["sounding"]) for o in objects[i]])
        tied = values >= values.max() - TIE_TOLERANCE * largest
        selected[i] = int(np.argmax(tied))
        score[i] = sounding[tied].mean()
        chance[i] = sounding.mean()
    return {"selected": selected, "score": score, "chance": chance}


def summarize_selection(score: np.ndarray, chance: np.ndarray) -> dict[str, float | int] | None:
    """``{"accuracy", "chance", "num_scenes"}`` (percentages) over the scenes that take part; ``None`` if none does."""
    taking_part = ~np.isnan(np.asarray(score, dtype=np.float64))
    if not taking_part.any():
        return None
    return {
        "accuracy": 100.0 * float(np.mean(score[taking_part])),
        "chance": 100.0 * float(np.mean(chance[taking_part])),
        "num_scenes": int(taking_part.sum()),
    }


def listening_drops(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, dict]]:
    """``{variant: {branch: {"ciou", "auc"}}}`` = true minus variant, for every negative-audio variant in
    ``metrics`` (``{variant: {branch: {"ciou", "auc", ...}}}``): positive when the model loses without its sound."""
    true = metrics["true"]
    return {
        variant: {branch: {name: true[branch][name] - values[name] for name in ("ciou", "auc")}
                  for branch, values in metrics[variant].items()}
        for variant in NEGATIVE_AUDIO if variant in metrics
    }


_HEARD = {"swapped": "with a swapped sound", "silence": "with silence", "noise": "with noise"}
CARD_METRIC_NAMES = {
    **{f"{metric}_{variant}": f"{name} {_HEARD[variant]}" for variant in NEGATIVE_AUDIO
       for metric, name in (("ciou", "CIoU"), ("auc", "AUC"))},
    "selection": "object selection %",
    **{f"selection_{variant}": f"object selection % {_HEARD[variant]}" for variant in NEGATIVE_AUDIO},
    "selection_chance": "object selection %, chance level",
    **{f"{metric}_{variant}": f"{name}, {_HEARD[variant].removeprefix('with ')} as negatives"
       for variant in NEGATIVE_AUDIO
       for metric, name in (("ap50", "AP@0.5"), ("ap75", "AP@0.75"), ("max_f1_50", "max-F1@0.5"))},
    **{f"{metric}_{size}": f"{name}, {size} boxes" for size in SIZE_SUBSETS
       for metric, name in (("ciou", "CIoU"), ("auc", "AUC"))},
}
"""Display names of the keys :func:`card_metrics` adds (model-index metric names of the model card)."""


def card_metrics(listening: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """The listening figures as flat numbers per branch, for a model card's results: ``{"a" | "b" | "fused":
    {"ciou_swapped", "auc_swapped", "ciou_silence", ..., "selection", "selection_swapped", ..., "ap50_swapped",
    "ap75_swapped", "max_f1_50_swapped", ..., "ciou_small", "auc_small", ...}}``, plus ``"selection_chance"`` under
    ``fused`` (selection keys only where scenes list their objects; extended-protocol and box-size keys where the
    entry holds ``extended`` / ``sizes``; ``{}`` when the checks did not run)."""
    if not listening:
        return {}
    out: dict[str, dict[str, float]] = {}
    for variant in (v for v in NEGATIVE_AUDIO if v in listening["metrics"]):
        for branch, values in listening["metrics"][variant].items():
            out.setdefault(branch, {}).update({f"{m}_{variant}": values[m] for m in ("ciou", "auc")})
    selection = listening.get("selection")
    if selection:
        for variant, per_branch in selection["variants"].items():
            key = "selection" if variant == "true" else f"selection_{variant}"
            for branch, values in per_branch.items():
                out[branch][key] = values["accuracy"]
        out["fused"]["selection_chance"] = selection["chance"]
    for variant, per_branch in (listening.get("extended") or {}).items():
        for branch, values in per_branch.items():
            out.setdefault(branch, {}).update({f"{m}_{variant}": values[m] for m in ("ap50", "ap75", "max_f1_50")})
    for size, entry in (listening.get("sizes") or {}).items():
        for branch in (b for b in ("a", "b", "fused") if b in entry):
            out.setdefault(branch, {}).update({f"{m}_{size}": entry[branch][m] for m in ("ciou", "auc")})
    return out


def format_listening_table(result: Mapping[str, Any], branch_names: Mapping[str, str] | None = None) -> str:
    """A markdown table of the listening checks: CIoU / AUC per branch and object-selection accuracy under the
    true, swapped, silent and noise sounds, the drops versus the true sound, and the chance level; then, where the
    entry holds them, the extended protocol (AP@0.5 / max-F1@0.5 / ROC AUC of the confidence with each kind of
    negative: :mod:`xpl_hf.metrics.extended`) and CIoU / AUC per box size.

    Args:
        result: the ``listening`` entry of :func:`xpl_hf.evaluation.evaluate_model`'s result, or that result.
        branch_names: display names of the branches (default ``a`` -> "A", ``b`` -> "B", ``fused`` -> "fused").
    """
    listening = result.get("listening", result)
    if not listening:
        return "listening checks: not run"
    names = {"a": "A", "b": "B", "fused": "fused", **(branch_names or {})}
    branches = list(listening["metrics"]["true"])
    selection = listening.get("selection")
    header = ["audio"] + [f"{names[b]} CIoU / AUC" for b in branches]
    if selection:
        header += [f"{names[b]} selection %" for b in branches]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for variant in (v for v in AUDIO_VARIANTS if v in listening["metrics"]):
        cells = [variant] + [f"{m['ciou']:.2f} / {m['auc']:.2f}" for m in listening["metrics"][variant].values()]
        if selection:
            cells += [f"{selection['variants'][variant][b]['accuracy']:.1f}" for b in branches]
        lines.append("| " + " | ".join(cells) + " |")
    for variant, drops in listening["drops"].items():
        cells = [f"true - {variant}"] + [f"{d['ciou']:+.2f} / {d['auc']:+.2f}" for d in drops.values()]
        if selection:
            true, other = selection["variants"]["true"], selection["variants"][variant]
            cells += [f"{true[b]['accuracy'] - other[b]['accuracy']:+.1f}" for b in branches]
        lines.append("| " + " | ".join(cells) + " |")
    noise = listening["noise"]
    notes = [f"{listening['num_scenes']} scenes; swapped: the sound of {listening['swap']['rule']} "
             f"(seed {listening['swap']['seed']}); silence: all-zero waveform; noise: {noise['color']}, "
             f"RMS {noise['rms']} of full scale, {noise['clips']} seeded draws (seed {noise['seed']})."]
    if selection:
        notes.append(f"Object selection over {selection['num_scenes']} scenes listing their objects: chance "
                     f"{selection['chance']:.1f}% (a map that ignores the sound); ties count as a fraction.")
    else:
        notes.append("Object selection: not scored; it needs scenes listing both a sounding and a silent object "
                     "(optional `objects` column; scenes whose objects all sound or none sounds take no part).")
    return "\n".join(lines + notes + _extended_lines(listening, names, branches))


def _extended_lines(listening: Mapping[str, Any], names: Mapping[str, str], branches: Sequence[str]) -> list[str]:
    """The extended protocol's table (AP@0.5 / max-F1@0.5, ROC AUC of the confidence) and the box-size table."""
    lines = []
    extended = listening.get("extended")
    if extended:
        header = ["negatives"] + [f"{names[b]} AP@0.5 / max-F1@0.5 / ROC AUC" for b in branches]
        lines += ["", "Extended protocol (positives: each frame with its own sound; negatives: the same frames with "
                  "the sound below; AP, F1 and ROC AUC in %):", "| " + " | ".join(header) + " |",
                  "|" + " --- |" * len(header)]
        for variant, per_branch in extended.items():
            cells = [variant] + [f"{per_branch[b]['ap50']:.2f} / {per_branch[b]['max_f1_50']:.2f} / "
                                 f"{per_branch[b].get('roc_auc', float('nan')):.2f}" for b in branches]
            lines.append("| " + " | ".join(cells) + " |")
    if listening.get("sizes"):
        lines += ["", format_size_table(listening["sizes"], names)]
    return lines


def format_size_table(sizes: Mapping[str, Mapping[str, Any]], branch_names: Mapping[str, str] | None = None) -> str:
    """A markdown table of CIoU / AUC per box-size subset (``evaluate_model(...)["sizes"]``), one column per map."""
    names = {"a": "A", "b": "B", "fused": "fused", **(branch_names or {})}
    branches = [b for b in ("a", "b", "fused") if any(b in entry for entry in sizes.values())]
    header = ["box size (224 px)", "scenes"] + [f"{names[b]} CIoU / AUC" for b in branches]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for size, entry in sizes.items():
        low, high = SIZE_SUBSETS[size]
        bounds = f"< {math.isqrt(int(high))}²" if high != math.inf else f">= {math.isqrt(int(low))}²"
        cells = [f"{size} ({bounds})", str(entry["num_samples"])]
        cells += [f"{entry[b]['ciou']:.2f} / {entry[b]['auc']:.2f}" if entry["num_samples"] else "-" for b in branches]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
