"""Data pipeline throughput: samples/s per process for decode + both branches' preprocessing.

Per sample: decode a 224 x 224 JPEG and a 3 s WAV (16 kHz, 16-bit), build branch A's and branch B's image inputs
(training: two independently drawn colour RandAugments; evaluation: one shared tensor), the VGGish log-mel
examples (16 kHz) and the SoundNet waveform (22.05 kHz), and the 224 x 224 ground-truth map, then collate into
batches -- exactly what ``XPLCollator`` does inside a DataLoader worker. One process, one torch thread.
Quality bar: >= 500 samples per CPU-second for the training transform. CPU time (``time.process_time``) is less
distorted by other processes than the wall clock, but on a shared machine it still varies by 20-30% between runs
(caches, frequency): compare versions by interleaving runs of both on the same machine and quote the ratio.

    python -m bench.data_throughput [--num_samples 512] [--batch_size 32] [--image_size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from xpl_hf.data.synthetic import SyntheticConfig, generate_sample
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.processing_xpl import XPLProcessor

TARGET = 500  # samples per CPU-second


def measure(collate: XPLCollator, rows: list[dict], batch_size: int, repeats: int) -> tuple[list[float], list[float]]:
    """(wall-clock rates, CPU-time rates) in samples/s over ``repeats`` passes."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i : i + batch_size])
            assert batch is not None
        wall.append(len(rows) / (time.perf_counter() - start))
        cpu.append(len(rows) / (time.process_time() - start_cpu))
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_samples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = SyntheticConfig(image_size=args.image_size)
    t0 = time.perf_counter()
    rows = [generate_sample(config, "labeled", i) for i in range(args.num_samples)]
    gen_rate = args.num_samples / (time.perf_counter() - t0)
    processor = XPLProcessor(image_size=args.image_size)
    mean_jpeg = sum(len(r["image"]["bytes"]) for r in rows) // len(rows)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads 1",
        "image": f"{args.image_size}x{args.image_size} JPEG ({mean_jpeg} B)",
        "audio": "3 s WAV 16 kHz PCM_16",
        "synthetic_generation_samples_per_s": round(gen_rate, 1),
    }
    for name, train in (("train", True), ("eval", False)):
        collate = XPLCollator(processor, train=train)
        measure(collate, rows[: args.batch_size], args.batch_size, 1)  # warm-up
        wall, cpu = measure(collate, rows, args.batch_size, args.repeats)
        results[f"{name}_samples_per_s_wall"] = round(statistics.median(wall), 1)
        results[f"{name}_samples_per_cpu_s"] = round(statistics.median(cpu), 1)
        results[f"{name}_wall_all"] = [round(r, 1) for r in wall]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results["load_average_1min"] = round(load, 2)
    for name in ("train", "eval"):
        rate = results[f"{name}_samples_per_cpu_s"]
        verdict = "meets" if rate >= TARGET else "BELOW"
        print(f"{name:5s} transform: {rate:7.1f} samples per CPU-second ({verdict} the {TARGET} per CPU-second "
              f"target); wall clock {results[f'{name}_samples_per_s_wall']:.1f} samples/s at load average {load:.2f}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
