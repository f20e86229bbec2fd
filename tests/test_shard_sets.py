"""Conversions split between machines know their shard set: a part never deletes another part's shards, the card
and the loaders refuse an incomplete set naming what is missing, shard counts are bounded, and the converter's
flags are checked before any work, naming the flag."""

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from xpl_hf.data import convert as cv
from xpl_hf.data.loading import load_labeled, load_unlabeled_stream
from xpl_hf.data.schema import DataValidationError
from xpl_hf.data.shards import check_complete, split_shard_paths, write_dataset_card

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0


def _folder(root, n=4):
    root.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (20, 200, 30)).save(buf, format="PNG")
    (root / "f.png").write_bytes(buf.getvalue())
    sf.write(str(root / "a.wav"), 0.3 * np.sin(np.arange(16000) / 5.0), 16000, subtype="PCM_16")
    entries = [{"id": f"s{i}", "image": "f.png", "audio": "a.wav", "boxes": [[0.1, 0.1, 0.5, 0.5]]} for i in range(n)]
    (root / "annotations.json").write_text(json.dumps(entries))
    return root


def _part(src, out, num_shards, index, **kwargs):
    return cv.convert("folder", str(src), str(out), progress=False, num_shards=num_shards, shard_index=index,
                      **kwargs)


def test_a_lone_part_gets_no_card_and_the_loaders_name_the_missing_shards(tmp_path):
    src, out = _folder(tmp_path / "src"), tmp_path / "out"
    report = _part(src, out, 2, 0)
    assert not (out / "README.md").exists()
    assert "labeled-00001-of-00002.parquet" in json.dumps(report.extra["missing_shards"])
    with pytest.raises(DataValidationError, match=r"split 'labeled' .* incomplete: 1 of its 2 shards are missing "
                                                  r"\(data/labeled-00001-of-00002.parquet\)"):
        load_labeled(str(out), "labeled")
    with pytest.raises(DataValidationError, match="labeled-00001-of-00002"):
        load_unlabeled_stream(str(out), "labeled")
    with pytest.raises(DataValidationError, match="labeled-00001-of-00002"):
        write_dataset_card(str(out), "folder")
    with pytest.raises(SystemExit):
        cv.main(["card", "--output", str(out)])
    _part(src, out, 2, 1)  # the second machine's part completes the set: card and loaders work
    assert (out / "README.md").exists()
    assert sorted(load_labeled(str(out), "labeled")["id"]) == ["s0", "s1", "s2", "s3"]


def test_a_part_with_another_shard_count_refuses_and_deletes_nothing(tmp_path):
    src, out = _folder(tmp_path / "src", n=6), tmp_path / "out"
    _part(src, out, 2, 0)
    before = sorted(p.name for p in (out / "data").iterdir())
    with pytest.raises(DataValidationError, match=r"labeled-00000-of-00002.parquet.*--num_shards"):
        _part(src, out, 3, 1)
    assert sorted(p.name for p in (out / "data").iterdir()) == before
    # a complete conversion (one machine) still replaces the split's old shards
    assert cv.convert("folder", str(src), str(out), progress=False).written == {"labeled": 6}
    assert [p.rsplit("/", 1)[1] for p in split_shard_paths(str(out), "labeled")] == ["labeled-00000-of-00001.parquet"]


def test_mixed_shard_sets_are_named(tmp_path):
    src = _folder(tmp_path / "src")
    a, b = tmp_path / "a", tmp_path / "b"
    _part(src, a, 2, 0)
    cv.convert("folder", str(src), str(b), progress=False)
    (a / "data" / "labeled-00000-of-00001.parquet").write_bytes((b / "data" / "labeled-00000-of-00001.parquet")
                                                                .read_bytes())
    with pytest.raises(DataValidationError, match="mixes shards of conversions into 1 and 2 shards"):
        check_complete(str(a), "labeled")


def test_shard_counts_are_bounded(tmp_path, capsys):
    src = _folder(tmp_path / "src", n=3)
    report = cv.convert("folder", str(src), str(tmp_path / "out"), progress=False, shards_per_split=50)
    assert report.written == {"labeled": 3}
    assert len(split_shard_paths(str(tmp_path / "out"), "labeled")) == 3  # at most one shard per row
    for flag, value in (("--shards_per_split", "1000000"), ("--num_shards", "20000")):
        with pytest.raises(SystemExit):
            cv.main(["folder", "--input", str(src), "--output", str(tmp_path / "o2"), flag, value])
        assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    with pytest.raises(ValueError, match="--shards_per_split"):
        cv.convert("folder", str(src), str(tmp_path / "o3"), progress=False, shards_per_split=10**6)


def test_a_corrupt_second_shard_is_named(tmp_path):
    src, out = _folder(tmp_path / "src"), tmp_path / "out"
    cv.convert("folder", str(src), str(out), progress=False, shards_per_split=2)
    second = out / "data" / "labeled-00001-of-00002.parquet"
    second.write_bytes(b"PAR1 not parquet PAR1")
    with pytest.raises(ValueError, match="labeled-00001-of-00002.parquet"):
        load_labeled(str(out), "labeled")


@pytest.mark.parametrize("flag, value", [("--sample_rate", "1e9"), ("--sample_rate", "0"), ("--clip_seconds", "1e6"),
                                         ("--clip_seconds", "nan"), ("--frames_per_clip", "1000"),
                                         ("--frame_time", "inf"), ("--num_workers", "100000")])
def test_converter_flags_are_checked_before_work_naming_the_flag(tmp_path, capsys, flag, value):
    src = _folder(tmp_path / "src", n=1)
    with pytest.raises(SystemExit):
        cv.main(["folder", "--input", str(src), "--output", str(tmp_path / "out"), flag, value])
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [("sample_rate", 10**9), ("clip_seconds", 1e6), ("frames_per_clip", 1000),
                                           ("frame_time", float("nan")), ("audio_format", "mp3")])
def test_clip_options_are_checked_when_made(option, value):
    with pytest.raises(ValueError, match=f"--{option}"):
        cv.ClipOptions(**{option: value})
