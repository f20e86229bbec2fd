"""Pseudo-label bank memory and per-step cost (quality bars: bank for 144k samples <= 64 MB; XPL overhead <= 10%).

    python -m bench.bank_memory [--samples 144000] [--batch 128] [--map 7] [--capacity 144000]

Fills a PseudoLabelBank with string ids (one visit each, in batches), then times steady-state steps of the
method's per-batch machinery on revisited ids: soft pseudo-labels, id hashing, bank update, Pearson consensus,
curriculum selection. Prints bytes (tensor storage, and process RSS growth after a warm-up) and milliseconds
per step. RSS growth also counts freed memory the allocator keeps (growth copies), hence the figure after
malloc_trim too. Run from the repository root (or with the package installed).
"""

import argparse
import ctypes
import gc
import json
import resource
import time

import torch

from xpl_hf.curriculum import CurriculumSelector
from xpl_hf.maps import pearson_consensus
from xpl_hf.pseudo_labels import PseudoLabelBank, soft_pseudo_labels


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=144_000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--map", type=int, default=7)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--capacity", type=int, default=0, help="preallocated rows (0: grow on demand)")
    args = ap.parse_args()
    torch.manual_seed(0)
    B, h = args.batch, args.map
    ids = [f"vggsound/{i:07d}_{i % 10:02d}0000" for i in range(args.samples)]  # realistic-length ids
    warm = PseudoLabelBank(map_size=h, merge_every=2 * B)  # first-use costs (thread pools, kernels) before RSS0
    for i in range(0, 10 * B, B):
        warm.update(ids[i:i + B], {"a": torch.rand(B, h, h), "b": torch.rand(B, h, h)})
    del warm
    gc.collect()
    rss0 = rss_bytes()
    bank = PseudoLabelBank(map_size=h, alpha=0.7, capacity=args.capacity)
    t0 = time.perf_counter()
    for i in range(0, len(ids), B):
        batch = ids[i:i + B]
        bank.update(batch, {"a": torch.rand(len(batch), h, h), "b": torch.rand(len(batch), h, h)})
    fill_s = time.perf_counter() - t0
    rss1 = rss_bytes()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed growth copies back to the OS
    rss2 = rss_bytes()
    sel = CurriculumSelector(window=2048, r0=0.2, rampup_steps=1000)
    maps_a, maps_b = torch.rand(B, h, h), torch.rand(B, h, h)
    times = []
    for step in range(args.steps):
        batch = [ids[j] for j in torch.randint(0, len(ids), (B,)).tolist()]
        t = time.perf_counter()
        ya, yb = soft_pseudo_labels(maps_a, 0.1), soft_pseudo_labels(maps_b, 0.1)
        bank.update(batch, {"a": ya, "b": yb})
        sel.select(pearson_consensus(maps_a, maps_b), step)
        times.append(time.perf_counter() - t)
    times.sort()
    report = {
        "samples": len(bank), "capacity": bank.labels.shape[0], "map": f"{h}x{h}", "models": 2,
        "bank_nbytes": bank.nbytes(), "bank_MiB": round(bank.nbytes() / 2**20, 2),
        "label_bytes_used": len(bank) * 2 * h * h * 2,
        "rss_growth_MiB": round((rss1 - rss0) / 2**20, 2),
        "rss_growth_MiB_after_malloc_trim": round((rss2 - rss0) / 2**20, 2),
        "fill_s": round(fill_s, 2),
        "step_ms_median": round(1e3 * times[len(times) // 2], 3),
        "step_ms_p90": round(1e3 * times[int(len(times) * 0.9)], 3),
        "batch": B,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
