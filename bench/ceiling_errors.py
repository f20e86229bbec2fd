"""Where a protocol row fails to pick the sounding object: object selection failures by sounding class, and by the
pair (sounding class, silent class in the same scene), from a protocol folder's per-scene records.

    python -m bench.ceiling_errors [--protocol results/cpu_protocol] [--row full_supervision] [--split test]

The records (bench/reproduce.py, `raw/<row>/seed<k>.json`) keep each scene's selection per seed; the scenes' objects
(class, box, sounding flag) come from the protocol's feature cache (bench/feature_cache.py), read memory-mapped.
A failure rate is the mean over seeds and scenes of 1 - selection score (the fused map unless `--branch` says).
It tells whether a ceiling is set by the picture (failures spread over classes, or tied to what is beside the
sounding object) or by the sound (failures of a few sounding classes, beside the silent objects whose sounds are
like theirs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from xpl_hf.data.synthetic import CLASS_NAMES
from xpl_hf.losses import downsample_gt
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.metrics.listening import select_objects


def failure_tables(selected: np.ndarray, objects: list[list[dict]], min_scenes: int = 10
                   ) -> tuple[dict[str, float], list[tuple[str, str, float, int]]]:
    """Failure rates (%) by sounding class, and by (sounding class, silent class present) pair, largest first.

    Args:
        selected: (seeds, N) selection scores in [0, 1] of the N scenes.
        objects: the N scenes' object lists (``label``, ``sounding``).
        min_scenes: pairs seen in fewer scenes are left out.
    """
    failed = 1.0 - selected.mean(0)  # (N,)
    sounding = [next(o["label"] for o in items if o["sounding"]) for items in objects]
    by_class = {name: float(100 * failed[[s == name for s in sounding]].mean())
                for name in CLASS_NAMES if name in sounding}
    pairs = []
    for name in by_class:
        for other in CLASS_NAMES:
            mask = [s == name and any(o["label"] == other and not o["sounding"] for o in items)
                    for s, items in zip(sounding, objects)]
            if sum(mask) >= min_scenes:
                pairs.append((name, other, float(100 * failed[mask].mean()), int(sum(mask))))
    return by_class, sorted(pairs, key=lambda p: -p[2])


def oracle_selection(objects: list[list[dict]], map_size: int = 7) -> float:
    """Object selection (%) of the best map a `map_size` x `map_size` head can give: its training target, the sounding
    box's ground-truth map (`ground_truth_map`, 224 px) area-averaged to the map's size (`downsample_gt`). 100 means
    neither the map's resolution nor the selection rule caps a row."""
    gts = torch.stack([torch.from_numpy(ground_truth_map([o["box"] for o in items if o["sounding"]], "union") > 0)
                       for items in objects])
    return float(100 * np.nanmean(select_objects(downsample_gt(gts, map_size), objects)["score"]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", type=Path, default=Path("results/cpu_protocol"))
    p.add_argument("--row", default="full_supervision")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--branch", default="fused", choices=["a", "b", "fused"])
    p.add_argument("--cache", type=Path, default=Path("data/xpl-study/cache.pt"))
    p.add_argument("--top", type=int, default=8, help="pairs to print")
    p.add_argument("--map_size", type=int, default=7, help="the protocol's maps (224 px, 7 x 7)")
    args = p.parse_args(argv)
    records = [json.loads(f.read_text()) for f in sorted((args.protocol / "raw" / args.row).glob("seed*.json"))]
    if not records:
        raise SystemExit(f"no records of {args.row!r} in {args.protocol / 'raw'}")
    selected = np.array([r[f"{args.split}_per_scene"]["true"][args.branch]["selected"] for r in records])
    objects = torch.load(args.cache, weights_only=True, mmap=True)["splits"][args.split]["objects"]
    if len(objects) != selected.shape[1]:
        raise SystemExit(f"the cache's {args.split} split has {len(objects)} scenes, the records {selected.shape[1]}")
    by_class, pairs = failure_tables(selected, objects)
    print(f"{args.row}, {args.branch} map, {args.split} split, {len(records)} seeds: selection failed in "
          f"{100 * (1 - selected.mean()):.1f}% of scenes")
    worst_first = sorted(by_class.items(), key=lambda kv: -kv[1])
    print("by sounding class: " + ", ".join(f"{name} {rate:.1f}%" for name, rate in worst_first))
    print(f"an oracle {args.map_size} x {args.map_size} map (the sounding box's ground truth, area-averaged) selects "
          f"{oracle_selection(objects, args.map_size):.1f}%")
    print("worst pairs (sounding class beside a silent class: failure %, scenes):")
    for name, other, rate, n in pairs[:args.top]:
        print(f"  {name:7s} beside {other:7s} {rate:5.1f}%  ({n})")
    return {"by_class": by_class, "pairs": pairs}


if __name__ == "__main__":
    main()
