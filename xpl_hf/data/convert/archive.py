"""Read media straight out of .tar / .tar.gz archives (as the Hub distributes VGG-Sound), never extracting to disk.

:func:`index_archive` lists an archive's regular files once (for a .tar.gz this decompresses the whole stream once);
:class:`ArchiveReader` then reads members by their data offset. Reading members in increasing offset order (the
converters sort their work that way) makes a .tar.gz cost one more sequential decompression in total: a gzip stream
can only be skipped forwards, and going back restarts it from the beginning.

Only regular files are indexed: links, devices and directories in an archive are ignored, so a member can never name
a file outside the archive. Member names are normalised (``./a/b.mp4`` -> ``a/b.mp4``); a name that is absolute or
climbs out (``../x``) is ignored as well.

Memory budget. An archive is never trusted for sizes: gzip compresses zeros about 1000:1, so a few-MB archive can
claim tens of GB. Every size is checked *before* the bytes are read, and :class:`ArchiveError` (a ``ValueError``
naming the archive, the member and the limit) refuses what is over a bound:

* an extended header (PAX ``x`` / ``g``, GNU long name / long link) over :data:`MAX_HEADER_BYTES`, a member name
  over :data:`MAX_NAME_BYTES`, more than :data:`MAX_MEMBERS` headers or :data:`MAX_INDEX_NAME_BYTES` of names in
  all, and sparse members (their bytes are not stored as they are read back): the whole archive is refused;
* :meth:`ArchiveReader.read` (bytes in memory) refuses a member over its ``limit``; members over
  :data:`SPOOL_BYTES` are copied in :data:`CHUNK_BYTES` chunks to a temporary file instead
  (:meth:`ArchiveReader.copy_to`), so no member is ever held whole in memory unless it is small;
* the converters' writer keeps at most :data:`MEMORY_BUDGET` bytes of members in memory across every sample in
  flight (all workers together) -- a bound on bytes, not on members.

Integrity. Indexing reads the decompressed stream to its very end, so gzip's CRC and length check (and bzip2's /
xz's checks) run: a damaged .tar.gz is refused as ``corrupt archive <path>: ...`` before anything is converted. A
plain ``.tar`` carries checksums of its headers only; damage inside a member's bytes is found by the decoders.
Two members whose names normalise to the same path are refused (``duplicate member``): extraction keeps the last
copy, a reader by name could keep either, so the archive has no single meaning.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import posixpath
import shutil
import tarfile
import zlib
from typing import BinaryIO

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")

MAX_HEADER_BYTES = 1 * 2**20
"""Largest PAX / GNU extended header read (real ones hold a long name and a few times: well under 10 kB)."""
MAX_NAME_BYTES = 4096
"""Longest member name (Linux's PATH_MAX)."""
MAX_MEMBERS = 1_000_000
"""Most headers (members of any type) one archive may hold."""
MAX_INDEX_NAME_BYTES = 64 * 2**20
"""Most bytes of member names an archive's index may hold in all."""
MEMORY_BUDGET = 256 * 2**20
"""Most bytes of archive members a conversion holds in memory at once, over every sample in flight (the one sample
being read is let through even when it is larger than what remains)."""
SPOOL_BYTES = 16 * 2**20
"""Members larger than this are copied to a temporary file in chunks (and read from there), never held in memory."""
CHUNK_BYTES = 1 * 2**20
"""Read size when copying a member or checking a compressed stream to its end."""

_EXTENDED_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                     tarfile.SOLARIS_XHDTYPE)


class ArchiveError(ValueError):
    """An archive that is refused: over a size bound, corrupt, or ambiguous; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class ArchiveMember:
    """One regular file inside an archive: where its bytes start (``offset``) and how many there are."""

    archive: str
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


def is_archive(path: str) -> bool:
    """True when ``path`` names a .tar, .tar.gz or .tgz file (by its suffix)."""
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def normalise_member_name(name: str) -> str | None:
    """``./a//b.mp4`` -> ``a/b.mp4``; None for a name that is absolute or leaves the archive's root."""
    if name.startswith("/") or "\x00" in name:
        return None
    norm = posixpath.normpath(name)
    if norm == "." or norm == ".." or norm.startswith("../"):
        return None
    return norm


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


class _BoundedTarInfo(tarfile.TarInfo):
    """A header whose extended headers are size-checked before :mod:`tarfile` reads them, and sparse members refused
    (tarfile would read their maps without a bound, and their bytes are not stored as they are read back)."""

    def _proc_member(self, tar):
        if self.type in _EXTENDED_HEADERS and self.size > MAX_HEADER_BYTES:
            raise ArchiveError(f"the extended header at byte {self.offset} claims {self.size} bytes "
                               f"({_mib(self.size)}); the budget for one header is {_mib(MAX_HEADER_BYTES)}: "
                               "refused unread (a hostile or broken archive)")
        if self.type == tarfile.GNUTYPE_SPARSE:
            _refuse_sparse(self)
        return super()._proc_member(tar)

    def _proc_gnusparse_00(self, next, *args):
        _refuse_sparse(next)

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def _refuse_sparse(info: tarfile.TarInfo):
    raise ArchiveError(f"member {info.name!r} is a sparse file; sparse members are refused (re-create the archive "
                       "without --sparse)")


def _compressed(path: str) -> BinaryIO:
    """The decompressed byte stream of an archive file (gzip, bzip2, xz or none, told by its first bytes)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(path, "rb")
    return open(path, "rb")


_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def index_archive(path: str) -> dict[str, ArchiveMember]:
    """``{normalised name: ArchiveMember}`` of the regular files of a .tar / .tar.gz archive, after checking the
    whole compressed stream (module docstring: bounds, integrity, duplicate names).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ArchiveError: over a bound, corrupt (``corrupt archive <path>: ...``), or two members with one name.
        ValueError: it is not a tar archive at all (the message names it).
    """
    members: dict[str, ArchiveMember] = {}
    names: dict[str, int] = {}  # normalised name -> how many members carry it (any type)
    headers = name_bytes = 0
    try:
        stream = _compressed(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"archive {path!r} does not exist") from None
    with stream:
        try:
            tar = tarfile.open(fileobj=stream, mode="r:", tarinfo=_BoundedTarInfo)
        except ArchiveError as err:
            raise ArchiveError(f"{path}: {err}") from None
        except _STREAM_ERRORS as err:
            if isinstance(err, (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)) or "zlib" in str(err):
                raise ArchiveError(f"corrupt archive {path}: {type(err).__name__}: {err}") from None
            raise ValueError(f"{path}: not a readable .tar / .tar.gz archive ({type(err).__name__}: {err})") from None
        try:
            while (info := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header otherwise: memory grows with the member count
                headers += 1
                name_bytes += len(info.name)
                if headers > MAX_MEMBERS or name_bytes > MAX_INDEX_NAME_BYTES:
                    raise ArchiveError(f"{path}: more than {MAX_MEMBERS} members or {_mib(MAX_INDEX_NAME_BYTES)} of "
                                       "member names: refused (split the archive)")
                if len(info.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                    raise ArchiveError(f"{path}: a member name of {len(info.name)} characters at byte {info.offset}; "
                                       f"the limit is {MAX_NAME_BYTES}: refused")
                name = normalise_member_name(info.name)
                if name is None:
                    continue
                names[name] = names.get(name, 0) + 1
                if info.isreg():
                    members[name] = ArchiveMember(path, name, info.offset_data, info.size)
            while stream.read(CHUNK_BYTES):  # to the end: gzip / bzip2 / xz check their CRC and length there
                pass
        except ArchiveError as err:
            raise ArchiveError(str(err) if str(err).startswith(path) else f"{path}: {err}") from None
        except _STREAM_ERRORS as err:
            raise ArchiveError(f"corrupt archive {path}: {type(err).__name__}: {err} (the archive is damaged or cut "
                               "short; download it again)") from None
    duplicates = sorted(n for n, k in names.items() if k > 1 and n in members)
    if duplicates:
        shown = ", ".join(repr(n) for n in duplicates[:5]) + (" ..." if len(duplicates) > 5 else "")
        raise ArchiveError(f"{path}: {len(duplicates)} member name(s) occur more than once ({shown}); extraction "
                           "would keep the last copy, a reader by name either one: refused as ambiguous "
                           "(duplicate member; re-create the archive with one copy of each)")
    return members


class ArchiveReader:
    """Reads members' bytes, keeping each archive's stream open between reads. Use as a context manager."""

    def __init__(self):
        self._open: dict[str, BinaryIO] = {}

    def _seek(self, member: ArchiveMember) -> BinaryIO:
        stream = self._open.get(member.archive)
        if stream is None:
            stream = self._open[member.archive] = _compressed(member.archive)
        stream.seek(member.offset)
        return stream

    def read(self, member: ArchiveMember, limit: int = SPOOL_BYTES) -> bytes:
        """The bytes of ``member``, held in memory: refused (:class:`ArchiveError`) over ``limit`` bytes, before
        reading (cheapest when called in increasing ``offset`` order within an archive)."""
        if member.size > limit:
            raise ArchiveError(f"{member.archive}: member {member.name!r} is {member.size} bytes ({_mib(member.size)});"
                               f" the budget for one member read into memory is {_mib(limit)}")
        data = self._seek(member).read(member.size)
        if len(data) != member.size:
            raise ArchiveError(f"corrupt archive {member.archive}: it ends after {len(data)} of member "
                               f"{member.name!r}'s {member.size} bytes")
        return data

    def copy_to(self, member: ArchiveMember, path: str) -> None:
        """Copy ``member`` to the file ``path`` in :data:`CHUNK_BYTES` chunks (never whole in memory)."""
        stream = self._seek(member)
        left = member.size
        with open(path, "wb") as out:
            while left:
                chunk = stream.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise ArchiveError(f"corrupt archive {member.archive}: it ends {left} bytes before the end of "
                                       f"member {member.name!r} ({member.size} bytes)")
                out.write(chunk)
                left -= len(chunk)

    def close(self) -> None:
        for stream in self._open.values():
            stream.close()
        self._open.clear()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def remove_tree(path: str) -> None:
    """Delete a spool folder (missing is fine)."""
    shutil.rmtree(path, ignore_errors=True)
