"""bench/reproduce_end_to_end.py: tables, paired differences and the figure from fake run records (no training)."""

import json
from pathlib import Path

from bench_modules import load


def load_script():
    return load("reproduce_end_to_end")


def fake_record(row: str, seed: int, fused_ciou: float) -> dict:
    history = []
    for step in (10, 20, 30):
        entry = {"step": step, "train/loss": 1.0}
        if row.startswith("xpl") or row == "hard_pl":
            entry.update({"train/admitted_fraction": 0.2 + step / 100, "train/consensus_mean": 0.5,
                          "train/pl_ciou_a": step / 2, "train/pl_ciou_b": step / 3, "train/pl_ciou_admitted_a": step})
        history.append(entry)
        history.append({"step": step, "val/fused/ciou": fused_ciou + step / 10 + seed, "val/fused/auc": 30.0})
    metrics = {"ciou": fused_ciou + seed, "auc": 30.0 + seed}
    args = {"max_train_steps": 30, "warmup_stage_steps": 10, "train_batch_size": 8, "unlabeled_batch_size": 8,
            "image_size": 96, "clip_seconds": 1.0, "image_backbone_a": "efficientnet_lite0",
            "image_backbone_b": "efficientnet_lite0", "audio_backbone_a": "vggish", "audio_backbone_b": "soundnet8",
            "learning_rate": 1e-3, "backbone_learning_rate_scale": 1.0, "lr_scheduler_type": "cosine", "eval_steps": 10}
    return {"row": row, "seed": seed, "wall_s": 60.0, "best_step": 30, "num_test_samples": 300,
            "test": {"a": metrics, "b": metrics, "fused": metrics}, "train_argv": [], "training_args": args,
            "log_history": history}


def test_report_from_fake_runs(tmp_path):
    reproduce = load_script()
    out = tmp_path / "results"
    runs = {"xpl": [0, 1, 2], "sup_only": [0, 1], "hard_pl": [0], "xpl-no_pl_ema": [0, 1, 2]}
    for row, seeds in runs.items():
        for seed in seeds:
            path = reproduce.raw_path(out, row, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(fake_record(row, seed, {"xpl": 20.0, "sup_only": 15.0}.get(row, 10.0))))
    (out / "raw" / "_trivial_baselines.json").write_text(json.dumps({"whole image": {"ciou": 0.0, "auc": 25.0}}))

    summary = reproduce.write_report(out, command="python -m bench.reproduce_end_to_end --quick")
    tables = (out / "tables.md").read_text()
    assert "`python -m bench.reproduce_end_to_end --quick`" in tables
    # xpl: seeds 0, 1, 2 -> 20, 21, 22: mean 21.0, sample std 1.0; n is stated per row
    assert "| **XPL** (soft, sharpened, PL-EMA, cross, curriculum) | 3 | 21.0 ± 1.0 |" in tables
    assert "| Hard pseudo-labels (vanilla self-training) | 1 | 10.0 | 30.0 |" in tables  # n = 1: no ±
    assert "| Self-supervised (L_avc, EZ-VSL-like) | 0 | – |" in tables  # not run: says so
    assert "whole image CIoU 0.0" in tables
    # paired per-seed differences: xpl - sup_only on seeds 0, 1 -> +5, +5
    assert "| xpl − sup_only | +4.6 | 5.0 ± 0.0 (+5.0, +5.0) |" in tables
    for title in ("Table 1", "Table 2(b)", "Table 2(c)", "Stability", "Diagnostics"):
        assert title in tables
    assert summary["xpl"]["n"] == 3 and summary["xpl"]["fused/ciou"]["mean"] == 21.0
    assert summary["xpl"]["train/admitted_fraction"]["last"] == [0.5, 0.5, 0.5]
    assert (out / "fig2d_validation.png").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["sup_only"]["n"] == 2


def test_arguments_quick_and_seeds():
    reproduce = load_script()
    args, passthrough = reproduce.parse_args(["--quick", "--", "--learning_rate", "1e-4"])
    assert args.rows == reproduce.QUICK_ROWS and args.seeds == [0]
    assert passthrough[-2:] == ["--learning_rate", "1e-4"]  # after the preset's trainer options: it wins
    assert passthrough[:-2] == reproduce.PRESETS["cpu"]["train_extra"]
    args, _ = reproduce.parse_args(["--quick", "--with_ceiling"])
    assert args.rows == [*reproduce.QUICK_ROWS, "full_supervision"]
    args, _ = reproduce.parse_args(["--seeds", "2,", "--rows", "xpl,hard_pl", "--steps", "30"])
    assert args.seeds == [2] and args.rows == ["xpl", "hard_pl"] and args.warmup_stage_steps == 10
    args, _ = reproduce.parse_args([])
    assert len(args.rows) == 13 and args.seeds == [0, 1, 2] and "full_supervision" not in args.rows
    assert (args.steps, args.warmup_stage_steps, args.image_size) == (144, 48, 128)
    args, passthrough = reproduce.parse_args(["--preset", "h100"])
    assert (args.image_size, args.clip_seconds, args.image_size // 32) == (224, 3.0, 7) and "bf16" in passthrough
    argv = reproduce.train_argv(args, "xpl-alpha0.3", 1, Path("o"), [])
    assert argv[argv.index("--pl_ema_alpha") + 1] == "0.3" and argv[argv.index("--seed") + 1] == "1"
