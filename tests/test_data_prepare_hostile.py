"""Converters (xpl_hf.data.convert) on hostile or careless input: paths leaving the input folder, typos in the
annotation keys, empty box lists, too-short audio, non-UTF-8 file names, broken JSON, bad split names, write failures.

Each bad sample must be skipped and reported by id (``--strict``: stop at the first one, naming it), and the rest
of the conversion must be kept, with no ``.tmp`` shard left behind.
"""

import io
import json
import os

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from xpl_hf import AudioError, XPLProcessor
from xpl_hf.audio import MIN_SECONDS, check_waveform
from xpl_hf.data import convert as prepare
from xpl_hf.data.loading import load_labeled
from xpl_hf.data.schema import DataValidationError

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0


def _jpeg(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


def _wav(seconds=0.1, rate=16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(round(seconds * rate)) / rate
    sf.write(buf, 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _folder(root, entries, media=("a",)):
    """``root/`` with ``<name>.jpg`` / ``<name>.wav`` for each name in ``media`` and ``annotations.json``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in media:
        (root / f"{name}.jpg").write_bytes(_jpeg())
        (root / f"{name}.wav").write_bytes(_wav())
    (root / "annotations.json").write_text(json.dumps(entries))
    return root


def _good(sid, split="train", **extra):
    return {"id": sid, "image": "a.jpg", "audio": "a.wav", "split": split, **extra}


def _convert(src, out, **kwargs):
    return prepare.convert("folder", str(src), str(out), progress=False, **kwargs)


def _problems(out):
    """{id: problem} from the written conversion_report.json."""
    saved = json.loads((out / prepare.REPORT_NAME).read_text())
    return {p["id"]: p for p in saved["problems"]}


def _no_tmp_left(out):
    return not [n for n in os.listdir(out / "data") if n.endswith(".tmp")] if (out / "data").exists() else True


# ------------------------------------------------------------------------------------------------------------- paths


def test_folder_refuses_media_outside_its_root(tmp_path, monkeypatch):
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "holiday.jpg").write_bytes(_jpeg((1, 2, 3)))
    (secret / "voice.wav").write_bytes(_wav())
    src = tmp_path / "dataset"
    src.mkdir()
    (src / "link.jpg").symlink_to(secret / "holiday.jpg")  # a link pointing out
    (src / "sub").mkdir()
    (src / "sub" / "inner.jpg").write_bytes(_jpeg())
    (src / "inside_link.jpg").symlink_to(src / "sub" / "inner.jpg")  # a link that stays inside: fine
    entries = [
        _good("ok"),
        _good("ok-inside-link", image="inside_link.jpg"),
        _good("ok-dotdot-inside", image="sub/../a.jpg"),
        _good("dotdot", image="../private/holiday.jpg"),
        _good("absolute", image=str(secret / "holiday.jpg")),
        _good("symlink-out", image="link.jpg"),
        _good("audio-out", audio="../private/voice.wav"),
    ]
    _folder(src, entries)
    out = tmp_path / "out"
    uploaded = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo, **kw: uploaded.append(dict(self)))
    report = prepare.main(["folder", "--input", str(src), "--output", str(out), "--push_to_hub", "me/x"])

    refused = ["dotdot", "absolute", "symlink-out", "audio-out"]
    assert sorted(report.skipped["media outside input folder"]) == sorted(refused)
    assert report.written == {"train": 3}
    problems = _problems(out)
    for sid in refused:
        assert problems[sid]["reason"] == "media outside input folder" and problems[sid]["action"] == "skipped"
        assert str(src) in problems[sid]["detail"]
    assert "../private/holiday.jpg" in problems["dotdot"]["detail"]
    # nothing from outside was embedded, nor would be uploaded
    rows = load_labeled(str(out), "train", require_boxes=False, decode_images=False)
    assert sorted(rows["id"]) == ["ok", "ok-dotdot-inside", "ok-inside-link"]
    assert _jpeg((1, 2, 3)) not in {r["image"]["bytes"] for r in rows}
    assert sorted(uploaded[0]["train"]["id"]) == ["ok", "ok-dotdot-inside", "ok-inside-link"]
    with pytest.raises(DataValidationError, match="'dotdot'.*outside"):
        _convert(src, tmp_path / "strict", strict=True)


def test_non_string_media_path_is_reported_per_sample(tmp_path):
    src = _folder(tmp_path / "src", [_good("ok"), _good("int-image", image=5), _good("list-audio", audio=["a.wav"]),
                                     _good("nul-image", image="a\x00.jpg")])
    out = tmp_path / "out"
    report = _convert(src, out)
    assert report.written == {"train": 1}
    assert report.skipped["bad image path"] == ["int-image", "nul-image"]
    assert report.skipped["bad audio path"] == ["list-audio"]
    assert "int" in _problems(out)["int-image"]["detail"]


# -------------------------------------------------------------------------------------------- keys and empty boxes


def test_folder_empty_box_list_and_unknown_keys_are_reported(tmp_path):
    box = [[0.1, 0.1, 0.5, 0.5]]
    entries = [
        _good("labeled", boxes=box),
        _good("empty-boxes", boxes=[]),
        _good("typo", bboxes=box),
        _good("rule-no-boxes", gt_rule="union"),
        _good("plain-unlabeled"),
    ]
    src = _folder(tmp_path / "src", entries)
    out = tmp_path / "out"
    report = _convert(src, out)
    # every sample is kept; the surprising ones are reported
    assert report.written == {"train": 5} and not report.skipped
    assert report.reported == {"empty box list": ["empty-boxes"], "unknown key": ["typo"],
                               "gt_rule without boxes": ["rule-no-boxes"]}
    problems = _problems(out)
    assert "did you mean 'boxes'" in problems["typo"]["detail"] and problems["typo"]["action"] == "kept"
    rows = {r["id"]: r for r in load_labeled(str(out), "train", require_boxes=False, decode_images=False)}
    # an explicit empty box list means "no annotation": unlabeled, never a labeled sample with an all-zero target
    assert rows["empty-boxes"]["gt_rule"] == "none" and rows["empty-boxes"]["boxes"] == []
    assert rows["rule-no-boxes"]["gt_rule"] == "none"
    assert rows["typo"]["gt_rule"] == "none"
    assert rows["labeled"]["gt_rule"] == "union"
    assert "empty box list" in (out / prepare.REPORT_NAME).read_text()
    with pytest.raises(DataValidationError, match="'empty-boxes'.*empty box list"):
        _convert(src, tmp_path / "strict", strict=True)
    _folder(tmp_path / "src2", [_good("labeled", boxes=box), _good("typo", bboxes=box)])
    with pytest.raises(DataValidationError, match="'typo'.*bboxes"):
        _convert(tmp_path / "src2", tmp_path / "strict2", strict=True)


# ---------------------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("seconds, rate, reason, message", [
    (0.005, 16000, "audio too short", "ms long; at least 10 ms"),
    (1.0, 500, "bad sample rate", "outside"),
])
def test_audio_rule_is_the_processors(tmp_path, seconds, rate, reason, message):
    """One clip, one verdict: what the processor refuses, the converter refuses (with the same message)."""
    clip = _wav(seconds, rate)
    src = _folder(tmp_path / "src", [_good("ok"), _good("bad", audio="bad.wav")])
    (src / "bad.wav").write_bytes(clip)
    out = tmp_path / "out"
    report = _convert(src, out)
    assert report.written == {"train": 1} and report.skipped == {reason: ["bad"]}
    assert message in _problems(out)["bad"]["detail"]
    with pytest.raises(AudioError, match=message):
        XPLProcessor(image_size=32)(audio=clip)
    waveform, file_rate = sf.read(io.BytesIO(clip), dtype="float32")
    with pytest.raises(AudioError, match=message) as caught:
        check_waveform(waveform, file_rate)
    assert caught.value.reason == reason


def test_shortest_accepted_clip_passes_both(tmp_path):
    clip = _wav(MIN_SECONDS, 16000)
    src = _folder(tmp_path / "src", [_good("ok", audio="short.wav")])
    (src / "short.wav").write_bytes(clip)
    assert _convert(src, tmp_path / "out").written == {"train": 1}
    assert XPLProcessor(image_size=32)(audio=clip)["audio_waveform"].shape[0] == 1


# ------------------------------------------------------------------------------------------------------ encodings


def test_non_utf8_file_name_is_skipped_and_the_rest_kept(tmp_path):
    src = tmp_path / "flickr"
    for d in ("frames", "audio", "Annotations"):
        (src / d).mkdir(parents=True)
    for stem in (b"111", b"caf\xe9"):  # a Latin-1 file name
        with open(os.path.join(os.fsencode(src / "frames"), stem + b".jpg"), "wb") as f:
            f.write(_jpeg())
        with open(os.path.join(os.fsencode(src / "audio"), stem + b".wav"), "wb") as f:
            f.write(_wav())
    (src / "test.csv").write_text("")
    out = tmp_path / "out"
    report = prepare.convert("flickr", str(src), str(out), test_list=None, unlabeled=True, progress=False)
    assert report.written == {"unlabeled": 1}
    assert report.skipped == {"id not UTF-8": ["caf\udce9"]}
    assert "caf\\xe9" in _problems(out)["caf\udce9"]["detail"]
    assert [r["id"] for r in load_labeled(str(out), "unlabeled", require_boxes=False)] == ["111"]
    assert _no_tmp_left(out)
    assert "caf" in report.summary()  # printable
    report.summary().encode("utf-8")


def test_non_utf8_media_name_is_made_safe(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"caf\xe9.jpg"), "wb") as f:
        f.write(_jpeg())
    (src / "a.wav").write_bytes(_wav())
    (src / "annotations.json").write_text(json.dumps([_good("ok", image="caf\udce9.jpg")]))
    out = tmp_path / "out"
    assert _convert(src, out).written == {"train": 1}
    (row,) = load_labeled(str(out), "train", require_boxes=False, decode_images=False)
    assert row["image"]["path"] == "caf\\xe9.jpg" and row["image"]["bytes"] == _jpeg()


# --------------------------------------------------------------------------------------------- annotation files


def test_broken_annotation_json_names_file_and_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "annotations.json").write_text('[\n  {"id": "a", "image": "a.jpg"},\n  {"id": "b",, }\n]\n')
    with pytest.raises(DataValidationError, match=r"annotations\.json.*line 3"):
        _convert(src, tmp_path / "out")
    (src / "annotations.json").write_bytes(b'[{"id": "caf\xe9"}]')  # Latin-1, not UTF-8
    with pytest.raises(DataValidationError, match=r"annotations\.json.*UTF-8"):
        _convert(src, tmp_path / "out")
    (src / "vggss.json").write_text("{not json")
    with pytest.raises(DataValidationError, match=r"vggss\.json.*line 1"):
        prepare.vggss_annotations(str(src / "vggss.json"))


def test_bad_split_name_is_refused_by_name(tmp_path):
    src = _folder(tmp_path / "src", [_good("ok"), _good("evil", split="../evil"), _good("int-split", split=3)])
    out = tmp_path / "out"
    report = _convert(src, out)
    assert report.written == {"train": 1}
    assert report.skipped == {"bad split name": ["evil", "int-split"]}
    assert "'../evil'" in _problems(out)["evil"]["detail"]
    assert not (tmp_path / "evil").exists()
    with pytest.raises(DataValidationError, match=r"'evil'.*'\.\./evil'"):
        _convert(src, tmp_path / "strict", strict=True)


def test_bad_vggss_entry_and_unreadable_xml_do_not_stop_the_conversion(tmp_path):
    src = tmp_path / "vgg"
    for d in ("frames", "audio"):
        (src / d).mkdir(parents=True)
    for sid in ("v1", "v2"):
        (src / "frames" / f"{sid}.jpg").write_bytes(_jpeg())
        (src / "audio" / f"{sid}.wav").write_bytes(_wav())
    annotations = [{"file": "v1", "class": "dog", "bbox": [[0.1, 0.1, 0.6, 0.6]]}, {"file": "v2"}, "junk"]
    (src / "vggss.json").write_text(json.dumps(annotations))
    out = tmp_path / "out"
    report = prepare.convert("vggss", str(src), str(out), annotations=str(src / "vggss.json"), progress=False)
    assert report.written == {"test": 1}
    assert report.skipped == {"bad annotation": ["<entry 1>", "<entry 2>"]}
    assert "bbox" in _problems(out)["<entry 1>"]["detail"]
    with pytest.raises(DataValidationError, match="entry 1"):
        prepare.convert("vggss", str(src), str(tmp_path / "s"), annotations=str(src / "vggss.json"),
                        progress=False, strict=True)

    flickr = tmp_path / "flickr"
    for d in ("frames", "audio", "Annotations"):
        (flickr / d).mkdir(parents=True)
    for sid in ("1", "2"):
        (flickr / "frames" / f"{sid}.jpg").write_bytes(_jpeg())
        (flickr / "audio" / f"{sid}.wav").write_bytes(_wav())
    (flickr / "Annotations" / "1.xml").write_text("<annotation><bbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax>"
                                                  "<ymax>40</ymax></bbox></annotation>")
    (flickr / "Annotations" / "2.xml").mkdir()  # unreadable: a folder
    (flickr / "test.csv").write_text("1\n2\n")
    out = tmp_path / "out_flickr"
    report = prepare.convert("flickr", str(flickr), str(out), test_list=str(flickr / "test.csv"), progress=False)
    assert report.written == {"test": 1} and report.skipped == {"bad annotation": ["2"]}


# ------------------------------------------------------------------------------------------------ write failures


def test_write_failure_leaves_no_tmp_shard(tmp_path, monkeypatch):
    src = _folder(tmp_path / "src", [_good("ok")])
    out = tmp_path / "out"

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        _convert(src, out)
    assert _no_tmp_left(out)


# ------------------------------------------------------------------------------- boxes of the wrong type (18.3)


@pytest.mark.parametrize("boxes", [{}, "", 0, False, "0.1 0.2 0.3 0.4", [0.1, 0.2, 0.5, 0.6]])
def test_boxes_of_another_type_are_refused_not_stored_as_labeled_rows_without_a_box(tmp_path, boxes):
    src = _folder(tmp_path / "src", [_good("ok", split="labeled", boxes=[[0.1, 0.1, 0.5, 0.5]]),
                                     _good("odd", split="labeled", boxes=boxes)])
    out = tmp_path / "out"
    report = _convert(src, out)
    assert report.written == {"labeled": 1} and report.skipped == {"bad boxes": ["odd"]}
    assert "boxes" in _problems(out)["odd"]["detail"]
    assert [r["id"] for r in load_labeled(str(out), "labeled")] == ["ok"]


# ------------------------------------------------------------------- converters crash instead of reporting (18.7)


def test_annotations_nested_too_deep_are_an_error_naming_the_file(tmp_path):
    src = _folder(tmp_path / "src", [])
    (src / "annotations.json").write_text('[{"id": "a", "boxes": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    with pytest.raises(DataValidationError, match=r"annotations\.json.*nests too deep"):
        _convert(src, tmp_path / "out")


def test_vggss_bbox_that_is_a_number_is_reported_not_a_type_error(tmp_path):
    (tmp_path / "vggss.json").write_text(json.dumps([{"file": "a_000001", "bbox": 5},
                                                      {"file": "b_000002", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]))
    records, stats = prepare.vggss_annotations(str(tmp_path / "vggss.json"))
    assert list(records) == ["b_000002"] and [b["entry"] for b in stats["bad_entries"]] == [0]


def test_non_utf8_id_list_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "test.csv").write_bytes(b"caf\xe9,1\n")
    with pytest.raises(DataValidationError, match=r"test\.csv.*UTF-8"):
        prepare.convert("flickr", str(tmp_path), str(tmp_path / "out"), test_list=str(tmp_path / "test.csv"),
                        progress=False)
    with pytest.raises(SystemExit):
        prepare.main(["flickr", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--test_list",
                      str(tmp_path / "test.csv")])


def test_output_that_is_a_file_is_an_error_naming_it(tmp_path):
    src = _folder(tmp_path / "src", [_good("ok")])
    (tmp_path / "out").write_text("I am a file")
    with pytest.raises(DataValidationError, match=r"--output .*out.* is a file"):
        _convert(src, tmp_path / "out")
    assert (tmp_path / "out").read_text() == "I am a file"


def test_a_corrupt_shard_is_named_and_a_rerun_rewrites_it(tmp_path):
    from xpl_hf.data.shards import split_shard_paths, write_dataset_card

    src = _folder(tmp_path / "src", [_good("a"), _good("b", split="test")])
    out = tmp_path / "out"
    _convert(src, out)
    (shard,) = split_shard_paths(str(out), "train")
    with open(shard, "r+b") as f:  # a disk error: the footer is gone
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(ValueError, match=os.path.basename(shard)):
        write_dataset_card(str(out), "folder")
    assert _convert(src, out).written == {"train": 1, "test": 1}
    assert [r["id"] for r in load_labeled(str(out), "train", require_boxes=False)] == ["a"]


def test_an_empty_annotation_list_or_nothing_written_is_an_error(tmp_path):
    src = _folder(tmp_path / "src", [])
    with pytest.raises(DataValidationError, match="empty"):
        _convert(src, tmp_path / "out")
    src = _folder(tmp_path / "src2", [{"id": "x", "image": "none.jpg", "audio": "a.wav"}])
    with pytest.raises(DataValidationError, match="no row was written"):
        _convert(src, tmp_path / "out2")
    assert json.loads((tmp_path / "out2" / prepare.REPORT_NAME).read_text())["skipped"] == {"missing image": ["x"]}


def test_a_huge_sparse_audio_file_is_refused_from_its_size_unread(tmp_path, monkeypatch):
    src = _folder(tmp_path / "src", [_good("ok"), {"id": "huge", "image": "a.jpg", "audio": "huge.wav"}])
    with open(src / "huge.wav", "wb") as f:
        f.write(_wav()[:44])  # a valid WAV header, then a 4 GiB hole
        f.truncate(4 * 2**30)
    real_open, opened = open, []

    def watching_open(path, *args, **kwargs):
        opened.append(os.fspath(path) if isinstance(path, (str, os.PathLike)) else path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watching_open)
    report = _convert(src, tmp_path / "out")
    assert report.skipped == {"audio file too large": ["huge"]}
    assert str(src / "huge.wav") not in opened


# ----------------------------------------------------------------------- own data without guessing (21.2, 21.6)


def test_rows_without_split_get_the_documented_defaults_and_counts_add_up(tmp_path):
    boxed = [{"id": f"b{i}", "image": "a.jpg", "audio": "a.wav", "boxes": [[0.1, 0.1, 0.5, 0.5]]} for i in range(10)]
    plain = [{"id": f"u{i}", "image": "a.jpg", "audio": "a.wav"} for i in range(3)]
    src = _folder(tmp_path / "src", boxed + plain)
    report = _convert(src, tmp_path / "out")
    assert report.written == {"labeled": 10, "unlabeled": 3} and report.boxed == {"labeled": 10, "unlabeled": 0}
    # held-out splits carved from the boxed rows: reproducible, whatever the entries' order
    carved = {}
    for name, entries in (("a", boxed + plain), ("b", plain + boxed[::-1])):
        (src / "annotations.json").write_text(json.dumps(entries))
        report = _convert(src, tmp_path / name, validation_fraction=0.2, test_fraction=0.3, seed=7)
        assert report.written == {"labeled": 5, "validation": 2, "test": 3, "unlabeled": 3}
        carved[name] = {s: sorted(r["id"] for r in load_labeled(str(tmp_path / name), s, require_boxes=False))
                        for s in ("validation", "test")}
    assert carved["a"] == carved["b"]
    other = _convert(src, tmp_path / "c", validation_fraction=0.2, test_fraction=0.3, seed=8)
    assert other.written["validation"] == 2
    # the command line's defaults carve 10% + 10%, so that a folder without split fields trains as it is
    (src / "annotations.json").write_text(json.dumps(boxed + plain))
    report = prepare.main(["folder", "--input", str(src), "--output", str(tmp_path / "cli")])
    assert report.written == {"labeled": 8, "validation": 1, "test": 1, "unlabeled": 3}


def test_summary_separates_boxed_rows_from_rows_without_box(tmp_path):
    entries = [_good(f"b{i}", split="labeled", boxes=[[0.1, 0.1, 0.5, 0.5]]) for i in range(4)]
    entries += [_good("empty", split="labeled", boxes=[]), _good("typo", split="labeled", bboxes=[[0, 0, 1, 1]])]
    report = _convert(_folder(tmp_path / "src", entries), tmp_path / "out")
    assert report.written == {"labeled": 6} and report.boxed == {"labeled": 4}
    assert "labeled=6 (4 boxed, 2 without box)" in report.summary()
    saved = json.loads((tmp_path / "out" / prepare.REPORT_NAME).read_text())
    assert saved["written"] == {"labeled": 6} and saved["boxed"] == {"labeled": 4}


def test_folder_help_documents_annotations_and_split_values(capsys):
    with pytest.raises(SystemExit):
        prepare.main(["folder", "-h"])
    text = capsys.readouterr().out
    for word in ("annotations.json", '"video"', "``time``", "``boxes``", "``split``", "labeled", "unlabeled",
                 "validation", "test", "--validation_fraction"):
        assert word in text, word
