"""Evaluate a trained XPL model with the community's cIoU / AUC protocol.

    python -m xpl_hf.evaluate --model PATH_OR_HUB_ID --dataset PATH_OR_ID --split test \\
        [--batch_size 32] [--output_dir eval-output] [--max_samples N] \\
        [--heard_list vggss_heard_test.csv --unheard_list vggss_unheard_test.csv] [--subset NAME=IDS_FILE ...] \\
        [--no_listening] [--listening_seed 0] [--noise_color pink] [--noise_rms 0.1]

Reports CIoU / AUC for branch A, branch B and the fused map (named by their audio backbones), per class (``label``
column), per box size and per named id list (e.g. the heard / unheard open-set split), and the listening checks of
:mod:`xpl_hf.metrics.listening`: the same scores with each clip's sound swapped for another clip's, silenced and
replaced by noise, and object-selection accuracy (with its chance level) where rows list their ``objects``; with them
the extended protocol of :mod:`xpl_hf.metrics.extended` (AP@0.5 / AP@0.75 / max-F1@0.5 with each kind of negative,
also per id list). Writes ``results.json``, ``per_scene.csv`` (one row per scene: every cIoU and confidence, the
selected object) and ``overlays.png``: the fused heat maps of the best, median and worst samples (by fused cIoU)
over their frames, ground truth outlined.
The protocol lives in :mod:`xpl_hf.metrics.protocol` and the model loop in :mod:`xpl_hf.evaluation`; this module only
loads, runs and reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from xpl_hf.data.annotations import read_id_list
from xpl_hf.evaluation import BRANCHES, ListeningSettings, evaluate_model, format_listening_table, save_per_scene_scores
from xpl_hf.loading import load_model_and_processor
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.metrics.listening import NOISE_COLORS, format_size_table
from xpl_hf.visualization import pick_best_median_worst, save_overlay_grid

logger = logging.getLogger("xpl_hf.evaluate")



def branch_names(config) -> dict[str, str]:
    """``{"a" | "b" | "fused": display name}`` from the model's config (:meth:`xpl_hf.XPLConfig.branch_label`)."""
    return {branch: config.branch_label(branch) for branch in BRANCHES}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m xpl_hf.evaluate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="folder saved by save_pretrained, or a Hub model id")
    parser.add_argument("--dataset", required=True, help="xpl-hf dataset folder (parquet shards) or Hub dataset id")
    parser.add_argument("--split", default="test", help="split to evaluate")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--output_dir", default="eval-output", help="where results.json and overlays.png go")
    parser.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N samples")
    parser.add_argument("--heard_list", default=None, help="ids of the classes seen in training (one per line)")
    parser.add_argument("--unheard_list", default=None, help="ids of the unseen classes (one per line)")
    parser.add_argument("--subset", action="append", default=[], metavar="NAME=IDS_FILE",
                        help="report a named id list separately (repeatable)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overlays_per_group", type=int, default=4,
                        help="samples per row (best / median / worst) of overlays.png; 0 disables the figure")
    parser.add_argument("--no_listening", action="store_true",
                        help="skip the listening checks (swapped / silent / noise sound, object selection)")
    parser.add_argument("--listening_seed", type=int, default=0, help="seed of the sound swap and of the noise clips")
    parser.add_argument("--noise_color", default="pink", choices=NOISE_COLORS, help="noise of the noise check")
    parser.add_argument("--noise_rms", type=float, default=0.1,
                        help="RMS of the noise clips relative to full scale (0.1 = -20 dBFS)")
    parser.add_argument("--revision", default=None, help="Hub revision of the model")
    parser.add_argument("--dataset_revision", default=None, help="Hub revision of the dataset")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    args = parser.parse_args(argv)
    if args.batch_size <= 0:
        parser.error("--batch_size must be positive")
    if args.max_samples is not None and args.max_samples <= 0:
        parser.error("--max_samples must be positive")
    if not 0 < args.noise_rms < math.inf:
        parser.error(f"--noise_rms must be a positive finite number, got {args.noise_rms}")
    if args.listening_seed < 0:
        parser.error(f"--listening_seed must be non-negative (a numpy seed), got {args.listening_seed}")
    return args


def load_subsets(args: argparse.Namespace) -> dict[str, list[str]]:
    """``--heard_list`` / ``--unheard_list`` / ``--subset NAME=FILE`` -> ``{name: ids}``."""
    named = []
    if args.heard_list:
        named.append(("heard", args.heard_list))
    if args.unheard_list:
        named.append(("unheard", args.unheard_list))
    for item in args.subset:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--subset expects NAME=IDS_FILE, got {item!r}")
        named.append((name, path))
    subsets = {}
    for name, path in named:
        if name in subsets:
            raise ValueError(f"subset {name!r} is given twice")
        subsets[name] = read_id_list(path)
    return subsets


def _extended_cells(extended: dict[str, Any] | None, branch: str) -> str:
    """AP@0.5 and max-F1@0.5 with swapped-sound negatives (the extended protocol's headline), or dashes."""
    row = ((extended or {}).get("swapped") or {}).get(branch)
    return f"{row['ap50']:.2f} | {row['max_f1_50']:.2f}" if row else "- | -"


def format_table(result: dict[str, Any], title: str, names: dict[str, str] | None = None) -> str:
    """The main table: CIoU / AUC / mean cIoU per map and per id list, with AP@0.5 and max-F1@0.5 (swapped-sound
    negatives) where the listening checks ran; without them also the box-size table (else the listening table holds
    it)."""
    names = names or {b: b for b in BRANCHES}
    lines = [title, "| branch | CIoU | AUC | mean cIoU | AP@0.5 | max-F1@0.5 |", "|" + " --- |" * 6]
    extended = (result.get("listening") or {}).get("extended")
    for branch in BRANCHES:
        m = result["metrics"][branch]
        lines.append(f"| {names[branch]} | {m['ciou']:.2f} | {m['auc']:.2f} | {m['mean_ciou']:.4f} | "
                     f"{_extended_cells(extended, branch)} |")
    for name, entry in result["subsets"].items():
        if entry["num_samples"]:
            f = entry["fused"]
            lines.append(f"| fused, {name} ({entry['num_samples']}) | {f['ciou']:.2f} | {f['auc']:.2f} "
                         f"| {f['mean_ciou']:.4f} | {_extended_cells(entry.get('extended'), 'fused')} |")
    if "listening" not in result and result.get("sizes"):
        lines += ["", format_size_table(result["sizes"], names)]
    return "\n".join(lines)


def write_overlays(path: Path, dataset, result: dict[str, Any], per_group: int) -> str:
    """overlays.png: fused maps of the best / median / worst samples by fused cIoU."""
    from xpl_hf.data.decoding import decode_image

    ids = result["per_sample"]["ids"]
    scores = result["per_sample"]["ciou_fused"]
    groups = pick_best_median_worst(scores, per_group=per_group)
    row_of = {sample_id: i for i, sample_id in enumerate(dataset["id"])}
    images, maps, gts, titles = [], [], [], []
    for group in ("best", "median", "worst"):
        for index in groups[group]:
            row = dataset[row_of[ids[index]]]
            images.append(decode_image(row["image"]))
            maps.append(result["maps"]["fused"][index])
            gts.append(ground_truth_map(row["boxes"], row["gt_rule"]))
            label = f" {row.get('label')}" if row.get("label") else ""
            titles.append(f"{ids[index]}{label}\ncIoU {scores[index]:.3f}")
    columns = len(groups["best"])  # every group holds min(per_group, number of samples) samples
    return save_overlay_grid(path, images, maps, gts, titles, row_names=["best", "median", "worst"], columns=columns)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from xpl_hf.data import load_labeled

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    subsets = load_subsets(args)
    model, processor = load_model_and_processor(args.model, revision=args.revision, token=args.token, device=device)
    dataset = load_labeled(args.dataset, args.split, revision=args.dataset_revision, token=args.token)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))

    listening = False if args.no_listening else ListeningSettings(
        seed=args.listening_seed, noise_color=args.noise_color, noise_rms=args.noise_rms)
    start = time.perf_counter()
    result = evaluate_model(
        model, dataset, processor=processor, batch_size=args.batch_size, num_workers=args.num_workers,
        subsets=subsets, keep_maps=args.overlays_per_group > 0, progress=True, listening=listening,
    )
    seconds = time.perf_counter() - start

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "num_samples": result["metrics"]["num_samples"],
        "num_unlabeled_skipped": result["num_unlabeled_skipped"],
        "device": str(device),
        "seconds": round(seconds, 2),
        **{key: result[key] for key in ("metrics", "summary", "subsets", "sizes", "per_label", "protocol",
                                        "per_sample")},
    }
    if "listening" in result:
        report["listening"] = {k: v for k, v in result["listening"].items() if k != "per_scene"}
    report["per_scene"] = save_per_scene_scores(result, output_dir / "per_scene.csv").name
    if args.overlays_per_group > 0:
        report["overlays"] = Path(write_overlays(output_dir / "overlays.png", dataset, result,
                                                 args.overlays_per_group)).name
    (output_dir / "results.json").write_text(json.dumps(report, indent=2))
    title = (f"{args.model} on split {args.split!r} of {args.dataset} "
             f"({report['num_samples']} samples, {seconds:.1f} s):")
    names = branch_names(model.config)
    print(format_table(result, title, names))
    if "listening" in result:
        print(f"\nListening checks:\n{format_listening_table(result, names)}")
    print(f"results: {output_dir / 'results.json'}; per-scene scores: {output_dir / report['per_scene']}")
    if "overlays" in report:
        print(f"overlays (best, median, worst): {output_dir / report['overlays']}")
    return report


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as error:  # bad arguments, missing model / dataset / id list
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
