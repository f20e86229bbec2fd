"""Endless, resumable training data: labelled batches by index, the streamed unlabelled split, seeded augmentation.

Resuming a run reproduces the uninterrupted run's batches: the labelled order is a function of (seed, epoch), the
unlabelled stream of (seed, epoch, rows consumed), and every augmentation of (seed, the batch's ids).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import torch

__all__ = ["sample_seed", "SeededCollate", "LabeledBatches", "UnlabeledStream", "concat_batches", "advance"]


def sample_seed(*parts) -> int:
    """A stable 31-bit seed from any values (crc32 of their text), the same in every process and run."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


class SeededCollate:
    """Wraps a collate function so its random augmentations depend only on (seed, the batch's ids).

    This makes batches reproducible after a resume whatever the worker scheduling, without touching the caller's
    global RNG state.
    """

    def __init__(self, collate, seed: int):
        self.collate, self.seed = collate, seed

    def __call__(self, examples):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, *(e.get("id") for e in examples)))
            return self.collate(examples)


class LabeledBatches:
    """Endless, resumable batches of indices over a map-style dataset.

    Epoch e uses the permutation `randperm(n, seed + e)`; process r takes positions r, r + world, ... of it and
    cuts them into batches of `batch_size` (drop_last). The position (epoch, batch) is what a checkpoint stores.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        per_rank = num_rows // world_size
        if per_rank < batch_size:
            raise ValueError(f"{num_rows} labeled rows over {world_size} process(es) cannot fill one batch of "
                             f"{batch_size}; lower --train_batch_size.")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch = 0, 0
        self.batches_per_epoch = per_rank // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            mine = torch.randperm(self.num_rows, generator=g)[self.rank::self.world_size].tolist()
            while self.batch < self.batches_per_epoch:
                start = self.batch * self.batch_size
                self.batch += 1
                yield mine[start:start + self.batch_size]
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class UnlabeledStream:
    """Endless, resumable batches from a streamed split (this process's shard, shuffled per epoch).

    Resume: the stream of epoch e is rebuilt from the same seed and the rows this process already consumed are
    skipped (`IterableDataset.skip`, no decoding), so the continuation is exact with or without a shuffle buffer
    (the buffer is seeded), when the loader has no worker processes. With workers, each worker reads its own shards,
    and the continuation is approximate.

    Args:
        make_stream: `epoch -> datasets.IterableDataset` of raw rows for this process.
        make_loader: `IterableDataset -> iterable of collated batches`.
    """

    def __init__(self, make_stream, make_loader):
        self.make_stream, self.make_loader = make_stream, make_loader
        self.epoch, self.consumed = 0, 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            stream = self.make_stream(self.epoch)
            if self.consumed:
                stream = stream.skip(self.consumed)
            produced = False
            for batch in self.make_loader(stream):
                produced = True
                if batch is None:  # every row of the batch was bad (and skipped with a warning)
                    continue
                self.consumed += len(batch["ids"])
                yield batch
            if not produced and self.consumed == 0:
                raise ValueError("the unlabeled stream is empty on this process: check --unlabeled_split, or use "
                                 "--method sup_only.")
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


def concat_batches(labeled: dict, unlabeled: dict) -> dict:
    """One forward pass over labeled + unlabeled samples (shared BatchNorm statistics, one DDP all-reduce)."""
    out = {}
    for key, value in labeled.items():
        other = unlabeled.get(key)
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([value, other]) if other is not None else value
        elif isinstance(value, list):
            out[key] = value + list(other)
    if "true_gt_maps" in unlabeled:  # diagnostics: labeled rows get their own ground truth
        out["true_gt_maps"] = torch.cat([labeled["gt_maps"], unlabeled["true_gt_maps"]])
    return out


def advance(start: dict, batches: int, per_epoch: int) -> dict:
    """Labeled position after `batches` more batches from `start` ({epoch, batch})."""
    total = start["epoch"] * per_epoch + start["batch"] + batches
    return {"epoch": total // per_epoch, "batch": total % per_epoch}


class DropLabels:
    """Row map for the unlabelled split: whatever boxes a row carries never reach a loss.

    A fully annotated set split 10% / 90% to simulate semi-supervision (the paper's protocol) has boxes in its
    "unlabelled" rows; training on them would turn every semi-supervised method into full supervision. Each row's
    ``boxes`` move to ``true_boxes`` (kept for the pseudo-label diagnostics only) and its ``gt_rule`` becomes
    ``"none"``. The first such row is reported once in the log.

    Use: ``stream.map(DropLabels())``.
    """

    def __init__(self, logger=None):
        self.logger, self.reported = logger, False

    def __call__(self, row: dict) -> dict:
        boxes = row.get("boxes") or []
        rule = row.get("gt_rule") or "none"
        if not boxes and rule == "none":
            return row
        if not self.reported and self.logger is not None:
            self.logger.warning(f"the unlabelled split carries boxes (e.g. sample {row.get('id')!r}); they are dropped "
                                "from every loss and kept only for the pseudo-label diagnostics")
            self.reported = True
        true_boxes = row.get("true_boxes")
        return {**row, "boxes": [], "gt_rule": "none", "true_boxes": boxes if true_boxes is None else true_boxes,
                "true_gt_rule": rule if rule != "none" else "union"}
