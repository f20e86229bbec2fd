"""What the study protocols share (bench/reproduce.py, bench/cached_protocol.py, bench/gpu_protocol.py and
bench/reproduce_end_to_end.py): the method rows, the labelled draw, the scores, the swapped sound and the run records.

The extended protocol (`xpl_hf.metrics.extended`: AP and max-F1 with another clip's sound as negatives, cIoU by box
size) is read from a run's per-scene record: each scene's cIoU and map confidence (`xpl_hf.maps.branch_confidences`)
with its true and its swapped sound, and the split's ground-truth areas (:func:`run_extended`, :func:`run_sizes`).

Training itself is the package's (`xpl_hf.trainer.TrainingStep`, its parameter groups and curriculum ramp in
`xpl_hf.optimization`): nothing here computes a loss or steps an optimiser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xpl_hf.maps import branch_confidences
from xpl_hf.method import XPLMethod
from xpl_hf.metrics.extended import extended_protocol, ground_truth_areas, size_subsets
from xpl_hf.metrics.listening import select_objects, swap_permutation
from xpl_hf.metrics.protocol import binarize_maps, ciou_scores, normalize_maps, summarize_ciou, upsample_maps
from xpl_hf.optimization import default_rampup_steps

BRANCHES = ("a", "b", "fused")
RANDOM_ALLOWED = ("vggish",)  # trunks that may stay random (VGGish has no offline source); each record says which did

ROWS: dict[str, dict] = {  # row -> XPLMethod.from_name arguments
    "sup_only": {"method": "sup_only"},
    "sup_contrastive": {"method": "sup_contrastive"},
    "hard_pl": {"method": "hard_pl"},
    "xpl": {"method": "xpl"},
    "full_supervision": {"method": "full_supervision"},
    "xpl-no_pl_ema": {"method": "xpl", "no_pl_ema": True},
    "xpl-no_cross_refine": {"method": "xpl", "no_cross_refine": True},
    "xpl-no_sharpening": {"method": "xpl", "no_sharpening": True},
    "xpl-no_data_selection": {"method": "xpl", "no_data_selection": True},
    "xpl-alpha0.3": {"method": "xpl", "pl_ema_alpha": 0.3},
    "xpl-alpha0.9": {"method": "xpl", "pl_ema_alpha": 0.9},
    "xpl-T0.3": {"method": "xpl", "sharpen_temperature": 0.3},  # T chosen on validation (docs/method.md)
    **{f"xpl-T0.3-{a}": {"method": "xpl", a: True, "sharpen_temperature": 0.3}
       for a in ("no_pl_ema", "no_cross_refine", "no_data_selection")},
    **{f"xpl-T0.3-alpha{a}": {"method": "xpl", "pl_ema_alpha": a, "sharpen_temperature": 0.3} for a in (0.3, 0.9)},
}


# ------------------------------------------------------------------------------------------------ runs

def row_method(row: str, steps: int, warmup_steps: int, **settings) -> XPLMethod:
    """The `XPLMethod` of protocol row ``row`` (:data:`ROWS`) with ``settings`` on top; unless they set it, the
    curriculum ramps over the first half of stage 2, as in train_xpl.py (`xpl_hf.optimization.default_rampup_steps`)."""
    args = {**ROWS[row], **settings}
    args.setdefault("curriculum_rampup_steps", default_rampup_steps(steps, warmup_steps))
    return XPLMethod.from_name(args.pop("method"), **args)


def lr_warmup_steps(steps: int) -> int:
    """Learning-rate warm-up of a protocol run of ``steps`` steps: the recipe's ratio (20 of 300), at least 1."""
    return max(1, steps // 15)


def draw_labeled(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` pool indices, stratified by class (as even as possible), for `seed`."""
    g = torch.Generator().manual_seed(10_000 + seed)
    classes = labels.unique()
    per_class = {int(c): (labels == c).nonzero().flatten() for c in classes}
    order = [per_class[int(c)][torch.randperm(len(per_class[int(c)]), generator=g)] for c in classes]
    picked, k = [], 0
    while len(picked) < n:
        for rows in order:
            if k < len(rows) and len(picked) < n:
                picked.append(int(rows[k]))
        k += 1
    return torch.tensor(sorted(picked))


# ---------------------------------------------------------------------------------------------- scores

def swapped_sound_order(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """For each scene, the scene whose sound it gets in the swapped-sound check (N,) int64: the package's rule,
    `xpl_hf.metrics.listening.swap_permutation` (a permutation, another class wherever possible), on class indices."""
    donors, _ = swap_permutation([str(int(c)) for c in labels.tolist()], seed)
    return torch.from_numpy(donors)


def score(maps: torch.Tensor, gt: torch.Tensor, objects: list[list[dict]]) -> dict[str, Any]:
    """Protocol cIoU per scene + object selection (`xpl_hf.metrics.listening.select_objects`: the sounding object's
    box has the highest mean map value; a k-way tie scores s / k). maps (N, h, w), gt (N, 224, 224) bool."""
    ciou = ciou_scores(binarize_maps(normalize_maps(upsample_maps(maps))), gt).numpy()
    return {"ciou": ciou, "selected": select_objects(maps, objects)["score"]}


def summarize(scores: dict[str, Any]) -> dict[str, float]:
    """cIoU and AUC (the protocol's) and object selection (%) of :func:`score`'s per-scene scores."""
    s = summarize_ciou(scores["ciou"])
    return {"ciou": s["ciou"], "auc": s["auc"], "select": 100.0 * float(np.mean(scores["selected"]))}


def confidences(maps: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per-scene confidence of each map of `predict`'s {"a", "b", "fused"}: (N, h, w) maps -> {branch: (N,) float64}
    (`xpl_hf.maps.branch_confidences`: the mean of the top quarter of a branch's probability map; fused: the mean of
    A's and B's)."""
    return {b: c.cpu().numpy() for b, c in branch_confidences(maps["a"], maps["b"]).items()}


def per_scene(scores: dict[str, Any], confidence: np.ndarray) -> dict[str, list]:
    """One map's per-scene record: :func:`score`'s cIoU and object selection, and the map's confidence (N,)."""
    return {"ciou": np.asarray(scores["ciou"]).tolist(), "selected": np.asarray(scores["selected"]).tolist(),
            "confidence": np.asarray(confidence).tolist()}


def gt_areas(gt: torch.Tensor, chunk: int = 250) -> np.ndarray:
    """Ground-truth area of each scene at 224 px (`xpl_hf.metrics.extended.ground_truth_areas`), (N, 224, 224) ->
    float64 (N,), `chunk` scenes at a time (the package's function holds the maps as float64)."""
    return np.concatenate([ground_truth_areas(gt[s:s + chunk].cpu().numpy()) for s in range(0, len(gt), chunk)])


def _per_scene_of(record: dict) -> dict:
    return record.get(record["split"] + "_per_scene") or {}


def has_confidences(record: dict) -> bool:
    """Whether a run's record holds per-scene confidences of every map, with the true and the swapped sound."""
    per = _per_scene_of(record)
    return all("confidence" in per.get(v, {}).get(b, {}) for v in ("true", "swapped") for b in BRANCHES)


def run_extended(record: dict) -> dict[str, dict[str, float | int]] | None:
    """The extended protocol of one run: {branch: `xpl_hf.metrics.extended.extended_protocol`} (ap50, max_f1_50, ap75,
    max_f1_75, roc_auc, ... in %) with each scene's own sound as a positive and its swapped sound as a negative;
    None for a record without confidences."""
    if not has_confidences(record):
        return None
    per = _per_scene_of(record)
    return {b: extended_protocol(per["true"][b]["confidence"], per["true"][b]["ciou"], per["swapped"][b]["confidence"])
            for b in BRANCHES}


def run_sizes(record: dict, branch: str = "fused") -> dict[str, dict[str, float | int]] | None:
    """cIoU / AUC (%) of one run's map with the true sound per box-size subset (`xpl_hf.metrics.extended.size_subsets`;
    an empty subset has only ``num_samples``); None for a record without ground-truth areas."""
    areas, per = record.get(record["split"] + "_gt_area"), _per_scene_of(record)
    if areas is None or "ciou" not in per.get("true", {}).get(branch, {}):
        return None
    return size_subsets(per["true"][branch]["ciou"], areas)


def chance_select(objects: list[list[dict]]) -> float:
    """Object selection (%) of any map that ignores the sound: the mean of 1 / number of objects."""
    return 100.0 * float(np.mean([1.0 / len(o) for o in objects]))


# --------------------------------------------------------------------------------------------- records

def raw_path(out: Path, row: str, seed: int) -> Path:
    """Where run (row, seed)'s record lives: <out>/raw/<row>/seed<seed>.json."""
    return Path(out) / "raw" / row / f"seed{seed}.json"


def write_record(path: Path, record: dict, indent: int | None = None) -> None:
    """Write a run's record as JSON, atomically: a killed run never leaves half a file (a rerun would skip it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=indent))
    tmp.replace(path)


def load_records(out: Path) -> dict[str, dict[int, dict]]:
    """Every record under <out>/raw/: {row: {seed: record}}, rows and seeds in sorted order."""
    records: dict[str, dict[int, dict]] = {}
    for path in sorted((Path(out) / "raw").glob("*/seed*.json")):
        record = json.loads(path.read_text())
        records.setdefault(record["row"], {})[record["seed"]] = record
    return {row: dict(sorted(by_seed.items())) for row, by_seed in records.items()}
