"""Converters (xpl_hf.data.convert): folder round-trip with bad inputs, VGG-SS json, Flickr XML, push_to_hub."""

import io
import json
import os

import datasets
import numpy as np
import pytest
import soundfile as sf
from conftest import make_benchmark

from xpl_hf.data import convert as prepare
from xpl_hf.data.loading import load_labeled, load_unlabeled_stream
from xpl_hf.data.schema import DataValidationError
from xpl_hf.metrics.ground_truth import ground_truth_map

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
METADATA = "/work/shared/data/avsl_metadata"
if not os.path.isdir(METADATA):  # the repository's CI may place it elsewhere
    METADATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "avsl_metadata")
VGGSS_JSON = os.path.join(METADATA, "vggss.json")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_benchmark(str(root), num_labeled=10, num_unlabeled=8, num_validation=0, num_test=4)
    return root


def export_folder(bench, out):
    """Write the generated splits as a plain folder (images, wavs, annotations.json)."""
    (out / "media").mkdir(parents=True)
    entries, media = [], {}
    for split in ("labeled", "unlabeled", "test"):
        for row in load_labeled(str(bench), split, require_boxes=False):
            img, wav = f"media/{row['id']}.jpg", f"media/{row['id']}.wav"
            (out / img).write_bytes(row["image"]["bytes"])
            (out / wav).write_bytes(row["audio"]["bytes"])
            media[row["id"]] = (img, wav)
            entry = {"id": row["id"], "image": img, "audio": wav, "label": row["label"], "split": split}
            if split != "unlabeled":
                entry["boxes"] = row["boxes"]
            entries.append(entry)
    return entries, media


def _wav_bytes(wave, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, wave, 16000, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_folder_round_trip_with_bad_inputs(bench, tmp_path):
    src = tmp_path / "folder"
    entries, media = export_folder(bench, src)
    n_good = {"labeled": 10, "unlabeled": 8, "test": 4}
    img, wav = media[entries[0]["id"]]
    # bad samples
    (src / "media/trunc.jpg").write_bytes((src / img).read_bytes()[:300])
    (src / "media/empty.wav").write_bytes(_wav_bytes(np.zeros(0, np.float32)))
    nan = np.zeros(8000, np.float32)
    nan[3] = np.nan
    (src / "media/nan.wav").write_bytes(_wav_bytes(nan, "FLOAT"))
    (src / "media/garbage.wav").write_bytes(b"not a wav at all")
    bad = [
        {"id": "corrupt-jpeg", "image": "media/trunc.jpg", "audio": wav, "boxes": [[0, 0, 1, 1]], "split": "labeled"},
        {"id": "empty-audio", "image": img, "audio": "media/empty.wav", "boxes": [[0, 0, 1, 1]], "split": "labeled"},
        {"id": "nan-audio", "image": img, "audio": "media/nan.wav", "boxes": [[0, 0, 1, 1]], "split": "labeled"},
        {"id": "garbage-audio", "image": img, "audio": "media/garbage.wav", "split": "unlabeled"},
        {"id": "no-image", "image": "media/missing.jpg", "audio": wav, "split": "unlabeled"},
        {"id": "zero-area", "image": img, "audio": wav, "boxes": [[0.3, 0.3, 0.3, 0.8]], "split": "labeled"},
        {"image": img, "audio": wav, "split": "labeled"},  # no id
        {**entries[0], "label": "duplicate"},  # duplicated id
        # repaired boxes: out of range -> clipped, inverted -> reordered, zero-area box dropped, sample kept
        {
            "id": "fixable",
            "image": img,
            "audio": wav,
            "split": "labeled",
            "label": "x",
            "boxes": [[-0.1, 0.2, 0.5, 1.2], [0.9, 0.8, 0.6, 0.5], [0.2, 0.2, 0.2, 0.2]],
        },
    ]
    (src / "annotations.json").write_text(json.dumps(entries + bad))
    out = tmp_path / "converted"
    report = prepare.main(["folder", "--input", str(src), "--output", str(out), "--shards_per_split", "2"])
    assert report.written == {"labeled": n_good["labeled"] + 1, "unlabeled": n_good["unlabeled"], "test": 4}
    assert report.skipped == {
        "missing id": [f"<entry {len(entries) + 6}>"],
        "duplicate id": [entries[0]["id"]],
        "corrupt image": ["corrupt-jpeg"],
        "empty audio": ["empty-audio"],
        "NaN audio": ["nan-audio"],
        "no valid box": ["zero-area"],
        "unreadable audio": ["garbage-audio"],
        "missing image": ["no-image"],
    }
    assert report.repaired_ids == ["fixable"] and report.boxes.reordered == 1 and report.boxes.clipped == 1
    assert json.loads((out / prepare.REPORT_NAME).read_text())["num_skipped"] == 8
    # the converted folder loads eagerly and streamed, with the original content
    labeled = load_labeled(str(out), "labeled")
    original = {e["id"]: e for e in entries}
    by_id = {r["id"]: r for r in labeled}
    np.testing.assert_allclose(by_id["fixable"]["boxes"], [[0.0, 0.2, 0.5, 1.0], [0.6, 0.5, 0.9, 0.8]], atol=1e-6)
    some = entries[1]["id"]
    np.testing.assert_allclose(by_id[some]["boxes"], original[some]["boxes"], atol=1e-6)
    assert by_id[some]["image"]["bytes"] == (src / original[some]["image"]).read_bytes()
    assert {r["gt_rule"] for r in labeled} == {"union"}
    streamed = [[r["id"] for r in load_unlabeled_stream(str(out), "unlabeled", rank=k, world_size=2)] for k in (0, 1)]
    assert set(streamed[0]).isdisjoint(streamed[1])
    assert sorted(streamed[0] + streamed[1]) == sorted(e["id"] for e in entries if e["split"] == "unlabeled")
    assert {r["gt_rule"] for r in load_labeled(str(out), "unlabeled", require_boxes=False)} == {"none"}


def test_folder_strict_mode(bench, tmp_path):
    src = tmp_path / "folder"
    entries, _ = export_folder(bench, src)
    entries.append({**entries[0], "id": "broken", "audio": "media/none.wav"})
    (src / "annotations.json").write_text(json.dumps(entries))
    with pytest.raises(DataValidationError, match="broken"):
        prepare.convert("folder", str(src), str(tmp_path / "out"), strict=True, progress=False)
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        prepare.convert("folder", str(tmp_path), str(tmp_path / "out2"), progress=False)


def test_vggss_json_to_ground_truth_maps(tmp_path):
    records, stats = prepare.vggss_annotations(VGGSS_JSON)
    assert len(records) == 5158 and stats["annotated_entries"] == 5158
    assert stats["corrupt_box_entries"] == 12 and stats["box_repairs"]["inverted_dropped"] == 12
    assert len(stats["zero_area_box_entries"]) == 6
    assert sorted(stats["entries_without_box"]) == ["M1P1xla8rg0_000000", "MKC9LvRivTM_000030"]
    # the cleaned boxes give exactly the protocol's maps (checked on the corrupt entries + 300 others)
    raw = json.load(open(VGGSS_JSON))
    odd = set(stats["corrupt_box_ids"]) | set(stats["zero_area_box_entries"])
    subset = [e for e in raw if e["file"] in odd] + [e for e in raw[:300] if e["file"] not in odd]
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    protocol = {e["file"]: ground_truth_map(e["bbox"], "union") for e in subset}  # the protocol's rule, raw
    for file, gt in protocol.items():
        np.testing.assert_array_equal(ground_truth_map(records[file]["boxes"], "union"), gt, err_msg=file)
    assert protocol["MKC9LvRivTM_000030"].sum() == 0


def test_vggss_converter(bench, tmp_path):
    rows = list(load_labeled(str(bench), "test"))
    raw = json.load(open(VGGSS_JSON))
    chosen = [raw[0]["file"], raw[1]["file"], "MKC9LvRivTM_000030"]  # the last: only a corrupt box
    src = tmp_path / "vggsound"
    (src / "frames").mkdir(parents=True)
    (src / "audio").mkdir()
    for vid, row in zip(chosen + ["extra_clip_000001"], rows):
        (src / "frames" / f"{vid}.jpg").write_bytes(row["image"]["bytes"])
        (src / "audio" / f"{vid}.wav").write_bytes(row["audio"]["bytes"])
    (src / "heard.csv").write_text(f"{chosen[0]}\n")
    (src / "unheard.csv").write_text(f"{chosen[1]}\nMKC9LvRivTM_000030\n")
    out = tmp_path / "out"
    report = prepare.convert(
        "vggss",
        str(src),
        str(out),
        annotations=VGGSS_JSON,
        heard_list=str(src / "heard.csv"),
        unheard_list=str(src / "unheard.csv"),
        unlabeled=True,
        progress=False,
    )
    assert report.written == {"test": 3, "heard_test": 1, "unheard_test": 2, "unlabeled": 1}
    assert len(report.skipped["missing media"]) == 5158 - 3
    assert report.extra["corrupt_box_entries"] == 12
    test = {r["id"]: r for r in load_labeled(str(out), "test")}
    assert test["MKC9LvRivTM_000030"]["boxes"] == [] and test[chosen[0]]["label"] == raw[0]["class"]
    np.testing.assert_allclose(test[chosen[0]]["boxes"], raw[0]["bbox"], atol=1e-6)
    assert {r["gt_rule"] for r in test.values()} == {"union"}


FLICKR_XML = """<?xml version="1.0"?>
<annotation><filename>{id}.jpg</filename>
{boxes}
</annotation>"""


def _flickr_xml(sample_id, boxes):
    body = "".join(
        f"<object><bbox><idx>{i}</idx><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
        "</bbox></object>"
        for i, b in enumerate(boxes)
    )
    return FLICKR_XML.format(id=sample_id, boxes=body)


def test_flickr_converter(bench, tmp_path):
    rows = list(load_labeled(str(bench), "labeled"))
    src = tmp_path / "flickr"
    for d in ("frames", "audio", "Annotations"):
        (src / d).mkdir(parents=True)
    ids = ["10000130166", "10007936344", "3908875357", "555", "777"]  # 3908875357: no frame (as in the download)
    boxes = {
        "10000130166": [[10, 20, 100, 200], [12, 22, 110, 190], [0, 30, 256, 256]],
        "10007936344": [[50, 60, 70, 80]],
        "555": [[1, 2, 3, 4]],
        "3908875357": [[1, 2, 3, 4]],
    }
    for sid, row in zip(ids, rows):
        if sid != "3908875357":
            (src / "frames" / f"{sid}.jpg").write_bytes(row["image"]["bytes"])
            (src / "audio" / f"{sid}.wav").write_bytes(row["audio"]["bytes"])
        if sid in boxes:
            (src / "Annotations" / f"{sid}.xml").write_text(_flickr_xml(sid, boxes[sid]))
    (src / "test.csv").write_text("10000130166,202\n10007936344,0\n3908875357,5\n")
    (src / "sup.txt").write_text("555\n999\n")  # 999: no annotation, no media
    out = tmp_path / "out"
    report = prepare.convert(
        "flickr",
        str(src),
        str(out),
        test_list=str(src / "test.csv"),
        labeled_list=str(src / "sup.txt"),
        unlabeled=True,
        progress=False,
    )
    assert report.written == {"test": 2, "labeled": 1, "unlabeled": 1}
    assert report.skipped == {"missing media": ["3908875357"], "missing annotation": ["999"]}
    test = {r["id"]: r for r in load_labeled(str(out), "test")}
    np.testing.assert_allclose(test["10000130166"]["boxes"], np.array(boxes["10000130166"]) / 256, atol=1e-7)
    assert test["10000130166"]["gt_rule"] == "flickr"
    gt = ground_truth_map(test["10000130166"]["boxes"], "flickr")
    assert set(np.unique(gt)) == {0.0, 0.5, 1.0}
    assert [r["id"] for r in load_labeled(str(out), "unlabeled", require_boxes=False)] == ["777"]


def test_push_to_hub_offline(bench, tmp_path, monkeypatch):
    src = tmp_path / "folder"
    entries, _ = export_folder(bench, src)
    (src / "annotations.json").write_text(json.dumps(entries))
    calls = []

    def fake_push(self, repo_id, **kwargs):
        calls.append((dict(self), repo_id, kwargs))

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push)
    prepare.main(
        [
            "folder",
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out"),
            "--shards_per_split",
            "2",
            "--push_to_hub",
            "me/xpl-toy",
            "--private",
        ]
    )
    ((splits, repo, kwargs),) = calls
    assert repo == "me/xpl-toy" and kwargs["private"] is True
    assert set(splits) == {"labeled", "unlabeled", "test"} and kwargs["num_shards"]["unlabeled"] == 2
    assert len(splits["labeled"]) == 10 and isinstance(splits["labeled"].features["image"], datasets.Image)


def test_every_vggss_name_is_a_canonical_vggsound_key():
    """vggss.json and the open-set lists use <ytid>_<start:06d>; the csv form (ytid, unpadded start) maps onto it,
    including the 107 ids that start with '-'."""
    from xpl_hf.data.convert import vggsound_key

    names = [e["file"] for e in json.load(open(VGGSS_JSON))]
    for lst in ("vggss_heard_test.csv", "vggss_unheard_test.csv"):
        names += [line.split(",")[0].strip() for line in open(os.path.join(METADATA, lst)) if line.strip()]
    assert all(vggsound_key(n) == n for n in names)
    assert all(vggsound_key(n.rsplit("_", 1)[0], str(int(n.rsplit("_", 1)[1]))) == n for n in names)
    assert sum(n.startswith("-") for n in names[:5158]) == 107
