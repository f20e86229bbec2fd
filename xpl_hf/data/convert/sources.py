"""Where a converter finds its inputs: JSON and id-list files, and media in a folder or inside archives."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from ..annotations import read_id_list
from ..schema import DataValidationError
from .archive import ArchiveMember, index_archive, is_archive
from .samples import MediaRef

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
MAX_JSON_BYTES = 64 * 2**20
"""Largest annotation file read (``annotations.json``, ``vggss.json``; in a folder or an archive): VGG-SS's is 2 MB,
and parsing a JSON file takes several times its size in memory."""


def check_json_size(path: str, size: int) -> None:
    """Refuse an annotation file of ``size`` bytes over :data:`MAX_JSON_BYTES`, before reading it."""
    if size > MAX_JSON_BYTES:
        raise DataValidationError(f"{path}: {size} bytes; the limit for an annotation file is {MAX_JSON_BYTES} bytes "
                                  f"({MAX_JSON_BYTES // 2**20} MiB): refused unread")


def load_json(path: str, data: bytes | None = None) -> Any:
    """Read a UTF-8 JSON file (or its ``data``), at most :data:`MAX_JSON_BYTES`; an error names the file and the
    line, or says it nests too deep."""
    try:
        if data is None:
            check_json_size(path, os.path.getsize(path))
            with open(path, "rb") as f:
                data = f.read()
        check_json_size(path, len(data))
        return json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataValidationError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
                                  ) from None
    except UnicodeDecodeError as err:
        bad = err.object[err.start:err.start + 1]
        raise DataValidationError(f"{path}: not UTF-8 text (byte {err.start} is {bad!r}); JSON files must be UTF-8"
                                  ) from None
    except RecursionError:
        raise DataValidationError(f"{path}: the JSON nests too deep to be read (lists or objects inside each other "
                                  "thousands of levels deep); an annotation needs 3 levels") from None


def read_ids(path: str) -> list[str]:
    """The ids of a split list (first comma-separated field per line); an error names the file."""
    if os.path.isdir(path):
        raise DataValidationError(f"id list {path!r} is a folder, not a file")
    try:
        return read_id_list(path)
    except UnicodeDecodeError as err:
        raise DataValidationError(f"id list {path}: not UTF-8 text (byte {err.start} is "
                                  f"{err.object[err.start:err.start + 1]!r}); save it as UTF-8") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"id list {path!r} does not exist") from None
    except ValueError as err:
        raise DataValidationError(str(err)) from None


def index_dir(directory: str, extensions: Iterable[str]) -> dict[str, str]:
    """``{stem: path}`` of the files with one of ``extensions`` in ``directory`` (empty if it does not exist)."""
    out: dict[str, str] = {}
    if not os.path.isdir(directory):
        return out
    exts = tuple(extensions)
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in exts and stem not in out:
            out[stem] = entry.path
    return out


def index_inputs(inputs: list[str], subdir: str, extensions: Iterable[str]) -> dict[str, MediaRef]:
    """``{stem: path or ArchiveMember}``: files in ``input/subdir`` of each folder, and members with one of
    ``extensions`` anywhere inside each archive (the first one found wins)."""
    exts = tuple(extensions)
    out: dict[str, MediaRef] = {}
    for source in inputs:
        if is_archive(source):
            found: dict[str, MediaRef] = {}
            for name, member in archive_index(source).items():
                stem, ext = os.path.splitext(os.path.basename(name))
                if ext.lower() in exts:
                    found.setdefault(stem, member)
        else:
            found = dict(index_dir(os.path.join(source, subdir), exts))
        for stem, ref in found.items():
            out.setdefault(stem, ref)
    return out


_ARCHIVE_INDEXES: dict[tuple, dict[str, ArchiveMember]] = {}


def archive_index(path: str) -> dict[str, ArchiveMember]:
    """:func:`~xpl_hf.data.convert.archive.index_archive`, once per archive (and version of it) per process."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _ARCHIVE_INDEXES:
        _ARCHIVE_INDEXES[key] = index_archive(path)
    return _ARCHIVE_INDEXES[key]


def check_inputs(inputs: list[str], what: str) -> None:
    """Every input exists (a folder, or a .tar / .tar.gz archive); the error names the missing one."""
    for source in inputs:
        if not (os.path.isdir(source) or (is_archive(source) and os.path.isfile(source))):
            raise FileNotFoundError(f"{what} input {source!r} is neither a folder nor a .tar / .tar.gz archive")
