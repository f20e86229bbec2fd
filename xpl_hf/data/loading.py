"""Load xpl-hf splits: labeled / evaluation splits eagerly, unlabeled splits streamed, sharded and resumable.

A dataset is either a local folder in the layout of :mod:`xpl_hf.data.shards` (``DIR/data/<split>-xxxxx-of-xxxxx
.parquet``; ``DIR/<split>/*.parquet`` and ``DIR/<split>-*.parquet`` are accepted too) or a Hub dataset id in the
same schema (e.g. one written by ``python -m xpl_hf.data.convert ... --push_to_hub``).

Audio is always exposed undecoded (``Audio(decode=False)``: ``{"bytes", "path"}``) because ``datasets`` 5 decodes
audio only through torchcodec + system FFmpeg; decode it with :func:`xpl_hf.data.decoding.decode_audio` (soundfile),
as :class:`xpl_hf.data.transforms.XPLCollator` does. Images are exposed undecoded too by default
(``decode_images=False``), so that a corrupt image reaches the collate function, which names the sample, instead of
failing inside the dataset iterator.

Streaming and resume (:func:`load_unlabeled_stream`)
---------------------------------------------------
The returned :class:`datasets.IterableDataset` is split across processes with ``split_dataset_by_node`` (whole
shards per process when the number of shards is a multiple of ``world_size``; otherwise every process reads all
rows and keeps every ``world_size``-th, which is correct but slower), shuffled (shard order + a buffer of
``shuffle_buffer`` rows), and exposes ``set_epoch(epoch)`` (a new shuffle per epoch, the same on every process) and
``state_dict()`` / ``load_state_dict(state)``:

* read ``ds.state_dict()`` while iterating (it describes the position after the last row yielded) and save it with
  the checkpoint (per process); rebuild the stream with the same arguments, call ``ds.load_state_dict(state)``, and
  iteration continues from there;
* without a shuffle buffer (``shuffle_buffer=0``; shard order is still shuffled), the restore is **exact**: the
  resumed stream yields exactly the rows the interrupted one had not yet yielded, in the same order;
* with a shuffle buffer, the restore is **approximate**: the buffer's content is not saved, so the stream resumes
  at the shard position after the rows already read into the buffer; rows that were in the buffer are lost for
  this epoch and the following order differs from an uninterrupted run (the next epoch is complete again).
  Over an epoch of N rows, at most ``shuffle_buffer`` rows are skipped. This is fine for unlabeled data.
"""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Audio, Dataset, Features, Image, IterableDataset, Value, load_dataset
from datasets.distributed import split_dataset_by_node

from ..paths import is_local
from .schema import GT_RULES, DataValidationError, check_columns, check_unique_ids
from .shards import DATA_DIR, check_complete, list_splits, open_shard, split_shard_paths

logger = logging.getLogger(__name__)


def local_split_files(root: str, split: str) -> list[str]:
    """Parquet files of ``split`` in a local dataset folder; raises with the available splits if there are none."""
    root = os.path.expanduser(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset folder {root!r} does not exist (nor is it a Hub dataset id 'org/name')")
    files = split_shard_paths(root, split)
    if files:
        check_complete(root, split, files)
    else:
        for pattern in (
            os.path.join(root, split, "*.parquet"),
            os.path.join(root, f"{split}-*.parquet"),
            os.path.join(root, f"{split}.parquet"),
        ):
            files = sorted(glob.glob(pattern))
            if files:
                break
    if not files:
        available = list_splits(root) or sorted(
            {
                os.path.basename(p).split("-")[0].removesuffix(".parquet")
                for p in glob.glob(os.path.join(root, "*.parquet"))
            }
            | {d for d in os.listdir(root) if glob.glob(os.path.join(root, d, "*.parquet"))}
        )
        raise ValueError(
            f"split {split!r} not found in {root!r} (looked for {DATA_DIR}/{split}-*-of-*.parquet, {split}/*.parquet, "
            f"{split}-*.parquet); available splits: {available or 'none'}"
        )
    return files


def _fix_features(features: Features, decode_images: bool) -> Features:
    """Force undecoded audio (soundfile decodes it) and the requested image decoding."""
    features = features.copy()
    if isinstance(features.get("audio"), Audio):
        features["audio"] = Audio(decode=False)
    if isinstance(features.get("image"), Image):
        features["image"] = Image(decode=decode_images)
    elif features.get("image") == Value("binary") and decode_images:
        logger.warning("the image column holds raw bytes; it is left undecoded")
    return features


def load_split_features(
    path_or_id: str, split: str, *, revision: str | None = None, token: str | bool | None = None
) -> tuple[Features, list[str] | None]:
    """``(features as stored, local parquet files or None for a Hub id)`` of one split."""
    if is_local(path_or_id):
        files = local_split_files(path_or_id, split)
        schemas = [open_shard(path).schema_arrow for path in files]  # every footer: a bad shard is named
        return Features.from_arrow_schema(schemas[0]), files
    from datasets import load_dataset_builder

    builder = load_dataset_builder(path_or_id, revision=revision, token=token)
    if builder.info.splits and split not in builder.info.splits:
        raise ValueError(
            f"split {split!r} not found in the Hub dataset {path_or_id!r}; available: {list(builder.info.splits)}"
        )
    if builder.info.features is None:
        raise DataValidationError(f"the Hub dataset {path_or_id!r} does not declare its features")
    return builder.info.features, None


def _first_unreadable(files: list[str]) -> str | None:
    """The first of ``files`` whose rows cannot be read (None when all can)."""
    for path in files:
        try:
            for _ in pq.ParquetFile(path).iter_batches(batch_size=256):
                pass
        except Exception:  # noqa: BLE001 - any failure names the shard
            return path
    return None


def _load(path_or_id: str, split: str, features: Features, files: list[str] | None, streaming: bool, **kwargs):
    if files is not None:
        try:
            return load_dataset(
                "parquet", data_files={split: files}, split=split, features=features, streaming=streaming, **kwargs
            )
        except Exception as err:
            bad = _first_unreadable(files)
            if bad is None:
                raise
            raise DataValidationError(f"parquet shard {bad} of split {split!r} cannot be read ({type(err).__name__}: "
                                      f"{err}); delete it and convert again (the converter redoes only the missing "
                                      "shards)") from err
    try:
        return load_dataset(path_or_id, split=split, features=features, streaming=streaming, **kwargs)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ValueError(f"split {split!r} not found in the Hub dataset {path_or_id!r}: {err}") from err
        raise


def _boxes_with_rows(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(coordinates (K, 4) float32, row index (K,))`` of every box of ``ds``'s ``boxes`` column."""
    column = ds.data.column("boxes").combine_chunks()
    boxes = pc.list_flatten(column)
    if boxes.null_count:
        row = int(pc.list_parent_indices(column)[pc.index(pc.is_null(boxes), True).as_py()].as_py())
        return np.full((1, 4), np.nan, np.float32), np.array([row])
    coords = pc.list_flatten(boxes).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return coords.reshape(-1, 4), pc.list_parent_indices(column).to_numpy()


def _reorder_corners(boxes: list) -> list:
    return [[min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)] for x0, y0, x1, y1 in boxes or []]


def check_boxes(ds: Dataset, where: str) -> Dataset:
    """The box rules where a split enters (:func:`load_labeled`), for splits written without the converters.

    * a box with a missing, NaN or infinite coordinate is refused (:class:`DataValidationError` naming the row's id);
    * a coordinate outside [0, 1] is refused (boxes are ``[x0, y0, x1, y1]`` divided by the image's width and
      height; values above 1 are usually pixel units);
    * swapped corners (``x0 > x1`` or ``y0 > y1``) are reordered, the converters' ``inverted="reorder"`` rule
      (:mod:`xpl_hf.data.schema`), with a warning that counts them and names the first ids.

    Returns:
        ``ds``, or a copy in memory with the inverted boxes reordered.
    """
    coords, rows = _boxes_with_rows(ds)
    if len(coords) == 0:
        return ds
    ids = ds.data.column("id")

    def refuse(box_index: int, problem: str) -> DataValidationError:
        row = int(rows[box_index])
        return DataValidationError(f"{where}: row {row} (id {ids[row].as_py()!r}) has the box "
                                   f"{coords[box_index].tolist()}: {problem}")

    not_finite = ~np.isfinite(coords).all(axis=1)
    if not_finite.any():
        raise refuse(int(np.argmax(not_finite)), "a coordinate is missing, NaN or infinite")
    outside = ((coords < 0) | (coords > 1)).any(axis=1)
    if outside.any():
        index = int(np.argmax(outside))
        hint = " (pixel units? divide x by the image width and y by its height)" if coords[index].max() > 1 else ""
        raise refuse(index, f"coordinates must lie in [0, 1]{hint}")
    inverted = (coords[:, 0] > coords[:, 2]) | (coords[:, 1] > coords[:, 3])
    if not inverted.any():
        return ds
    shown = sorted({ids[int(row)].as_py() for row in rows[inverted]})
    logger.warning("%s: reordered the swapped corners of %d box(es) (ids %s%s), the converters' rule",
                   where, int(inverted.sum()), ", ".join(map(repr, shown[:5])), ", ..." if len(shown) > 5 else "")
    return ds.map(lambda boxes: {"boxes": [_reorder_corners(b) for b in boxes]}, batched=True,
                  input_columns=["boxes"], features=ds.features, keep_in_memory=True, load_from_cache_file=False)


def check_rule_matches_boxes(ds: Dataset, where: str) -> None:
    """Refuse a row with ``gt_rule == "none"`` ("not annotated") that carries boxes, naming it: its ground truth would
    depend on which of the two the reader believes (the converters refuse such entries as ``bad gt_rule``)."""
    boxed = pc.greater(pc.fill_null(pc.list_value_length(ds.data.column("boxes")), 0), 0)
    contradictory = pc.and_(pc.equal(ds.data.column("gt_rule"), "none"), boxed)
    if pc.any(contradictory).as_py():
        row = pc.index(contradictory, True).as_py()
        raise DataValidationError(f"{where}: row {row} (id {ds.data.column('id')[row].as_py()!r}) has gt_rule 'none' "
                                  "('not annotated') but carries boxes; write its gt_rule ('union' or 'flickr') or "
                                  "drop its boxes")


def load_labeled(
    path_or_id: str,
    split: str,
    *,
    decode_images: bool = False,
    require_boxes: bool = True,
    check_ids: bool = True,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """Load a labeled or evaluation split eagerly as a :class:`datasets.Dataset`.

    Args:
        path_or_id: local dataset folder or Hub dataset id.
        split: e.g. ``"labeled"``, ``"validation"``, ``"test"``.
        decode_images: expose images as PIL images (``True``) or ``{"bytes", "path"}`` (``False``, training default).
        require_boxes: raise if the split has no ``boxes``/``gt_rule`` columns or no sample has a box.
        check_ids: raise on duplicated ids.

    Raises:
        FileNotFoundError: the local folder does not exist.
        ValueError: the split does not exist (the message lists the available ones).
        DataValidationError: an incomplete set of shards (:func:`xpl_hf.data.shards.check_complete`, naming the
            missing ones) or a shard whose rows cannot be read (naming it); missing columns, a labeled split without
            boxes, unknown gt_rule, gt_rule ``"none"`` on a row with boxes, duplicated ids, a box that is not finite
            or not in [0, 1] (:func:`check_boxes`; swapped corners are reordered).
    """
    features, files = load_split_features(path_or_id, split, revision=revision, token=token)
    where = f"split {split!r} of {path_or_id!r}"
    check_columns(features, where=where, require_boxes=require_boxes)
    kwargs = {"cache_dir": cache_dir}
    if files is None:
        kwargs.update(revision=revision, token=token)
    ds = _load(path_or_id, split, _fix_features(features, decode_images), files, streaming=False, **kwargs)
    if check_ids:
        check_unique_ids(ds.data.column("id").to_pylist(), where=where)
    if "gt_rule" in ds.column_names:
        rules = set(pc.unique(ds.data.column("gt_rule")).to_pylist())
        unknown = rules - set(GT_RULES)
        if unknown:
            raise DataValidationError(
                f"{where} has unknown gt_rule value(s) {sorted(map(str, unknown))}; expected {GT_RULES}"
            )
    if "boxes" in ds.column_names and "gt_rule" in ds.column_names:
        check_rule_matches_boxes(ds, where)
    if "boxes" in ds.column_names:
        ds = check_boxes(ds, where)
    if require_boxes and len(ds) > 0:
        n_boxes = pc.sum(pc.list_value_length(ds.data.column("boxes"))).as_py() or 0
        if n_boxes == 0:
            raise DataValidationError(f"{where} is used as a labeled split but no sample has a box")
    return ds


def load_unlabeled_stream(
    path_or_id: str,
    split: str = "unlabeled",
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    epoch: int = 0,
    decode_images: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
) -> IterableDataset:
    """Stream a split (``streaming=True``), split across processes, shuffled, resumable (module docstring).

    Args:
        rank / world_size: this process and the number of processes (``accelerator.process_index`` /
            ``accelerator.num_processes``).
        seed: shuffle seed (the same on every process, so that every process agrees on the shard permutation).
        shuffle_buffer: rows in the shuffle buffer; 0 shuffles the shard order only (exact resume).
        epoch: initial epoch (call ``ds.set_epoch(e)`` at the start of every epoch).

    Returns:
        a :class:`datasets.IterableDataset` with ``set_epoch``, ``state_dict`` and ``load_state_dict``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    features, files = load_split_features(path_or_id, split, revision=revision, token=token)
    check_columns(features, where=f"split {split!r} of {path_or_id!r}", require_boxes=False)
    kwargs = {} if files is not None else {"revision": revision, "token": token}
    ds = _load(path_or_id, split, _fix_features(features, decode_images), files, streaming=True, **kwargs)
    # buffer_size=1 still shuffles the shard order (per epoch) but keeps rows in order: exact resume
    ds = ds.shuffle(seed=seed, buffer_size=max(int(shuffle_buffer), 1))
    if world_size > 1:
        if ds.num_shards % world_size:
            logger.warning(
                "split %r has %d shards, not a multiple of world_size=%d: every process reads all rows and keeps "
                "1/%d of them (write a multiple of %d shards to avoid it)",
                split,
                ds.num_shards,
                world_size,
                world_size,
                world_size,
            )
        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    ds.set_epoch(epoch)
    return ds
