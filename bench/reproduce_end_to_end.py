"""End-to-end reproduction: the paper's table rows trained by train_xpl.py itself (trainable trunks, decoded media).

The decision protocol on 2 CPU cores is bench/reproduce.py (frozen-trunk feature cache, thousands of head steps,
5 paired seeds); the GPU protocol is bench/gpu_protocol.py (the same rows, seeds, scores and report end to end:
data decoded once into GPU memory, colour augmentation on the GPU, trainable trunks at 224 px, per-scene scores).
This script runs the rows through the real recipe, one train_xpl.py process per run: a slow cross-check of both
(`--preset h100` was never run; for a lent GPU use bench/gpu_protocol.py).

    python -m bench.reproduce_end_to_end --threads 1           # full grid: 13 configs x 3 seeds (~70 min, 2 cores)
    python -m bench.reproduce_end_to_end --threads 1 --quick   # the 5 method rows x seed 0 (~9 min)
    python -m bench.reproduce_end_to_end --rows xpl,hard_pl --seeds 0,1 --steps 200
    python -m bench.reproduce_end_to_end --report_only         # rewrite tables/plots from results/raw/ (no training)

Data: `xpl_hf.data.synthetic.generate_benchmark` (dataset seed 0, the same for every run), 10% of the training pool
labeled (default 120 labeled + 1,080 unlabeled), a validation split (model selection: the trainer keeps the best
validation checkpoint, fused CIoU) and a test split (reported, never used for any choice).

Rows (13 configs), each trained with every seed (the seed changes model init, augmentation and data order):
  Table 1:    sup_only, hard_pl, sup_contrastive, self_supervised, xpl
  Table 2(b): xpl, xpl-no_pl_ema, xpl-no_cross_refine, xpl-no_sharpening, xpl-no_data_selection
  Table 2(c): xpl-alpha0.1, xpl-alpha0.3, xpl-alpha0.5, xpl (alpha 0.7), xpl-alpha0.9

Runs go seed-major (every row's seed 0 first), so a grid stopped early still has every row. A run whose raw JSON
exists in <out>/raw/ is skipped: rerun the same command to continue a killed grid. Each run's output_dir lives under
--scratch (not committed); only its eval_results.json / training_log.json are kept there, checkpoints and weights are
deleted after the run. Anything after `--` is passed to train_xpl.py for every run.

Writes <out>/: tables.md (Tables 1, 2(b), 2(c), stability, diagnostics; mean ± sample std over seeds, n per row),
fig2d_validation.png (validation CIoU of xpl and hard_pl against step, mean ± std over seeds; pseudo-label quality;
admitted fraction), summary.json (aggregates), raw/<row>/seed<k>.json (per run: test metrics, best step, log).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from .protocol import load_records as load_raw_records
from .protocol import raw_path, write_record

# row name -> extra train_xpl.py arguments
ROWS: dict[str, list[str]] = {
    "sup_only": ["--method", "sup_only"],
    "hard_pl": ["--method", "hard_pl"],
    "sup_contrastive": ["--method", "sup_contrastive"],
    "self_supervised": ["--method", "self_supervised"],
    "xpl": ["--method", "xpl"],
    "xpl-no_pl_ema": ["--method", "xpl", "--no_pl_ema"],
    "xpl-no_cross_refine": ["--method", "xpl", "--no_cross_refine"],
    "xpl-no_sharpening": ["--method", "xpl", "--no_sharpening"],
    "xpl-no_data_selection": ["--method", "xpl", "--no_data_selection"],
    "xpl-alpha0.1": ["--method", "xpl", "--pl_ema_alpha", "0.1"],
    "xpl-alpha0.3": ["--method", "xpl", "--pl_ema_alpha", "0.3"],
    "xpl-alpha0.5": ["--method", "xpl", "--pl_ema_alpha", "0.5"],
    "xpl-alpha0.9": ["--method", "xpl", "--pl_ema_alpha", "0.9"],
    # oracle ceiling (off by default: only with --rows full_supervision or --with_ceiling): the same run with the
    # unlabeled split's true boxes used as labels
    "full_supervision": ["--method", "full_supervision"],
}
DEFAULT_ROWS = [r for r in ROWS if r != "full_supervision"]
METHOD_ROWS = ["sup_only", "hard_pl", "sup_contrastive", "self_supervised", "xpl"]
QUICK_ROWS = ["sup_only", "hard_pl", "xpl"]

# Benchmark size and per-run settings. train_extra goes to train_xpl.py before the command line's passthrough.
PRESETS: dict[str, dict] = {
    # The issue-11 CPU protocol (results/legacy_v0.2/ISSUE11_FINDINGS.md): a small unlabeled pool visited ~2x
    # (so PL-EMA acts),
    # 4x4 maps, FROZEN pretrained image trunks as a fast proxy (projections, audio encoders, map heads train),
    # VGGish (random offline) with a 512-d head, L_avc down-weighted, pretrained backbones at lr x 0.1.
    "cpu": dict(num_labeled=60, num_unlabeled=180, num_validation=100, num_test=300, data_image_size=128,
                image_size=128, clip_seconds=1.0, batch_size=8, steps=144, warmup_stage_steps=48, eval_steps=16,
                train_extra=["--freeze_backbones", "all", "--vggish_fc_dim", "512", "--grad_share_steps", "16",
                             "--backbone_learning_rate_scale", "0.1", "--avc_weight", "0.05"]),
    # The grid of results/legacy_v0.2/README.md before issue 11 (48 steps, one pass over 1,080 unlabeled clips,
    # 3x3 maps).
    "legacy": dict(num_labeled=120, num_unlabeled=1080, num_validation=100, num_test=300, data_image_size=128,
                   image_size=96, clip_seconds=1.0, batch_size=8, steps=48, warmup_stage_steps=None,
                   eval_steps=None, train_extra=["--cross_normalization", "admitted"]),
    # One H100 (not run here): 224 px, 3 s clips, 7x7 maps, trainable trunks, bf16; 300 labeled + 1,200 unlabeled,
    # stage 2 = 160 steps x 16 = 2,560 unlabeled visits (~2.1 passes). Budget: sup_only/hard_pl/xpl x 3 seeds
    # (--rows sup_only,hard_pl,xpl --seeds 3) in <= 8 min, i.e. <= ~50 s per run (to be measured).
    "h100": dict(num_labeled=300, num_unlabeled=1200, num_validation=250, num_test=500, data_image_size=224,
                 image_size=224, clip_seconds=3.0, batch_size=16, steps=240, warmup_stage_steps=80, eval_steps=20,
                 train_extra=["--mixed_precision", "bf16", "--dataloader_num_workers", "6", "--eval_batch_size",
                              "128", "--backbone_learning_rate_scale", "0.1", "--avc_weight", "0.05"]),
}

# (title, [(row, label)], paper's numbers note)
TABLES = [
    ("Table 1 (methods; paper: Flickr-144k, 10% labeled)", [
        ("sup_only", "Supervised only (L_sup + λ·L_avc on labelled)"),
        ("self_supervised", "Self-supervised (L_avc, EZ-VSL-like)"),
        ("sup_contrastive", "Supervised + contrastive (L_sup; λ·L_avc on all)"),
        ("hard_pl", "Hard pseudo-labels (vanilla self-training)"),
        ("xpl", "**XPL** (soft, sharpened, PL-EMA, cross, curriculum)"),
        ("full_supervision", "Full supervision (oracle ceiling: the unlabeled split's true boxes as labels)"),
    ]),
    ("Table 2(b) (ablations of XPL)", [
        ("xpl", "XPL (full)"),
        ("xpl-no_pl_ema", "w/o PL-EMA (α = 0)"),
        ("xpl-no_cross_refine", "w/o cross-refine (own labels)"),
        ("xpl-no_sharpening", "w/o sharpening"),
        ("xpl-no_data_selection", "w/o data selection (all admitted)"),
    ]),
    ("Table 2(c) (PL-EMA α)", [
        ("xpl-alpha0.1", "α = 0.1"),
        ("xpl-alpha0.3", "α = 0.3"),
        ("xpl-alpha0.5", "α = 0.5"),
        ("xpl", "α = 0.7 (default)"),
        ("xpl-alpha0.9", "α = 0.9"),
    ]),
]

BRANCHES = (("a", "A (VGGish)"), ("b", "B (SoundNet-8)"), ("fused", "fused"))


# ============================================================================================== arguments
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results", help="results folder (tables, plots, raw/)")
    p.add_argument("--scratch", default="runs/reproduce", help="run output_dirs and the generated benchmark")
    p.add_argument("--rows", default=None, help="comma list of rows (default: all 13; --quick: the 5 method rows)")
    p.add_argument("--seeds", default=None,
                   help="a count N (seeds 0..N-1) or a comma list ('2,' is seed 2 only); default 3, --quick 1")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: --preset's)")
    p.add_argument("--warmup_stage_steps", type=int, default=None, help="stage-1 steps (default: steps // 3)")
    p.add_argument("--eval_steps", type=int, default=None, help="validation every N steps (default: steps // 6)")
    p.add_argument("--lr_warmup_steps", type=int, default=None,
                   help="LR warm-up steps (default: steps / 15, the trainer's 20-of-300 ratio)")
    p.add_argument("--quick", action="store_true",
                   help="sup_only, hard_pl, xpl x seed 0 only (the full grid's first runs)")
    p.add_argument("--report_only", action="store_true", help="only (re)write tables and plots from <out>/raw/")
    p.add_argument("--keep_outputs", action="store_true", help="keep each run's model/checkpoints in --scratch")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's). Use 1 when another job shares "
                   "the cores: 2 threads against a busy core ran up to 20x slower here")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                   help="benchmark size + per-run settings (see PRESETS); any option given explicitly wins")
    p.add_argument("--with_ceiling", action="store_true",
                   help="also run the oracle 'full_supervision' row (unlabeled split's true boxes as labels)")
    # benchmark and per-run settings (defaults from --preset)
    p.add_argument("--num_labeled", type=int, default=None)
    p.add_argument("--num_unlabeled", type=int, default=None)
    p.add_argument("--num_validation", type=int, default=None)
    p.add_argument("--num_test", type=int, default=None)
    p.add_argument("--data_image_size", type=int, default=None, help="generated image size")
    p.add_argument("--image_size", type=int, default=None, help="model input size (map = size // 32)")
    p.add_argument("--clip_seconds", type=float, default=None)
    p.add_argument("--batch_size", type=int, default=None, help="labeled and unlabeled samples per step (each)")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    derived = ("warmup_stage_steps", "eval_steps") if args.steps is not None else ()  # follow an explicit --steps
    for key, value in preset.items():
        if key != "train_extra" and key not in derived and getattr(args, key, None) is None:
            setattr(args, key, value)
    passthrough = list(preset["train_extra"]) + passthrough  # the command line's passthrough wins
    if args.seeds is None:
        args.seeds = "1" if args.quick else "3"
    args.seeds = ([int(s) for s in args.seeds.split(",") if s.strip()] if "," in args.seeds
                  else list(range(int(args.seeds))))
    if args.rows is None:
        args.rows = ",".join(QUICK_ROWS if args.quick else DEFAULT_ROWS)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if args.with_ceiling and "full_supervision" not in args.rows:
        args.rows.append("full_supervision")
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    if args.warmup_stage_steps is None:
        args.warmup_stage_steps = args.steps // 3
    if args.eval_steps is None:
        args.eval_steps = max(args.steps // 6, 1)
    if args.lr_warmup_steps is None:
        args.lr_warmup_steps = max(round(args.steps / 15), 1)
    return args, passthrough


def dataset_dir(args) -> Path:
    return Path(args.scratch) / f"data-{args.num_labeled}-{args.num_unlabeled}-{args.num_validation}-{args.num_test}"


def train_argv(args, row: str, seed: int, output_dir: Path, passthrough: list[str]) -> list[str]:
    """The train_xpl.py arguments of one run (learning rates etc. are the trainer's defaults)."""
    return [
        "--dataset", str(dataset_dir(args)), "--output_dir", str(output_dir), "--seed", str(seed),
        "--max_train_steps", str(args.steps), "--warmup_stage_steps", str(args.warmup_stage_steps),
        "--image_size", str(args.image_size), "--clip_seconds", str(args.clip_seconds),
        "--train_batch_size", str(args.batch_size), "--unlabeled_batch_size", str(args.batch_size),
        "--lr_warmup_steps", str(args.lr_warmup_steps), "--eval_steps", str(args.eval_steps),
        "--eval_max_samples", str(args.num_validation),
        "--logging_steps", "5", "--checkpointing_steps", "100000", "--checkpoints_total_limit", "1",
        "--report_to", "none", "--resume_from_checkpoint", "latest",
        *ROWS[row], *passthrough,
    ]


# ================================================================================================= running
def run_one(args, row: str, seed: int, passthrough: list[str]) -> dict:
    """Train + test one (row, seed) in this process; returns the raw record."""
    from accelerate.state import AcceleratorState

    import train_xpl

    output_dir = Path(args.scratch) / "runs" / row / f"seed{seed}"
    argv = train_argv(args, row, seed, output_dir, passthrough)
    resolved = train_xpl.parse_args(argv).public_dict()
    start = time.time()
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        results = train_xpl.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    wall = time.time() - start
    history = json.loads((output_dir / "training_log.json").read_text())
    record = {"row": row, "seed": seed, "wall_s": round(wall, 1), "best_step": results["best_step"],
              "test": {k: {"ciou": results[k]["ciou"], "auc": results[k]["auc"]} for k in ("a", "b", "fused")},
              "num_test_samples": args.num_test,
              "train_argv": argv, "training_args": resolved, "log_history": history}
    if not args.keep_outputs:  # checkpoints/weights are large; keep the small files only
        for item in output_dir.iterdir():
            if item.name not in ("eval_results.json", "training_log.json", "training_curves.png"):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    return record


def run_grid(args, passthrough: list[str]) -> None:
    out = Path(args.out)
    from xpl_hf.data.synthetic import generate_benchmark

    t0 = time.time()
    generate_benchmark(str(dataset_dir(args)), num_labeled=args.num_labeled, num_unlabeled=args.num_unlabeled,
                       num_validation=args.num_validation, num_test=args.num_test, image_size=args.data_image_size,
                       seed=0, progress=False)
    print(f"[reproduce] benchmark ready in {dataset_dir(args)} ({time.time() - t0:.0f} s)", flush=True)
    baselines = out / "raw" / "_trivial_baselines.json"
    if not baselines.is_file():
        baselines.parent.mkdir(parents=True, exist_ok=True)
        baselines.write_text(json.dumps(trivial_baselines(dataset_dir(args)), indent=1))
    todo = [(row, seed) for seed in args.seeds for row in args.rows]
    for i, (row, seed) in enumerate(todo, 1):
        path = raw_path(out, row, seed)
        if path.is_file():
            print(f"[reproduce] {i}/{len(todo)} {row} seed {seed}: done before, skipped", flush=True)
            continue
        print(f"[reproduce] {i}/{len(todo)} {row} seed {seed}: training ({time.strftime('%H:%M:%S')})", flush=True)
        try:
            record = run_one(args, row, seed, passthrough)
        except Exception:  # one failed run must not stop the grid; it is reported and retried on the next call
            traceback.print_exc()
            print(f"[reproduce] {row} seed {seed} FAILED", flush=True)
            continue
        write_record(path, record, indent=1)
        f = record["test"]["fused"]
        print(f"[reproduce] {row} seed {seed}: test fused CIoU {f['ciou']:.2f} AUC {f['auc']:.2f}, best step "
              f"{record['best_step']}, {record['wall_s']:.0f} s", flush=True)
        write_report(out, command=getattr(args, "command", None))
        gc.collect()


def trivial_baselines(data_dir: Path) -> dict:
    """Test CIoU/AUC of maps that ignore the input (the chance level of this test split): the whole image (a
    flat map) and a centred Gaussian."""
    import numpy as np

    from xpl_hf.data import load_labeled
    from xpl_hf.metrics.ground_truth import ground_truth_map
    from xpl_hf.metrics.protocol import localization_metrics

    test = load_labeled(str(data_dir), "test")
    gts = [ground_truth_map(r["boxes"], r["gt_rule"]) for r in test.select_columns(["boxes", "gt_rule"])]
    yy, xx = np.mgrid[0:7, 0:7] / 6.0 - 0.5
    centre = np.exp(-(xx ** 2 + yy ** 2) / (2 * 0.25 ** 2)).astype(np.float32)
    out = {}
    for name, pred in (("whole image", np.ones((7, 7), np.float32)), ("centre Gaussian", centre)):
        m = localization_metrics([pred] * len(gts), gts)
        out[name] = {"ciou": m["ciou"], "auc": m["auc"]}
    return out


# ================================================================================================ reporting
def load_records(out: Path) -> dict[str, list[dict]]:
    """{row: [record, ...]} in seed order, from <out>/raw/ (`protocol.load_records`)."""
    return {row: list(by_seed.values()) for row, by_seed in load_raw_records(out).items()}


def mean_std(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def series(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in history if key in e and e[key] is not None]


def aggregate(records: dict[str, list[dict]]) -> dict:
    summary = {}
    for row, runs in records.items():
        entry = {"n": len(runs), "seeds": [r["seed"] for r in runs]}
        for branch, _ in BRANCHES:
            for metric in ("ciou", "auc"):
                values = [r["test"][branch][metric] for r in runs]
                mean, std = mean_std(values)
                entry[f"{branch}/{metric}"] = {"mean": mean, "std": std, "values": values}
        val_best, val_last, drops = [], [], []
        for r in runs:
            curve = series(r["log_history"], "val/fused/ciou")
            if curve:
                best, last = max(v for _, v in curve), curve[-1][1]
                val_best.append(best)
                val_last.append(last)
                drops.append(best - last)
        entry["val_fused_ciou_best"] = val_best
        entry["val_fused_ciou_last"] = val_last
        entry["val_drop_best_to_last"] = drops
        entry["best_step"] = [r["best_step"] for r in runs]
        entry["wall_s"] = [r["wall_s"] for r in runs]
        for key in ("train/admitted_fraction", "train/pl_ciou_a", "train/pl_ciou_b", "train/pl_ciou_admitted_a",
                    "train/pl_ciou_admitted_b", "train/consensus_mean"):
            firsts, lasts = [], []  # mean of the first / last half of the logged windows of stage 2
            for r in runs:
                s = [v for _, v in series(r["log_history"], key)]
                if s:
                    half = max(len(s) // 2, 1)
                    firsts.append(sum(s[:half]) / half)
                    lasts.append(sum(s[-half:]) / half)
            if firsts:
                entry[key] = {"first": firsts, "last": lasts}
        summary[row] = entry
    return summary


def table_rows(summary: dict, rows: list[tuple[str, str]]) -> list[str]:
    lines = ["| method | n | A CIoU | A AUC | B CIoU | B AUC | fused CIoU | fused AUC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row, label in rows:
        entry = summary.get(row)
        if entry is None:
            lines.append(f"| {label} | 0 | – | – | – | – | – | – |")
            continue
        cells = [fmt(entry[f"{b}/{m}"]["values"]) for b, _ in BRANCHES for m in ("ciou", "auc")]
        lines.append(f"| {label} | {entry['n']} | " + " | ".join(cells) + " |")
    return lines


def paired_deltas(records: dict[str, list[dict]], row: str, base: str, branch: str = "fused") -> list[float]:
    """Per-seed differences of test CIoU (same seed = same data order and, where shapes match, same init)."""
    mine = {r["seed"]: r["test"][branch]["ciou"] for r in records.get(row, [])}
    theirs = {r["seed"]: r["test"][branch]["ciou"] for r in records.get(base, [])}
    return [mine[s] - theirs[s] for s in sorted(mine) if s in theirs]


def write_report(out: Path, command: str | None = None) -> dict:
    """tables.md, summary.json and the figure from <out>/raw/."""
    out = Path(out)
    records = load_records(out)
    summary = aggregate(records)
    any_run = next((runs[0] for runs in records.values() if runs), None)
    lines = ["# Reproduction on the offline synthetic benchmark", ""]
    if command is None and (out / "tables.md").is_file():  # --report_only keeps the training command
        previous = [line for line in (out / "tables.md").read_text().splitlines() if line.startswith("Command: `")]
        command = previous[0][len("Command: `"):-1] if previous else None
    if command:
        lines += [f"Command: `{command}`", ""]
    if any_run is not None:
        a = any_run["training_args"]
        lines += [f"Per run: {a['max_train_steps']} steps (stage 1: {a['warmup_stage_steps']}), batch "
                  f"{a['train_batch_size']} labeled + {a['unlabeled_batch_size']} unlabeled, "
                  f"image {a['image_size']} px "
                  f"({a['image_size'] // 32}×{a['image_size'] // 32} maps), {a['clip_seconds']} s clips, backbones "
                  f"{a['image_backbone_a']}/{a['image_backbone_b']} + {a['audio_backbone_a']}/{a['audio_backbone_b']}, "
                  f"lr {a['learning_rate']:g} (pretrained backbones × {a['backbone_learning_rate_scale']:g}), "
                  f"{a['lr_scheduler_type']} schedule; model selection: best validation fused CIoU every "
                  f"{a['eval_steps']} steps; test split: {any_run.get('num_test_samples')} samples.", ""]
    lines += ["Test-split CIoU / AUC (%), mean ± sample std over seeds (n = number of seeds that finished; "
              "no ± when n = 1).", ""]
    for title, rows in TABLES:
        lines += [f"## {title}", "", *table_rows(summary, rows), ""]
        if title.startswith("Table 1") and (out / "raw" / "_trivial_baselines.json").is_file():
            trivial = json.loads((out / "raw" / "_trivial_baselines.json").read_text())
            lines += ["Chance level on the same test split (maps that ignore the input): " + "; ".join(
                f"{name} CIoU {v['ciou']:.1f}, AUC {v['auc']:.1f}" for name, v in trivial.items()) + ".", ""]

    lines += ["## Paired differences (test fused CIoU, per seed)", "",
              "| comparison | paper (Flickr-144k) | here: mean ± std (per-seed values) |", "| --- | --- | --- |"]
    for row, base, paper in (("xpl", "sup_only", "+4.6"), ("xpl", "hard_pl", "+6.9"),
                             ("xpl", "xpl-no_pl_ema", "> 0"), ("xpl", "xpl-no_cross_refine", "> 0"),
                             ("xpl", "xpl-no_sharpening", "> 0"), ("xpl", "xpl-no_data_selection", "> 0")):
        d = paired_deltas(records, row, base)
        values = ", ".join(f"{v:+.1f}" for v in d)
        lines.append(f"| {row} − {base} | {paper} | {fmt(d) if d else '–'} ({values}) |")
    lines.append("")

    lines += ["## Stability (validation fused CIoU over training)", "",
              "| row | n | best val CIoU | last val CIoU | drop best→last | best step |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row in ROWS:
        e = summary.get(row)
        if e:
            lines.append(f"| {row} | {e['n']} | {fmt(e['val_fused_ciou_best'])} | {fmt(e['val_fused_ciou_last'])} | "
                         f"{fmt(e['val_drop_best_to_last'])} | {', '.join(map(str, e['best_step']))} |")
    lines.append("")

    diag_keys = (("train/admitted_fraction", "admitted fraction"), ("train/consensus_mean", "consensus ρ"),
                 ("train/pl_ciou_a", "PL CIoU A"), ("train/pl_ciou_b", "PL CIoU B"),
                 ("train/pl_ciou_admitted_a", "PL CIoU A (admitted)"),
                 ("train/pl_ciou_admitted_b", "PL CIoU B (admitted)"))
    lines += ["## Diagnostics (stage 2: early → late = mean of the first → last half of its logged 5-step windows; "
              "mean over seeds)", "",
              "Pseudo-label CIoU: the pseudo-labels of the unlabeled batch scored against the true boxes that the "
              "synthetic unlabeled split keeps for diagnostics only (never used in a loss).", "",
              "| row | " + " | ".join(label for _, label in diag_keys) + " |",
              "| --- | " + " | ".join("---" for _ in diag_keys) + " |"]
    for row in ROWS:
        e = summary.get(row)
        if not e or not any(k in e for k, _ in diag_keys):
            continue
        cells = []
        for key, _ in diag_keys:
            if key in e:
                f, l_ = e[key]["first"], e[key]["last"]
                scale = 1.0
                cells.append(f"{sum(f) / len(f) * scale:.2f} → {sum(l_) / len(l_) * scale:.2f}"
                             if "fraction" in key or "consensus" in key else
                             f"{sum(f) / len(f):.1f} → {sum(l_) / len(l_):.1f}")
            else:
                cells.append("–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    if records:
        total = sum(r["wall_s"] for runs in records.values() for r in runs)
        lines += [f"Runs: {sum(len(v) for v in records.values())}, training + test wall time {total / 60:.1f} min "
                  f"in total (per run: {total / max(1, sum(len(v) for v in records.values())):.0f} s).", ""]
    lines += ["![validation CIoU, pseudo-label quality, admitted fraction](fig2d_validation.png)", ""]

    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if records:
        plot(records, out / "fig2d_validation.png")
    return summary


def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over runs at each step that every run logged."""
    per_run = [dict(series(r["log_history"], key)) for r in runs]
    per_run = [c for c in per_run if c]
    if not per_run:
        return [], [], []
    steps = sorted(set.intersection(*(set(c) for c in per_run)))
    means, stds = [], []
    for s in steps:
        m, sd = mean_std([c[s] for c in per_run])
        means.append(m)
        stds.append(sd or 0.0)
    return steps, means, stds


def plot(records: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    ax = axes[0]
    for row, style in (("xpl", "-"), ("hard_pl", "--"), ("sup_only", ":")):
        runs = records.get(row, [])
        steps, means, stds = mean_curve(runs, "val/fused/ciou")
        if steps:
            line, = ax.plot(steps, means, style, marker="o", ms=3, label=f"{row} (n={len(runs)})")
            ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.15)
    warm = next((r["training_args"]["warmup_stage_steps"] for runs in records.values() for r in runs), None)
    if warm:
        for a in axes:
            a.axvline(warm, color="grey", lw=0.8, ls="-.")
    ax.set_title("validation CIoU (fused) vs step (Fig. 2(d)); mean ± std")
    ax.set_xlabel("step")
    ax.set_ylabel("CIoU (%)")
    ax.legend(fontsize=8)

    ax = axes[1]
    for row, color in (("xpl", "C0"), ("hard_pl", "C1")):
        runs = records.get(row, [])
        for key, style in (("train/pl_ciou_a", "-"), ("train/pl_ciou_b", "--"), ("train/pl_ciou_admitted_a", ":")):
            steps, means, _ = mean_curve(runs, key)
            if steps:
                ax.plot(steps, means, style, color=color, label=f"{row} {key.split('/', 1)[1]}")
    ax.set_title("pseudo-label CIoU vs true boxes (unlabeled batches)")
    ax.set_xlabel("step")
    ax.set_ylabel("CIoU (%)")
    ax.legend(fontsize=7)

    ax = axes[2]
    for row in ("xpl", "xpl-no_data_selection", "xpl-no_cross_refine"):
        runs = records.get(row, [])
        steps, means, _ = mean_curve(runs, "train/admitted_fraction")
        if steps:
            ax.plot(steps, means, label=f"{row} admitted")
        steps, means, _ = mean_curve(runs, "train/consensus_mean")
        if steps and row == "xpl":
            ax.plot(steps, means, ":", label=f"{row} mean consensus ρ")
    ax.set_title("curriculum: admitted fraction, consensus")
    ax.set_xlabel("step")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args, passthrough = parse_args(argv)
    args.command = "python -m bench.reproduce_end_to_end " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.threads:  # before torch starts its pools; 1 avoids thrashing when another job shares the cores
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    if not args.report_only:
        run_grid(args, passthrough)
    summary = write_report(Path(args.out), command=None if args.report_only else args.command)
    print((Path(args.out) / "tables.md").read_text())
    missing = [(r, s) for s in args.seeds for r in args.rows if not raw_path(Path(args.out), r, s).is_file()]
    if missing and not args.report_only:
        print(f"[reproduce] {len(missing)} run(s) missing: {missing}; rerun the same command to continue.")
    del summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
