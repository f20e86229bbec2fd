"""Checks of a run's data: splits that overlap, and the fingerprint of a dataset's files (a resume refuses data
whose files changed)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["warn_on_split_overlap", "data_fingerprint"]


def warn_on_split_overlap(splits: dict[str, tuple[str, Sequence]], unlabeled_split: str | None, logger) -> list[str]:
    """Warn loudly when the training, validation and test splits overlap: by name (``--test_split labeled``) or by
    shared sample ids. A model selected or scored on rows it trained on reports a number that means nothing.

    Args:
        splits: {role: (split name, dataset with an ``id`` column)} for ``labeled``, ``validation``, ``test``.
        unlabeled_split: the streamed split's name (checked by name only), or None when the method does not read it.
    Returns:
        the warnings (also logged).
    """
    found = []
    roles = list(splits)
    named = [(role, name) for role, (name, _) in splits.items()]
    if unlabeled_split is not None:
        named.append(("unlabeled", unlabeled_split))
    for i, (role_a, name_a) in enumerate(named):
        for role_b, name_b in named[i + 1:]:
            if name_a == name_b:
                found.append(f"the {role_a} and {role_b} splits are the same split ({name_a!r})")
    ids = {role: set(data["id"]) for role, (_, data) in splits.items()}
    for i, role_a in enumerate(roles):
        for role_b in roles[i + 1:]:
            if splits[role_a][0] != splits[role_b][0] and (shared := ids[role_a] & ids[role_b]):
                found.append(f"the {role_a} split {splits[role_a][0]!r} and the {role_b} split {splits[role_b][0]!r} "
                             f"share {len(shared)} sample id(s), e.g. {sorted(shared)[0]!r}")
    for message in found:
        logger.warning(f"SPLITS OVERLAP: {message}: validation and test scores on rows the model trained on (or "
                       "selected on) measure nothing. Pass disjoint --labeled_split/--validation_split/--test_split.")
    return found


def data_fingerprint(folder: str | os.PathLike) -> dict[str, str]:
    """What identifies a local dataset folder's content, cheaply: every parquet file's relative name, size and a hash
    of its first and last 64 KiB (a parquet footer holds the schema, row counts and column statistics), folded into
    one digest. Copies (new mtimes) keep the fingerprint; edited shards change it.

    Returns:
        ``{"data_files": hex digest}``, the entry that `xpl_hf.checkpointing.check_fingerprint` compares on resume
        (a Hub dataset's entry is its id: :meth:`xpl_hf.data.source.DatasetSource.fingerprint`).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {os.fspath(folder)!r} does not exist.")
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(root.rglob("*.parquet")):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root).as_posix()}|{size}|".encode())
        with open(file, "rb") as f:
            digest.update(f.read(65536))
            f.seek(max(size - 65536, 0))
            digest.update(f.read(65536))
    return {"data_files": digest.hexdigest()}
