"""Archives read by the converters (xpl_hf.data.convert.archive): one memory budget whatever the headers claim,
integrity (gzip CRC) checked before converting, duplicate member names refused, large members streamed to a
temporary file, and a bound on the bytes in flight over every worker (not on the number of members)."""

import gzip
import io
import json
import tarfile
import threading
import tracemalloc

import datasets
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from xpl_hf.data import convert as cv
from xpl_hf.data.convert import archive, sources, writer
from xpl_hf.data.convert.archive import ArchiveError, ArchiveReader, index_archive
from xpl_hf.data.loading import load_labeled
from xpl_hf.data.schema import DataValidationError

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
BOX = [[0.1, 0.1, 0.6, 0.6]]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _noise_wav(seconds=0.5, rate=16000, seed=0) -> bytes:
    """White noise: deflate stores it nearly as it is, so a flipped byte damages the data, not the stream."""
    buf = io.BytesIO()
    wave = np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * rate)).astype(np.float32)
    sf.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _folder_archive(path, n=2, annotations=None, extra=()) -> str:
    """A .tar.gz of a ``folder`` dataset: ``s<i>.jpg`` / ``s<i>.wav`` and annotations.json (+ ``extra`` members)."""
    entries = [{"id": f"s{i}", "image": f"s{i}.jpg", "audio": f"s{i}.wav", "boxes": BOX} for i in range(n)]
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "ds/annotations.json", annotations if annotations is not None else json.dumps(entries).encode())
        for i in range(n):
            _add(tar, f"ds/s{i}.jpg", _jpeg())
            _add(tar, f"ds/s{i}.wav", _noise_wav(seed=i))
        for name, data in extra:
            _add(tar, name, data)
    return str(path)


def _convert(src, out, **kwargs):
    return cv.convert("folder", str(src), str(out), progress=False, **kwargs)


def _header(name: str, size: int, kind: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.USTAR_FORMAT)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME])
def test_an_extended_header_claiming_a_gigabyte_is_refused_unread(tmp_path, kind):
    path = tmp_path / "claim.tar.gz"
    with gzip.open(path, "wb") as f:  # 1 GiB claimed, 64 kB present: the size alone must refuse it
        f.write(_header("././@PaxHeader", 1 << 30, kind) + b" " * 65536)
    tracemalloc.start()
    with pytest.raises(ArchiveError, match=r"claim.tar.gz: the extended header .* claims 1073741824 bytes.*budget"):
        index_archive(str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 2**20
    with pytest.raises(SystemExit):  # the command line names it too, without a traceback
        cv.main(["folder", "--input", str(path), "--output", str(tmp_path / "out")])


def test_a_real_oversized_pax_header_is_refused(tmp_path):
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.wav")
        info.pax_headers = {"comment": "x" * (archive.MAX_HEADER_BYTES + 10)}
        data = _noise_wav()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveError, match="extended header"):
        index_archive(str(path))


def test_annotations_json_in_an_archive_is_read_with_a_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_JSON_BYTES", 4096)
    padded = json.dumps([{"id": "s0", "image": "s0.jpg", "audio": "s0.wav"}]).encode() + b" " * 10_000
    src = _folder_archive(tmp_path / "ws.tar.gz", n=1, annotations=padded)
    read = []
    real = ArchiveReader.read
    monkeypatch.setattr(ArchiveReader, "read", lambda self, m, limit=archive.SPOOL_BYTES: read.append(m.name)
                        or real(self, m, limit))
    with pytest.raises(DataValidationError, match=r"ws.tar.gz:ds/annotations.json: \d+ bytes; the limit .* 4096"):
        _convert(src, tmp_path / "out")
    assert "ds/annotations.json" not in read  # refused from its size, unread


def test_a_flipped_byte_in_a_tar_gz_is_a_corrupt_archive_not_a_silent_change(tmp_path):
    src = tmp_path / "good.tar.gz"
    _folder_archive(src, n=3)
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the noise WAV members' stored deflate blocks
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"corrupt archive .*bad.tar.gz"):
        _convert(bad, tmp_path / "out")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bytes(raw[: len(raw) * 3 // 4]))
    with pytest.raises(ArchiveError, match=r"corrupt archive .*cut.tar.gz"):
        index_archive(str(cut))
    assert _convert(src, tmp_path / "ok").written == {"labeled": 3}


@pytest.mark.parametrize("duplicate", ["ds/s0.wav", "ds/./annotations.json"])
def test_duplicate_member_names_are_refused_naming_them(tmp_path, duplicate):
    """tar extraction keeps the last copy, a by-name reader could keep the first: one archive, one meaning."""
    src = _folder_archive(tmp_path / "dup.tar.gz", extra=[(duplicate, b"another copy")])
    with pytest.raises(ArchiveError, match=r"dup.tar.gz: 1 member name\(s\) occur more than once .*duplicate"):
        _convert(src, tmp_path / "out")


def test_large_members_are_streamed_to_a_temporary_file_not_held_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "SPOOL_BYTES", 4096)  # every WAV (16 kB) is "large" here
    src = _folder_archive(tmp_path / "ds.tar.gz", n=3)
    in_memory = []
    real = ArchiveReader.read
    monkeypatch.setattr(ArchiveReader, "read", lambda self, m, limit=archive.SPOOL_BYTES: in_memory.append(m.name)
                        or real(self, m, limit))
    report = _convert(src, tmp_path / "out")
    assert report.written == {"labeled": 3}
    assert not [n for n in in_memory if n.endswith(".wav")]
    rows = {r["id"]: r for r in load_labeled(str(tmp_path / "out"), "labeled")}
    assert rows["s1"]["audio"]["bytes"] == _noise_wav(seed=1)  # the stored bytes are the member's
    assert not list((tmp_path / "out" / ".convert").glob("spool-*"))  # temporary copies removed


def test_bytes_in_flight_are_bounded_not_members(tmp_path):
    """A job holding more bytes waits for earlier ones to come back: in flight <= the budget (plus the one job
    being admitted), whatever the number of members."""
    sizes = [60, 10, 10, 70, 5, 5, 5, 90, 20, 20]
    produced, consumed, worst = [], [], [0]
    lock = threading.Lock()

    def jobs():
        for i, n in enumerate(sizes):
            with lock:
                produced.append(i)
                worst[0] = max(worst[0], sum(sizes[j] for j in produced if j not in consumed))
            yield writer._Job((i,), nbytes=n)

    results = writer._ordered_map(abs, jobs(), num_workers=2, max_pending=100, memory_budget=100)
    for r in results:
        consumed.append(r)
    assert consumed == list(range(len(sizes)))
    assert worst[0] <= 100 + max(sizes)
