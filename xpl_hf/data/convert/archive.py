"""Read media straight out of .tar / .tar.gz archives (as the Hub distributes VGG-Sound), never extracting to disk.

:func:`index_archive` lists an archive's regular files once (for a .tar.gz this decompresses the whole stream once);
:class:`ArchiveReader` then reads members by their data offset. Reading members in increasing offset order (the
converters sort their work that way) makes a .tar.gz cost one more sequential decompression in total: a gzip stream
can only be skipped forwards, and going back restarts it from the beginning.

Only regular files are indexed: links, devices and directories in an archive are ignored, so a member can never name
a file outside the archive. Member names are normalised (``./a/b.mp4`` -> ``a/b.mp4``); a name that is absolute or
climbs out (``../x``) is ignored as well.
"""

from __future__ import annotations

import dataclasses
import posixpath
import tarfile

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclasses.dataclass(frozen=True)
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


def index_archive(path: str) -> dict[str, ArchiveMember]:
    """``{normalised name: ArchiveMember}`` of the regular files of a .tar / .tar.gz archive.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it is not a readable tar archive (the message names it).
    """
    members: dict[str, ArchiveMember] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                name = normalise_member_name(info.name)
                if info.isreg() and name is not None and name not in members:
                    members[name] = ArchiveMember(path, name, info.offset_data, info.size)
    except FileNotFoundError:
        raise FileNotFoundError(f"archive {path!r} does not exist") from None
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .tar / .tar.gz archive ({type(err).__name__}: {err})") from None
    return members


class ArchiveReader:
    """Reads members' bytes, keeping each archive open between reads. Use as a context manager."""

    def __init__(self):
        self._open: dict[str, tarfile.TarFile] = {}

    def read(self, member: ArchiveMember) -> bytes:
        """The bytes of ``member`` (cheapest when called in increasing ``offset`` order within an archive)."""
        tar = self._open.get(member.archive)
        if tar is None:
            tar = self._open[member.archive] = tarfile.open(member.archive, "r:*")
        tar.fileobj.seek(member.offset)
        data = tar.fileobj.read(member.size)
        if len(data) != member.size:
            raise EOFError(f"{member}: the archive ends after {len(data)} of the member's {member.size} bytes")
        return data

    def close(self) -> None:
        for tar in self._open.values():
            tar.close()
        self._open.clear()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
