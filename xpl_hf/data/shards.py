"""Write rows of the xpl-hf schema as parquet shards in the Hub's layout.

A dataset folder looks like what ``DatasetDict.push_to_hub`` produces::

    DIR/data/labeled-00000-of-00001.parquet
    DIR/data/unlabeled-00000-of-00004.parquet ... unlabeled-00003-of-00004.parquet
    DIR/data/test-00000-of-00001.parquet

so ``datasets.load_dataset(DIR)`` (also with ``streaming=True``) and ``xpl_hf.data.load_labeled(DIR, split)`` both
find every split, and the same folder can be uploaded unchanged. Each shard carries its :class:`datasets.Features` in
the parquet metadata. Rows are written directly with pyarrow (``Features.encode_example`` would try to re-encode audio
with torchcodec).

:func:`write_dataset_card` writes ``DIR/README.md``, the dataset card: YAML metadata (``configs:`` naming each split's
files, ``dataset_info:`` with the features and row counts, licence, tags) and a body with the provenance, the splits
and the schema. ``load_dataset(DIR)`` reads the features from it, so audio stays undecoded bytes there too.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

DATA_DIR = "data"
CARD_NAME = "README.md"

logger = logging.getLogger(__name__)


def split_shard_paths(root: str, split: str) -> list[str]:
    """The finished parquet shards of ``split`` under ``root`` (sorted)."""
    pattern = os.path.join(root, DATA_DIR, f"{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].parquet")
    return sorted(glob.glob(pattern))


MAX_SHARDS_PER_SPLIT = 10_000
"""Most parquet shards a converter writes for one split (``--shards_per_split``, ``--num_shards``)."""


def _shard_numbers(path: str) -> tuple[int, int]:
    """``(index, total)`` of a shard named ``<split>-<index>-of-<total>.parquet``."""
    index, _, total = os.path.basename(path).removesuffix(".parquet").rsplit("-", 3)[1:]
    return int(index), int(total)


def missing_shards(root: str, split: str, files: list[str] | None = None) -> list[str]:
    """Why the shards of ``split`` under ``root`` are not one complete set, as messages (empty when they are).

    A split's shards are ``<split>-<j>-of-<T>.parquet`` for every ``j`` in ``0 .. T-1`` with one ``T``: a missing
    ``j`` (a conversion split between machines with only some parts copied in) or two totals (shards of two
    conversions) are named.
    """
    files = split_shard_paths(root, split) if files is None else files
    if not files:
        return []
    numbers = [_shard_numbers(p) for p in files]
    totals = sorted({total for _, total in numbers})
    if len(totals) > 1:
        return [f"it mixes shards of conversions into {' and '.join(map(str, totals))} shards ("
                + ", ".join(os.path.basename(p) for p in files[:4]) + (" ..." if len(files) > 4 else "")
                + "): remove the shards of the older conversion"]
    present = {index for index, _ in numbers}
    absent = [os.path.join(DATA_DIR, f"{split}-{j:05d}-of-{totals[0]:05d}.parquet")
              for j in range(totals[0]) if j not in present]
    if not absent:
        return []
    return [f"{len(absent)} of its {totals[0]} shards are missing (" + ", ".join(absent[:4])
            + (" ..." if len(absent) > 4 else "") + ")"]


def check_complete(root: str, split: str, files: list[str] | None = None) -> None:
    """Raise :class:`~xpl_hf.data.schema.DataValidationError` when ``split`` is not one complete set of shards
    (:func:`missing_shards`), naming what is missing."""
    problems = missing_shards(root, split, files)
    if problems:
        from .schema import DataValidationError

        raise DataValidationError(f"split {split!r} of {root!r} is incomplete: {'; '.join(problems)}. A conversion "
                                  "split between machines (--num_shards / --shard_index) writes part of the shards "
                                  f"on each: copy every machine's {DATA_DIR}/ folder in, then write the card with "
                                  "`python -m xpl_hf.data.convert card --output DIR`")


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


def shard_path(root: str, split: str, index: int, total: int) -> str:
    """``root/data/<split>-<index>-of-<total>.parquet``, the Hub's shard name."""
    return os.path.join(root, DATA_DIR, f"{split}-{index:05d}-of-{total:05d}.parquet")


def write_shard(path: str, rows: Iterable[dict], features: Features, row_group_size: int = 64) -> int:
    """Write ``rows`` as one parquet shard at ``path``, atomically: a hidden temporary file in the same folder, then
    ``os.replace``, so ``path`` is either absent, the old shard, or the complete new one (never a partial file, even
    when the process is killed). Returns the number of rows."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    schema, n, buffer = features.arrow_schema, 0, []
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for row in rows:
                buffer.append(row)
                n += 1
                if len(buffer) >= row_group_size:
                    writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                    buffer = []
            if buffer:  # an empty shard has no row group (a 0-row group breaks readers)
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return n


def open_shard(path: str) -> pq.ParquetFile:
    """A shard's :class:`pyarrow.parquet.ParquetFile` (its footer read); a corrupt or truncated shard is a ValueError
    naming it."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"parquet shard {path} is corrupt or truncated ({type(err).__name__}: {err}); delete it and "
                         "convert again (the converter redoes only the missing shards)") from None


def even_shard_sizes(num_rows: int, num_shards: int) -> list[int]:
    """Sizes of ``min(num_shards, num_rows)`` shards holding ``num_rows`` rows as evenly as possible."""
    k = max(1, min(num_shards, num_rows))
    return [max(1, num_rows // k + (1 if i < num_rows % k else 0)) for i in range(k)]


# --------------------------------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """What a dataset card says about where a folder's data comes from.

    Attributes:
        pretty_name: the card's title.
        license: the Hub's licence id (``apache-2.0``, ``cc-by-4.0``, ...) or ``other``.
        license_text: Markdown about the licences of the media and annotations.
        provenance: Markdown: how the folder was made (command, inputs).
    """

    pretty_name: str
    license: str
    license_text: str
    provenance: str


DATASET_SOURCES: dict[str, DatasetSource] = {
    "synthetic": DatasetSource(
        "xpl-hf synthetic audio-visual source localization benchmark",
        "apache-2.0",
        "Generated by the code of xpl-hf (Apache-2.0); it contains no third-party image or sound.",
        "Generated offline by `python -m xpl_hf.data.synthetic` (no download): scenes of 2-3 objects of distinct "
        "classes on a cluttered background, each class with its own look and its own sound; the audio is the sound of "
        "one object in the scene plus coloured noise (sometimes with an off-screen distractor), and `boxes` holds "
        "that object's exact box. Seeded per sample: the same parameters give the same files.",
    ),
    "flickr": DatasetSource(
        "Flickr-SoundNet (xpl-hf schema)",
        "other",
        "The frames and sounds come from Flickr videos of the SoundNet collection, each under its uploader's licence; "
        "check the terms of the Flickr-SoundNet download before redistributing this folder. The test and labeled id "
        "lists come from the LVS, EZ-VSL and SLAVC repositories (Apache-2.0).",
        "Converted by `python -m xpl_hf.data.convert flickr` from the Flickr-SoundNet download (frames and audio, or "
        "videos, and "
        "`Annotations/*.xml`: three annotators' boxes in 256-px coordinates, stored normalised, `gt_rule = flickr`).",
    ),
    "vggss": DatasetSource(
        "VGG-Sound Source (xpl-hf schema)",
        "cc-by-4.0",
        "VGGSound is distributed under CC-BY-4.0; its clips are YouTube videos under their uploaders' terms. The box "
        "annotations (`vggss.json`) and the heard/unheard lists come from the LVS and EZ-VSL repositories "
        "(Apache-2.0).",
        "Converted by `python -m xpl_hf.data.convert vggss` from VGG-Sound videos (or frames and audio) with the "
        "`vggss.json` "
        "boxes (`gt_rule = union`).",
    ),
    "folder": DatasetSource(
        "Audio-visual source localization dataset (xpl-hf schema)",
        "other",
        "The licences of the source images, sounds and annotations apply; they are not recorded here.",
        "Converted by `python -m xpl_hf.data.convert folder` from a folder of images and sounds, or videos, and an "
        "`annotations.json`.",
    ),
}
"""The known sources of a dataset folder (keys: ``synthetic`` and the converters' kinds)."""

SCHEMA_TYPES = {"id": "string", "image": "Image", "audio": "Audio(decode=False)", "boxes": "list of [4 x float32]",
                "gt_rule": "string", "label": "string", "true_boxes": "list of [4 x float32] or null",
                "objects": "list of {box: [4 x float32], label: string, sounding: bool} or null",
                "frames": "list of Image or null"}
FRAMES_DESCRIPTION = ("optional: K frames spread over the audio window of a video clip (`--frames_per_clip K`); "
                      "training picks one per visit, evaluation uses `image`")


def _split_features(root: str, splits: list[str]) -> dict[str, Features]:
    return {s: Features.from_arrow_schema(open_shard(split_shard_paths(root, s)[0]).schema_arrow) for s in splits}


def _split_rows(root: str, split: str) -> int:
    return sum(open_shard(p).metadata.num_rows for p in split_shard_paths(root, split))


def dataset_card_metadata(root: str, source: DatasetSource):
    """The card's YAML metadata as :class:`huggingface_hub.DatasetCardData`, built with the ``datasets`` helpers.

    When every split has the same features there is one ``default`` config holding all splits (``load_dataset(root)``
    returns them all); otherwise each split is its own config (``load_dataset(root, split_name)``).
    """
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    splits = list_splits(root)
    if not splits:
        raise ValueError(f"{root!r} holds no split ({DATA_DIR}/<split>-xxxxx-of-xxxxx.parquet) to describe")
    for split in splits:
        check_complete(root, split)
    features = _split_features(root, splits)
    rows = {s: _split_rows(root, s) for s in splits}
    shared = all(f == features[splits[0]] for f in features.values())
    groups = {"default": splits} if shared else {s: [s] for s in splits}
    infos, configs = {}, {}
    for name, members in groups.items():
        split_dict = SplitDict()
        for s in members:
            split_dict.add(SplitInfo(s, num_examples=rows[s]))
        infos[name] = DatasetInfo(features=features[members[0]], splits=split_dict)
        configs[name] = {"data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*"} for s in members]}
    card_data = DatasetCardData(
        pretty_name=source.pretty_name,
        license=source.license,
        tags=["audio-visual", "sound-source-localization", "xpl-hf"],
        size_categories=[_size_category(sum(rows.values()))],
    )
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    return card_data


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def write_dataset_card(
    root: str,
    source: str | DatasetSource = "folder",
    *,
    name: str | None = None,
    details: Mapping[str, object] | None = None,
) -> str | None:
    """Write ``root/README.md``, the dataset card of a folder in this module's layout; return its path.

    Args:
        root: the dataset folder (its splits are read from ``root/data/``).
        source: a key of :data:`DATASET_SOURCES` (``"synthetic"``, ``"flickr"``, ``"vggss"``, ``"folder"``) or a
            :class:`DatasetSource`.
        name: how the card names the dataset in its loading example (default: the folder's name; never a local path).
        details: extra facts rendered as a table (e.g. the generator's parameters); no local paths, please.

    The card is rewritten from the folder's current content, so calling it again after adding a split is fine. A
    folder without any split gets no card (``None`` is returned, with a warning); a split that is not one complete
    set of shards (:func:`check_complete`) is refused, naming the missing shards.
    """
    from huggingface_hub import DatasetCard

    from .schema import COLUMN_DESCRIPTIONS

    if not list_splits(root):
        logger.warning("%s holds no split under %s/: no dataset card written", root, DATA_DIR)
        return None
    if isinstance(source, str):
        if source not in DATASET_SOURCES:
            raise ValueError(f"unknown dataset source {source!r}; expected one of {sorted(DATASET_SOURCES)} or a "
                             "DatasetSource")
        source = DATASET_SOURCES[source]
    card_data = dataset_card_metadata(root, source)
    name = name or os.path.basename(os.path.normpath(os.path.abspath(root)))
    splits = list_splits(root)
    features = _split_features(root, splits)
    columns = list(dict.fromkeys(c for f in features.values() for c in f))
    shared = len(card_data.configs) == 1
    split_rows = "\n".join(f"| `{s}` | {_split_rows(root, s)} | {len(split_shard_paths(root, s))} |" for s in splits)
    descriptions = {**COLUMN_DESCRIPTIONS, "frames": COLUMN_DESCRIPTIONS.get("frames", FRAMES_DESCRIPTION)}
    schema_rows = "\n".join(f"| `{c}` | {SCHEMA_TYPES.get(c, '')} | {descriptions.get(c, '')} |"
                            for c in columns)
    load = (f'ds = load_dataset("{name}")  # DatasetDict of every split\n' if shared else
            f'ds = load_dataset("{name}", "{splits[0]}")  # one config per split: their features differ\n')
    sections = [
        f"# {source.pretty_name}",
        "A dataset in the [xpl-hf](https://github.com/xpl-hf/xpl-hf) schema for audio-visual source localization: "
        "each row pairs a video frame with the sound around it and, when labeled, the boxes of the sounding "
        "object.",
        "## Provenance",
        source.provenance,
        "## Splits",
        "| split | rows | parquet shards |\n| --- | --- | --- |\n" + split_rows,
        "## Schema",
        "| column | type | meaning |\n| --- | --- | --- |\n" + schema_rows,
        "## Loading",
        "```python\nfrom datasets import load_dataset\n\n" + load +
        "```\n\nAudio stays undecoded bytes (`Audio(decode=False)`): decode it with soundfile, e.g. "
        "`xpl_hf.data.decoding.decode_audio`. Training code reads the splits with `xpl_hf.data.load_labeled` and "
        "streams the unlabeled one with `xpl_hf.data.load_unlabeled_stream`; `streaming=True` works with "
        "`load_dataset` too.",
    ]
    if details:
        sections += ["## Details", "| parameter | value |\n| --- | --- |\n" +
                     "\n".join(f"| `{k}` | {json.dumps(v) if not isinstance(v, str) else v} |"
                               for k, v in details.items())]
    sections += ["## Licence", f"`{source.license}`. {source.license_text}"]
    content = f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    path = os.path.join(root, CARD_NAME)
    tmp = path + ".tmp"
    DatasetCard(content).save(tmp)
    os.replace(tmp, path)
    return path
