"""Training throughput of the real recipe: N steps of train_xpl.py's loop on a generated benchmark.

    python -m bench.train_throughput                      # CPU rehearsal: tiny model and data, a few steps
    python -m bench.train_throughput --preset h100        # the paper's setting on one GPU (H100/A100 class)
    python -m bench.train_throughput --preset h100 --steps 200 --num_workers 12 --mixed_precision no

Presets (any option below overrides them):

| preset | model | inputs | batch (labelled + unlabelled) | precision | loader workers | steps |
| --- | --- | --- | --- | --- | --- | --- |
| cpu (default) | ResNet-18 x 2, D = 32, VGGish FC 64 | 64 px, 1 s clips | 4 + 4 | fp32 | 0 | 12 |
| h100 | ResNet-18 x 2, D = 512 (the paper's) | 224 px, 3 s clips | 32 + 32 | bf16 | 8 | 100 |

The benchmark is generated once into --data_dir (224 px / 3 s for h100; reused when present). The run calls
`train_xpl.main` unchanged (two stages: --warmup_stage_steps labelled-only steps, then labelled + unlabelled with
pseudo-labels, PL-EMA bank and curriculum) with `--logging_steps 1`, and reads what the recipe itself logs every
step: `train/step_seconds` (wall clock per step) and `train/data_wait_seconds` (the loop blocked in `next()` of its
loaders). Logging every step reads the logged values on the host each step, so the step time includes waiting for
the GPU. Printed, over the stage-2 steps after a warm-up (the first --skip_steps steps):

- samples/s (labelled + unlabelled samples per second of wall clock),
- step time (median, p90) split into data wait and the rest (host work, kernel launches, GPU time),
- GPU utilisation (mean of `torch.cuda.utilization()` or `nvidia-smi`, sampled every 0.5 s over the whole run:
  setup and the final evaluation included, so a lower bound of the loop's) and peak GPU memory.

A step with a large data wait means the loaders are the bottleneck (raise --num_workers); a GPU utilisation well
below 90 % with a small data wait means host overhead. The final evaluation is outside the step times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

PRESETS = {
    "cpu": dict(image_size=64, clip_seconds=1.0, embed_dim=32, vggish_fc_dim=64, batch=4, mixed_precision="no",
                num_workers=0, steps=12, warmup_stage_steps=2, skip_steps=3, num_labeled=32, num_unlabeled=64),
    "h100": dict(image_size=224, clip_seconds=3.0, embed_dim=512, vggish_fc_dim=4096, batch=32, mixed_precision="bf16",
                 num_workers=8, steps=100, warmup_stage_steps=10, skip_steps=20, num_labeled=512, num_unlabeled=2048),
}


class GpuSampler(threading.Thread):
    """Samples GPU utilisation (%) every `period` seconds: torch.cuda.utilization(), else nvidia-smi."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.samples, self.running = period, [], True

    @staticmethod
    def read() -> float | None:
        try:
            return float(torch.cuda.utilization())
        except Exception:  # pynvml missing: ask nvidia-smi
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", str(torch.cuda.current_device())], capture_output=True, text=True,
                                     timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except Exception:
                return None

    def run(self):
        while self.running:
            value = self.read()
            if value is None:
                return
            self.samples.append((time.perf_counter(), value))
            time.sleep(self.period)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="cpu or h100 (the paper's setting); default: h100 when a GPU is present, else cpu")
    for name in ("image_size", "embed_dim", "vggish_fc_dim", "batch", "num_workers", "steps", "warmup_stage_steps",
                 "skip_steps", "num_labeled", "num_unlabeled"):
        parser.add_argument(f"--{name}", type=int)
    parser.add_argument("--clip_seconds", type=float)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "xpl-throughput-data"))
    parser.add_argument("--output_dir", default=None, help="run folder (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    preset = args.preset or ("h100" if torch.cuda.is_available() else "cpu")
    for key, value in PRESETS[preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.preset = preset
    if args.skip_steps < args.warmup_stage_steps:
        args.skip_steps = args.warmup_stage_steps  # measure stage 2 only
    if args.steps <= args.skip_steps + 1:
        parser.error(f"--steps {args.steps} leaves no measured step after --skip_steps {args.skip_steps}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from accelerate.state import AcceleratorState

    import train_xpl
    from xpl_hf.data.synthetic import generate_benchmark

    data = Path(args.data_dir) / f"{args.image_size}px-{args.clip_seconds:g}s-{args.num_labeled}-{args.num_unlabeled}"
    started = time.perf_counter()
    generate_benchmark(str(data), num_labeled=args.num_labeled, num_unlabeled=args.num_unlabeled, num_validation=16,
                       num_test=16, image_size=args.image_size, clip_seconds=args.clip_seconds, seed=0,
                       progress=False, num_workers=min(os.cpu_count() or 1, 8))
    generation_s = time.perf_counter() - started
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="xpl-throughput-"))
    never = str(10 * args.steps)
    argv_main = [
        "--dataset", str(data), "--output_dir", str(output_dir),
        "--image_size", str(args.image_size), "--clip_seconds", str(args.clip_seconds),
        "--embed_dim", str(args.embed_dim), "--vggish_fc_dim", str(args.vggish_fc_dim),
        "--image_backbone_a", "resnet18", "--image_backbone_b", "resnet18", "--pretrained_backbones", "false",
        "--train_batch_size", str(args.batch), "--unlabeled_batch_size", str(args.batch),
        "--mixed_precision", args.mixed_precision, "--dataloader_num_workers", str(args.num_workers),
        "--max_train_steps", str(args.steps), "--warmup_stage_steps", str(args.warmup_stage_steps),
        "--lr_warmup_steps", "0", "--logging_steps", "1", "--eval_steps", never, "--checkpointing_steps", never,
        "--save_final_checkpoint", "false", "--grad_share_steps", "0",
        "--eval_batch_size", "16", "--eval_max_samples", "16", "--report_to", "none", "--shuffle_buffer", "64",
    ]
    import datasets

    # A streamed pass that shuffles ends with a 5 s sleep in `datasets` (an Arrow thread-shutdown workaround): once
    # per unlabelled epoch in a real run (thousands of steps), but it would dominate a window of a few dozen steps.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    sampler = GpuSampler() if torch.cuda.is_available() else None
    if sampler is not None:
        torch.cuda.reset_peak_memory_stats()
        sampler.start()
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        train_xpl.main(argv_main)
        log = json.loads((output_dir / "training_log.json").read_text())
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        if sampler is not None:
            sampler.running = False
        if args.output_dir is None:
            shutil.rmtree(output_dir, ignore_errors=True)

    per_step = {e["step"]: e for e in log if "train/step_seconds" in e}  # step k = the k-th update (1-based)
    measured = [per_step[k] for k in range(args.skip_steps + 1, args.steps + 1) if k in per_step]
    steps = [e["train/step_seconds"] for e in measured]
    data_wait = [e["train/data_wait_seconds"] for e in measured]
    samples_per_step = 2 * args.batch
    total = sum(steps)
    result = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "setting": f"{args.image_size} px, {args.clip_seconds:g} s clips, ResNet-18 x 2, D={args.embed_dim}, batch "
                   f"{args.batch}+{args.batch}, {args.mixed_precision}, {args.num_workers} loader workers",
        "measured_steps": len(steps),
        "samples_per_s": round(samples_per_step * len(steps) / total, 1),
        "step_ms_median": round(1000 * statistics.median(steps), 1),
        "step_ms_p90": round(1000 * sorted(steps)[max(0, math.ceil(0.9 * len(steps)) - 1)], 1),  # nearest rank
        "data_wait_ms_median": round(1000 * statistics.median(data_wait), 1),
        "data_wait_share": round(sum(data_wait) / total, 3),
        "step_ms": [round(1000 * t, 1) for t in steps],
        "data_wait_ms": [round(1000 * t, 1) for t in data_wait],
        "benchmark_generation_s": round(generation_s, 1),
    }
    if sampler is not None:
        util = [v for _, v in sampler.samples]
        result["gpu_utilization_mean"] = round(statistics.mean(util), 1) if util else None
        result["gpu_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"{result['device']}: {result['setting']}")
    print(f"{result['samples_per_s']} samples/s over {len(steps)} stage-2 steps; step {result['step_ms_median']} ms "
          f"median ({result['step_ms_p90']} p90), of which data wait {result['data_wait_ms_median']} ms median "
          f"({100 * result['data_wait_share']:.0f}% of all the time: loader stalls, e.g. a shuffle buffer refilling "
          "at an epoch start, count here)"
          + (f"; GPU utilisation {result['gpu_utilization_mean']}%, peak memory {result['gpu_peak_memory_gib']} GiB"
             if sampler is not None else ""))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
