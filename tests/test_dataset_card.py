"""Every folder the package writes loads with `datasets.load_dataset(folder)` (eager and streaming) and has a card."""

import json

import datasets
import pytest
from conftest import make_benchmark
from huggingface_hub import DatasetCard

from xpl_hf.data import convert as prepare
from xpl_hf.data.loading import load_labeled
from xpl_hf.data.schema import SYNTHETIC_FEATURES, XPL_FEATURES
from xpl_hf.data.shards import DATASET_SOURCES, ShardWriter, write_dataset_card
from xpl_hf.data.synthetic import SyntheticConfig, generate_sample

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
ROWS = {"labeled": 4, "unlabeled": 6, "validation": 2, "test": 2}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("parent") / "xpl-synthetic"
    return make_benchmark(root, num_labeled=4, num_unlabeled=6, num_validation=2, num_test=2, image_size=32)


def test_load_dataset_reads_every_split(bench, tmp_path):
    ds = datasets.load_dataset(str(bench), cache_dir=str(tmp_path))
    assert {name: len(split) for name, split in ds.items()} == ROWS
    for name, split in ds.items():
        assert split.column_names == ["id", "image", "audio", "boxes", "gt_rule", "label", "true_boxes", "objects"]
        row = split[0]
        assert isinstance(row["audio"], dict) and row["audio"]["bytes"][:4] == b"RIFF"  # undecoded: no FFmpeg needed
        assert row["image"].size == (32, 32)
        if name == "unlabeled":
            assert row["boxes"] == [] and len(row["true_boxes"]) == 1
        else:
            assert len(row["boxes"]) == 1 and row["true_boxes"] is None


@pytest.mark.parametrize("split", list(ROWS))
def test_streaming_iterates_every_split(bench, split):
    stream = datasets.load_dataset(str(bench), split=split, streaming=True)
    rows = list(stream)
    assert len(rows) == ROWS[split]
    assert all(isinstance(r["audio"], dict) for r in rows)


def test_card_metadata_and_body(bench):
    card = DatasetCard.load(bench / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["configs"] == [{"config_name": "default",
                                "data_files": [{"split": s, "path": f"data/{s}-*"} for s in sorted(ROWS)]}]
    info = data["dataset_info"]
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == ROWS
    assert [f["name"] for f in info["features"]] == list(SYNTHETIC_FEATURES)
    assert {"name": "audio", "dtype": {"audio": {"decode": False}}} in info["features"]
    text = card.text
    assert "## Provenance" in text and "python -m xpl_hf.data.synthetic" in text
    assert "| `true_boxes` |" in text and "| `objects` |" in text and "| `unlabeled` | 6 | 4 |" in text
    assert 'load_dataset("xpl-synthetic")' in text  # the folder's name, never its local path
    assert str(bench.parent) not in card.content


def test_converted_folder_has_a_card_and_loads(bench, tmp_path):
    src = tmp_path / "raw"
    export_folder(bench, src)
    out = tmp_path / "converted"
    prepare.convert("folder", str(src), str(out), progress=False)
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == DATASET_SOURCES["folder"].license
    assert "python -m xpl_hf.data.convert folder" in card.text and str(tmp_path) not in card.content
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {name: len(split) for name, split in ds.items()} == {"labeled": 4, "unlabeled": 6, "test": 2}
    assert len(list(datasets.load_dataset(str(out), split="unlabeled", streaming=True))) == 6


def export_folder(bench, out):
    """The benchmark's labeled, unlabeled and test splits as a plain folder (images, wavs, annotations.json)."""
    (out / "media").mkdir(parents=True)
    entries = []
    for split in ("labeled", "unlabeled", "test"):
        for row in load_labeled(str(bench), split, require_boxes=False):
            img, wav = f"media/{row['id']}.jpg", f"media/{row['id']}.wav"
            (out / img).write_bytes(row["image"]["bytes"])
            (out / wav).write_bytes(row["audio"]["bytes"])
            entry = {"id": row["id"], "image": img, "audio": wav, "label": row["label"], "split": split}
            if split != "unlabeled":
                entry["boxes"] = row["boxes"]
            entries.append(entry)
    (out / "annotations.json").write_text(json.dumps(entries))


def test_splits_with_different_features_get_one_config_each(tmp_path):
    config = SyntheticConfig(image_size=32)
    for split, features in (("labeled", XPL_FEATURES), ("unlabeled", SYNTHETIC_FEATURES)):
        with ShardWriter(str(tmp_path), split, features) as writer:
            for i in range(2):
                row = generate_sample(config, split, i)
                writer.write({k: row[k] for k in features})
    write_dataset_card(str(tmp_path), "folder")
    card = DatasetCard.load(tmp_path / "README.md")
    assert [c["config_name"] for c in card.data.configs] == ["labeled", "unlabeled"]
    assert 'load_dataset("' in card.text and '"labeled")' in card.text
    ds = datasets.load_dataset(str(tmp_path), "unlabeled", split="unlabeled", cache_dir=str(tmp_path / "cache"))
    assert "true_boxes" in ds.column_names and len(ds) == 2


def test_card_writer_errors(tmp_path):
    assert write_dataset_card(str(tmp_path), "synthetic") is None  # nothing to describe
    with ShardWriter(str(tmp_path), "test", XPL_FEATURES) as writer:
        writer.write({k: v for k, v in generate_sample(SyntheticConfig(image_size=32), "test", 0).items()
                      if k in XPL_FEATURES})
    with pytest.raises(ValueError, match="unknown dataset source 'youtube'"):
        write_dataset_card(str(tmp_path), "youtube")
