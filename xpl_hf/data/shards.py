"""Write rows of the xpl-hf schema as parquet shards in the Hub's layout.

A dataset folder looks like what ``DatasetDict.push_to_hub`` produces::

    DIR/data/labeled-00000-of-00001.parquet
    DIR/data/unlabeled-00000-of-00004.parquet ... unlabeled-00003-of-00004.parquet
    DIR/data/test-00000-of-00001.parquet

so ``datasets.load_dataset(DIR)`` and ``xpl_hf.data.load_labeled(DIR, split)`` both find every split, and the same
folder can be uploaded unchanged. Each shard carries its :class:`datasets.Features` in the parquet metadata.
Rows are written directly with pyarrow (``Features.encode_example`` would try to re-encode audio with torchcodec).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

DATA_DIR = "data"


def split_shard_paths(root: str, split: str) -> list[str]:
    """The finished parquet shards of ``split`` under ``root`` (sorted)."""
    pattern = os.path.join(root, DATA_DIR, f"{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].parquet")
    return sorted(glob.glob(pattern))


def list_splits(root: str) -> list[str]:
    """Names of the splits written under ``root``."""
    names = set()
    for p in glob.glob(
        os.path.join(root, DATA_DIR, "*-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].parquet")
    ):
        names.add(os.path.basename(p).rsplit("-", 3)[0])
    return sorted(names)


class ShardWriter:
    """Stream rows (dicts in the schema; image/audio as ``{"bytes", "path"}``) into parquet shards of one split.

    Args:
        root: dataset folder; shards go to ``root/data/``.
        split: split name (letters, digits, ``_``).
        features: the split's :class:`datasets.Features` (stored in the parquet metadata).
        rows_per_shard: a new shard starts after this many rows; or a list of per-shard sizes (see
            :func:`even_shard_sizes`; rows beyond the list go to shards of the last size).
        row_group_size: rows per parquet row group (the unit streaming reads and resumes at).

    Existing shards of the split are replaced when the writer is closed. Use as a context manager.
    """

    def __init__(
        self,
        root: str,
        split: str,
        features: Features,
        rows_per_shard: int | list[int] = 1000,
        row_group_size: int = 64,
    ):
        if not split.replace("_", "").isalnum():
            raise ValueError(f"split name must be alphanumeric/underscore, got {split!r}")
        sizes = [rows_per_shard] if isinstance(rows_per_shard, int) else list(rows_per_shard)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard!r}")
        self._sizes = sizes
        self.root, self.split, self.features = root, split, features
        self.schema = features.arrow_schema
        self.row_group_size = row_group_size
        self._dir = os.path.join(root, DATA_DIR)
        os.makedirs(self._dir, exist_ok=True)
        self._tmp_paths: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._buffer: list[dict] = []
        self.num_rows = 0

    def _open_next(self) -> None:
        self._close_current()
        path = os.path.join(self._dir, f".{self.split}-{len(self._tmp_paths):05d}.parquet.tmp")
        self._tmp_paths.append(path)
        self._writer = pq.ParquetWriter(path, self.schema)
        self._rows_in_shard = 0

    def _capacity(self, index: int) -> int:
        return self._sizes[min(index, len(self._sizes) - 1)]

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self._buffer = []

    def _close_current(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None

    def write(self, row: dict) -> None:
        if self._writer is None or self._rows_in_shard >= self._capacity(len(self._tmp_paths) - 1):
            self._open_next()
        self._buffer.append(row)
        self._rows_in_shard += 1
        self.num_rows += 1
        if len(self._buffer) >= self.row_group_size:
            self._flush()

    def write_many(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.write(row)

    def close(self) -> list[str]:
        """Finish the shards, replace the split's old shards, return the final paths."""
        if self._writer is None and not self._tmp_paths:  # an empty split still gets one (empty) shard
            self._open_next()
        self._close_current()
        for old in split_shard_paths(self.root, self.split):
            os.remove(old)
        n = len(self._tmp_paths)
        final = []
        for i, tmp in enumerate(self._tmp_paths):
            path = os.path.join(self._dir, f"{self.split}-{i:05d}-of-{n:05d}.parquet")
            os.replace(tmp, path)
            final.append(path)
        self._tmp_paths = []
        return final

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for tmp in self._tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
        self._tmp_paths = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def even_shard_sizes(num_rows: int, num_shards: int) -> list[int]:
    """Sizes of ``min(num_shards, num_rows)`` shards holding ``num_rows`` rows as evenly as possible."""
    k = max(1, min(num_shards, num_rows))
    return [max(1, num_rows // k + (1 if i < num_rows % k else 0)) for i in range(k)]
