"""Validate candidates in parallel and write them as parquet shards that survive a kill and never repeat a row.

Shards. Each split's accepted candidates (in the converter's order; archive members in the order of their bytes in
the archive) are cut into ``T`` contiguous blocks, one shard each: ``data/<split>-<j>-of-<T>.parquet``. With
``num_shards=N`` (machines) and ``shard_index=I``, ``T`` is a multiple of ``N`` and this machine writes blocks
``I*T/N`` to ``(I+1)*T/N - 1`` only: N machines given the same inputs split one conversion, and copying their
``data/`` folders together gives the complete dataset. A split never gets more shards than rows, nor more than
:data:`~xpl_hf.data.shards.MAX_SHARDS_PER_SPLIT`.

Parts. A shard's name says the set it belongs to (``-of-<T>``). The dataset card is written once the folder holds
every shard of every split; until then a part says which shards are missing, and the loaders
(:func:`xpl_hf.data.load_labeled`, ...) refuse an incomplete split naming them. When every part is in, ``python -m
xpl_hf.data.convert card --output DIR`` writes the card.

Copies. A candidate with ``copy_of`` (VGG-SS's heard/unheard splits repeat test rows) is not decoded again: its
split is written after the others, one shard per machine, from the rows this machine wrote for the source split.

Resume. A shard is written to a temporary file, then moved into place (``os.replace``); then its record (the ids it
holds, the problems of its samples, a fingerprint of its inputs and options) is written to
``.convert/<shard>.json`` the same way. A rerun skips every shard whose record matches and whose file is intact,
and rewrites the others under the same names: a killed conversion resumes where it stopped, and a rerun never
duplicates a row. A complete conversion (``num_shards=1``) removes the shards of an earlier conversion of the same
splits that are no longer part of this one (another shard count); a part (``num_shards > 1``) never removes a shard:
it refuses to start when the folder holds shards of its splits from a conversion into another number of shards
(another machine's part, or a stale one: the message names them). Other splits in the folder are left as they are.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from datasets import Features, Image, List

from ..schema import DataValidationError, xpl_features
from ..shards import (
    DATA_DIR,
    MAX_SHARDS_PER_SPLIT,
    list_splits,
    missing_shards,
    open_shard,
    shard_path,
    write_dataset_card,
    write_shard,
)
from .archive import MEMORY_BUDGET, SPOOL_BYTES, ArchiveMember, ArchiveReader, remove_tree
from .report import REPORT_NAME, ConversionReport
from .rows import build_row
from .samples import MAX_AUDIO_BYTES, MAX_IMAGE_BYTES, MAX_VIDEO_BYTES, Candidate, ClipOptions, RowResult, split_problem

logger = logging.getLogger(__name__)

STATE_DIR = ".convert"
ROWS_PER_SHARD = 1000
"""Default shard size: a split gets ``ceil(rows / ROWS_PER_SHARD)`` shards."""
SPOOL_DISK_BUDGET = 16 * 2**30
"""Most bytes of temporary copies of large archive members on disk at once (under ``OUT/.convert/``)."""


def features_for(options: ClipOptions, with_objects: bool = False) -> Features:
    """The schema of the rows written with ``options`` (adds ``frames`` when K > 1) and, with ``with_objects``, the
    optional ``objects`` column (every split of a conversion whose annotations list objects for some sample)."""
    features = xpl_features(with_objects=with_objects)
    if options.frames_per_clip > 1:
        features["frames"] = List(Image())
    return features


def _refuse(report: ConversionReport, c: Candidate, reason: str, detail: str, strict: bool) -> None:
    if strict:
        raise DataValidationError(f"sample {c.id!r} (split {c.split!r}): {reason}: {detail} (--strict)")
    report.skip(reason, c.id, detail, c.split)


def _sort_key(c: Candidate) -> tuple:
    ref = next(iter(c.media()), None)
    return (ref.archive, ref.offset) if isinstance(ref, ArchiveMember) else ("", 0)


def _fingerprint(kind: str, options: ClipOptions, features: Features, block: Sequence[Candidate]) -> str:
    h = hashlib.sha256(json.dumps([kind, repr(options), sorted(features)]).encode())
    for c in block:
        h.update(json.dumps([c.id, c.split, [str(m) for m in c.media()], c.time, c.boxes, c.gt_rule, c.label,
                             c.notes, c.objects], default=str).encode())
        for m in c.media():  # a file or archive replaced since is converted again
            path = m.archive if isinstance(m, ArchiveMember) else m
            if os.path.exists(path):
                st = os.stat(path)
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@dataclasses.dataclass
class _Job:
    """One sample's work: ``args`` of :func:`build_row`, the archive bytes it holds in memory (``nbytes``) and the
    temporary copies of large members it reads (``files``, ``disk`` bytes; deleted when its result is back)."""

    args: tuple
    nbytes: int = 0
    files: list[str] = dataclasses.field(default_factory=list)
    disk: int = 0

    def done(self) -> None:
        for path in self.files:
            if os.path.exists(path):
                os.remove(path)


def _ordered_map(fn: Callable, jobs: Iterable[_Job], num_workers: int, max_pending: int,
                 memory_budget: int = MEMORY_BUDGET, disk_budget: int = SPOOL_DISK_BUDGET) -> Iterator[Any]:
    """``fn(*job.args)`` for each job, in order; in ``num_workers`` processes with at most ``max_pending`` jobs,
    ``memory_budget`` bytes of archive members and ``disk_budget`` bytes of temporary copies in flight (a job is
    always let through when nothing else is in flight). Each job's temporary copies are deleted once its result is
    back."""
    if num_workers <= 1:
        for job in jobs:
            try:
                yield fn(*job.args)
            finally:
                job.done()
        return
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context, initializer=_worker_init) as pool:
        pending: collections.deque = collections.deque()
        memory = disk = 0

        def oldest() -> Any:
            nonlocal memory, disk
            job, future = pending.popleft()
            memory, disk = memory - job.nbytes, disk - job.disk
            try:
                return future.result()
            finally:
                job.done()

        try:
            for job in jobs:
                while pending and (len(pending) >= max_pending or memory + job.nbytes > memory_budget
                                   or disk + job.disk > disk_budget):
                    yield oldest()
                pending.append((job, pool.submit(fn, *job.args)))
                memory, disk = memory + job.nbytes, disk + job.disk
            while pending:
                yield oldest()
        finally:
            for _job, future in pending:
                future.cancel()


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: no nested thread pools


class _Plan:
    """The shards of one split: blocks of candidates, the total ``T`` and the ones this machine writes."""

    def __init__(self, split: str, items: list[Candidate], per_split: int | None, num_shards: int, shard_index: int):
        wanted = min(per_split or math.ceil(len(items) / ROWS_PER_SHARD), len(items), MAX_SHARDS_PER_SPLIT)
        wanted = max(1, wanted)  # at most one shard per row: more would be empty files
        self.per_part = max(1, math.ceil(wanted / num_shards))
        self.total = self.per_part * num_shards
        bounds = [round(i * len(items) / self.total) for i in range(self.total + 1)]
        self.split = split
        self.blocks = {j: items[bounds[j]:bounds[j + 1]]
                       for j in range(shard_index * self.per_part, (shard_index + 1) * self.per_part)}


def _record_path(output: str, path: str) -> str:
    return os.path.join(output, STATE_DIR, os.path.basename(path) + ".json")


def _load_record(output: str, path: str, fingerprint: str) -> dict | None:
    """The record of a finished shard, or None when the shard must be (re)written."""
    try:
        with open(_record_path(output, path)) as f:
            record = json.load(f)
        if record.get("fingerprint") != fingerprint:
            return None
        if open_shard(path).metadata.num_rows != len(record["ids"]):
            raise ValueError(f"{path} holds a different number of rows than its record")
    except (OSError, ValueError, KeyError):
        if os.path.exists(path):
            logger.warning("rewriting shard %s (missing, corrupt or from other inputs)", path)
        return None
    return record


def _save_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def _jobs(blocks: Iterable[list[Candidate]], options: ClipOptions, spool: str) -> Iterator[_Job]:
    """One :class:`_Job` per candidate; its archive members are read here, in order: members up to
    :data:`~.archive.SPOOL_BYTES` into memory, larger ones copied in chunks to a temporary file in ``spool``
    (``loaded`` maps a member to its bytes or to that file's path); members over their kind's size limit are not
    read (:func:`build_row` refuses them from their size)."""
    copies = itertools.count()
    with ArchiveReader() as reader:
        for block in blocks:
            for c in block:
                job = _Job((c, {}, options))
                for m, limit in ((c.video, MAX_VIDEO_BYTES), (c.image, MAX_IMAGE_BYTES), (c.audio, MAX_AUDIO_BYTES)):
                    if not isinstance(m, ArchiveMember) or m.size > limit:
                        continue
                    if m.size > SPOOL_BYTES:
                        path = os.path.join(spool, f"{next(copies)}-{os.path.basename(m.name)}")
                        job.files.append(path)
                        reader.copy_to(m, path)
                        job.args[1][str(m)], job.disk = path, job.disk + m.size
                    else:
                        job.args[1][str(m)], job.nbytes = reader.read(m), job.nbytes + m.size
                yield job


def _remove_leftovers(path: str) -> None:
    """Delete the temporary files a killed writer of this shard left (``.<shard>.<pid>.tmp``)."""
    folder, name = os.path.split(path)
    for leftover in os.listdir(folder):
        if leftover.startswith(f".{name}.") and leftover.endswith(".tmp"):
            os.remove(os.path.join(folder, leftover))


def _stale_shards(output: str, keep: set[str], splits_done: set[str]) -> list[str]:
    """Shard files of this conversion's splits that are not part of it (``keep``: its shard names)."""
    data = os.path.join(output, DATA_DIR)
    names = sorted(os.listdir(data)) if os.path.isdir(data) else []
    return [n for n in names if n.endswith(".parquet") and n not in keep and n.rsplit("-", 3)[0] in splits_done]


def _remove_stale(output: str, stale: list[str]) -> None:
    """Delete the shards (and records) an earlier complete conversion of these splits left (other shard counts);
    other splits are left alone, so two converters may write different splits into one folder."""
    for name in stale:
        logger.warning("removing %s: a shard of an earlier conversion into %s", name, output)
        os.remove(os.path.join(output, DATA_DIR, name))
        record = _record_path(output, name)
        if os.path.exists(record):
            os.remove(record)


def write_dataset(
    candidates: Sequence[Candidate],
    output: str,
    kind: str,
    *,
    shards_per_split: dict[str, int] | int | None = None,
    num_workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    report: ConversionReport | None = None,
    options: ClipOptions | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    unique_across_splits: bool = True,
) -> ConversionReport:
    """Validate candidates, write this machine's shards of every split under ``output``, its report and the card.

    Args:
        shards_per_split: shards per split (an int for all, or a dict; default ``ceil(rows / 1000)``), rounded up
            to a multiple of ``num_shards``.
        num_workers: processes reading and validating media.
        strict: raise :class:`DataValidationError` naming the sample at the first problem (skipped or reported).
        options: how videos become rows (default :class:`ClipOptions`()).
        num_shards, shard_index: this machine converts part ``shard_index`` of ``num_shards`` (module docstring).
        unique_across_splits: ids must be unique over all splits (False: within each split; VGG-SS's heard/unheard
            splits repeat test ids).

    Raises:
        DataValidationError: ``output`` is a file; strict mode met a problem; or no row was written at all (the
            report is saved first: it says why).
    """
    if os.path.exists(output) and not os.path.isdir(output):
        raise DataValidationError(f"--output {output!r} is a file; give a folder (it is created if missing)")
    if not (isinstance(num_shards, int) and 1 <= num_shards <= MAX_SHARDS_PER_SPLIT and 0 <= shard_index < num_shards):
        raise ValueError(f"--num_shards must be in [1, {MAX_SHARDS_PER_SPLIT}] and --shard_index in [0, --num_shards); "
                         f"got {shard_index} of {num_shards}")
    for value in (shards_per_split.values() if isinstance(shards_per_split, dict) else [shards_per_split]):
        if value is not None and not (isinstance(value, int) and 1 <= value <= MAX_SHARDS_PER_SPLIT):
            raise ValueError(f"--shards_per_split must be an integer in [1, {MAX_SHARDS_PER_SPLIT}], got {value!r}")
    report = report or ConversionReport(kind)
    options = options or ClipOptions()
    by_split = _accept(candidates, report, strict, num_shards, shard_index, unique_across_splits)
    copies = {split: items for split, items in by_split.items() if items[0].copy_of}
    plans = []
    for split, items in by_split.items():
        if split in copies:
            continue
        per_split = shards_per_split.get(split) if isinstance(shards_per_split, dict) else shards_per_split
        plans.append(_Plan(split, sorted(items, key=_sort_key), per_split, num_shards, shard_index))
    features = features_for(options, with_objects=any(c.objects is not None for c in candidates))
    os.makedirs(os.path.join(output, DATA_DIR), exist_ok=True)
    work = []  # (split, block, shard path, fingerprint) of the shards to (re)write
    for plan in plans:
        for j, block in plan.blocks.items():
            path = shard_path(output, plan.split, j, plan.total)
            fingerprint = _fingerprint(kind, options, features, block)
            record = _load_record(output, path, fingerprint)
            if record is None:
                work.append((plan.split, block, path, fingerprint))
            else:
                report.add_shard(record, plan.split)
    keep = {os.path.basename(shard_path(output, p.split, j, p.total)) for p in plans for j in range(p.total)}
    keep |= {os.path.basename(shard_path(output, split, j, num_shards)) for split in copies for j in range(num_shards)}
    stale = _stale_shards(output, keep, {p.split for p in plans} | set(copies))
    if stale and num_shards > 1:  # another machine's part, or a stale one: a part never deletes a shard
        shown = ", ".join(stale[:4]) + (" ..." if len(stale) > 4 else "")
        raise DataValidationError(f"{os.path.join(output, DATA_DIR)} holds {len(stale)} shard(s) of these splits from "
                                  f"a conversion into another number of shards ({shown}); this part (--shard_index "
                                  f"{shard_index} of --num_shards {num_shards}) writes other ones. Every machine "
                                  "must use the same --num_shards and --shards_per_split; if those shards are stale, "
                                  "remove them first")
    _remove_stale(output, stale)
    _write_shards(work, output, kind, features, options, report, num_workers, strict, progress,
                  total=sum(len(b) for p in plans for b in p.blocks.values()))
    for split, items in copies.items():
        _write_copies(output, split, items, {p.split: p for p in plans}, report, num_shards, shard_index, features)
    for plan in plans:  # splits whose every block is empty still get their counts
        report.written.setdefault(plan.split, 0)
        report.boxed.setdefault(plan.split, 0)
    name = REPORT_NAME if num_shards == 1 else REPORT_NAME.replace(".json", f"-{shard_index:05d}-of-{num_shards:05d}"
                                                                               ".json")
    report.save(os.path.join(output, name))
    if not sum(report.written.values()):
        reasons = ", ".join(f"{reason}: {len(ids)}" for reason, ids in report.skipped.items()) or "no sample"
        raise DataValidationError(f"{kind}: no row was written to {output}; skipped: {reasons} (every sample and "
                                  f"problem is in {os.path.join(output, name)})")
    incomplete = {split: problems for split in list_splits(output) if (problems := missing_shards(output, split))}
    if not incomplete:
        write_dataset_card(output, kind)
    else:  # other machines' parts are not in yet
        logger.warning("wrote part %d of %d into %s; no dataset card yet: %s. When every part is in, run `python -m "
                       "xpl_hf.data.convert card --output %s --source %s`", shard_index, num_shards, output,
                       "; ".join(f"split {s!r}: {'; '.join(p)}" for s, p in incomplete.items()), output, kind)
        report.extra["missing_shards"] = {s: p for s, p in incomplete.items()}
    return report


def _write_copies(output: str, split: str, items: list[Candidate], plans: dict[str, _Plan], report: ConversionReport,
                  num_shards: int, shard_index: int, features: Features) -> None:
    """Write ``split`` (one shard per machine) from the rows of the splits its candidates copy (``copy_of``) that this
    machine wrote, reading one source shard at a time; an id whose source row was skipped is reported."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array([c.id for c in items], pa.string())
    found: set[str] = set()
    local: set[str] = set()
    sources = [(plans[s], j, block) for s in dict.fromkeys(c.copy_of for c in items) if s in plans
               for j, block in plans[s].blocks.items()]

    def rows() -> Iterator[dict]:
        for plan, j, block in sources:
            local.update(c.id for c in block)
            table = open_shard(shard_path(output, plan.split, j, plan.total)).read()
            table = table.filter(pc.is_in(table["id"], value_set=wanted))
            for row in table.to_pylist():
                found.add(row["id"])
                yield row

    path = shard_path(output, split, shard_index, num_shards)
    write_shard(path, rows(), features)
    shard = ConversionReport(report.kind)
    for c in items:
        if c.id not in found and (num_shards == 1 or c.id in local):
            shard.skip(f"no {c.copy_of} row", c.id, f"its {c.copy_of} row was not written (see that split's "
                       "problem)", split)
    table = open_shard(path).read(columns=["id", "boxes"])
    record = {"fingerprint": "copy", "ids": table["id"].to_pylist(),
              "boxed": sum(bool(b) for b in table["boxes"].to_pylist()), "problems": shard.problems,
              "box_repairs": shard.boxes.as_dict(), "repaired_ids": []}
    _save_json(_record_path(output, path), record)
    report.add_shard(record, split, log=False)


def _accept(candidates: Sequence[Candidate], report: ConversionReport, strict: bool, num_shards: int,
            shard_index: int, unique_across_splits: bool) -> dict[str, list[Candidate]]:
    """The candidates without a known problem, by split; the others are reported (each by one machine)."""
    seen: set = set()
    by_split: dict[str, list[Candidate]] = collections.defaultdict(list)
    for i, c in enumerate(candidates):
        key = c.id if unique_across_splits else (c.split, c.id)
        problem = ("duplicate id", "the id was seen before; the first occurrence is kept") if key in seen else \
            c.problem or split_problem(c.split)
        seen.add(key)
        if not problem:
            by_split[c.split].append(c)
        elif i % num_shards == shard_index:
            _refuse(report, c, *problem, strict)
    return by_split


def _write_shards(work: list[tuple], output: str, kind: str, features: Features, options: ClipOptions,
                  report: ConversionReport, num_workers: int, strict: bool, progress: bool, total: int) -> None:
    """Build the rows of every block in ``work`` (in parallel) and write each block's shard and record."""
    todo = sum(len(block) for _, block, _, _ in work)
    workers = num_workers if todo >= 4 * num_workers else 1  # a pool costs more than a handful of clips
    seconds: dict[str, float] = collections.defaultdict(float)
    os.makedirs(os.path.join(output, STATE_DIR), exist_ok=True)
    spool = tempfile.mkdtemp(prefix="spool-", dir=os.path.join(output, STATE_DIR))
    try:
        results = _ordered_map(build_row, _jobs((block for _, block, _, _ in work), options, spool), workers,
                               max_pending=8 * workers)
        _write_blocks(work, results, output, kind, features, report, strict, progress, total, todo, seconds)
    finally:
        remove_tree(spool)
    if seconds:
        report.extra["seconds_per_stage"] = {k: round(v, 3) for k, v in seconds.items()}


def _write_blocks(work: list[tuple], results: Iterator[RowResult], output: str, kind: str, features: Features,
                  report: ConversionReport, strict: bool, progress: bool, total: int, todo: int,
                  seconds: dict[str, float]) -> None:
    """Consume the rows of every block in ``work`` (``results``, in order) and write each block's shard and record."""
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=total - todo, desc=kind, unit="clip", disable=not progress) as bar:
        for split, block, path, fingerprint in work:
            shard = ConversionReport(kind)
            rows: list[dict] = []
            for c in block:
                result: RowResult = next(results)
                bar.update()
                for stage, value in result.seconds.items():
                    seconds[stage] += value
                shard.boxes += result.box_report
                if result.row is None:
                    _refuse(shard, c, result.reason, result.detail, strict)
                    continue
                for reason, detail in [*c.notes, *result.notes]:
                    if strict:
                        raise DataValidationError(f"sample {c.id!r} (split {c.split!r}): {reason}: {detail} "
                                                  "(--strict)")
                    shard.note(reason, c.id, detail, c.split)
                if result.box_report.repaired:
                    shard.repaired_ids.append(c.id)
                rows.append(result.row)
            started = time.perf_counter()
            _remove_leftovers(path)
            write_shard(path, rows, features)
            seconds["write"] += time.perf_counter() - started
            record = {"fingerprint": fingerprint, "ids": [r["id"] for r in rows],
                      "boxed": sum(bool(r["boxes"]) for r in rows), "problems": shard.problems,
                      "box_repairs": shard.boxes.as_dict(), "repaired_ids": shard.repaired_ids}
            _save_json(_record_path(output, path), record)
            report.add_shard(record, split, log=False)
