"""The offline synthetic benchmark: splits, schema, determinism, manifest reuse, class families."""

import io
import json
import os

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import soundfile as sf

from xpl_hf.data.schema import DataValidationError, check_objects
from xpl_hf.data.synthetic import (
    CLASSES,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SyntheticConfig,
    generate_benchmark,
    generate_sample,
    main,
)

SIZES = dict(num_labeled=12, num_unlabeled=16, num_validation=6, num_test=6, image_size=64)


def test_generate_splits_and_schema(tmp_path):
    manifest = generate_benchmark(str(tmp_path), **SIZES, num_workers=1, progress=False)
    assert {k: v["num_rows"] for k, v in manifest["splits"].items()} == {
        "labeled": 12,
        "unlabeled": 16,
        "validation": 6,
        "test": 6,
    }
    assert len(manifest["splits"]["unlabeled"]["files"]) == 4  # shardable across 2 ranks
    table = pq.read_table(tmp_path / manifest["splits"]["labeled"]["files"][0])
    assert table.column_names == ["id", "image", "audio", "boxes", "gt_rule", "label", "true_boxes", "objects"]
    row = table.slice(0, 1).to_pylist()[0]
    assert row["true_boxes"] is None  # labeled splits: the box is in `boxes`
    image = PIL.Image.open(io.BytesIO(row["image"]["bytes"]))
    assert image.format == "JPEG" and image.size == (64, 64)
    wave, sr = sf.read(io.BytesIO(row["audio"]["bytes"]))
    assert sr == 16000 and wave.shape == (48000,) and sf.info(io.BytesIO(row["audio"]["bytes"])).subtype == "PCM_16"
    assert row["gt_rule"] == "union" and row["label"] in {c.name for c in CLASSES} and len(row["boxes"]) == 1
    x0, y0, x1, y1 = row["boxes"][0]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    unl = pq.read_table(tmp_path / manifest["splits"]["unlabeled"]["files"][0]).to_pylist()
    assert all(r["boxes"] == [] and r["gt_rule"] == "none" and len(r["true_boxes"]) == 1 for r in unl)


def test_reuse_and_regenerate(tmp_path):
    m1 = generate_benchmark(str(tmp_path), **SIZES, num_workers=1, progress=False)
    stamp = os.path.getmtime(tmp_path / MANIFEST_NAME)
    m2 = generate_benchmark(str(tmp_path), **SIZES, num_workers=1, progress=False)
    assert m1 == m2 and os.path.getmtime(tmp_path / MANIFEST_NAME) == stamp  # reused
    # A folder written by an older generator (another on-disk format) is regenerated, not reused.
    stale = {**m1, "version": GENERATOR_VERSION - 1}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(stale))
    m2 = generate_benchmark(str(tmp_path), **SIZES, num_workers=1, progress=False)
    assert m2["version"] == GENERATOR_VERSION and os.path.getmtime(tmp_path / MANIFEST_NAME) > stamp
    stamp = os.path.getmtime(tmp_path / MANIFEST_NAME)
    (tmp_path / "README.md").unlink()  # a folder without its dataset card is not complete either
    generate_benchmark(str(tmp_path), **SIZES, num_workers=1, progress=False)
    assert (tmp_path / "README.md").is_file() and os.path.getmtime(tmp_path / MANIFEST_NAME) > stamp
    m3 = generate_benchmark(str(tmp_path), **{**SIZES, "num_test": 4}, num_workers=1, progress=False)
    assert m3["splits"]["test"]["num_rows"] == 4
    assert json.load(open(tmp_path / MANIFEST_NAME))["params"]["num_test"] == 4


def test_deterministic_and_worker_independent(tmp_path):
    config = SyntheticConfig(image_size=64)
    a, b = generate_sample(config, "labeled", 3), generate_sample(config, "labeled", 3)
    assert a == b
    assert generate_sample(config, "labeled", 4)["id"] != a["id"]
    # same output with a process pool (>= 64 samples uses one)
    kw = dict(num_labeled=64, num_unlabeled=0, num_validation=0, num_test=0, image_size=32, progress=False)
    generate_benchmark(str(tmp_path / "p1"), **kw, num_workers=1)
    generate_benchmark(str(tmp_path / "p2"), **kw, num_workers=2)
    t1 = pq.read_table(tmp_path / "p1/data/labeled-00000-of-00001.parquet")
    t2 = pq.read_table(tmp_path / "p2/data/labeled-00000-of-00001.parquet")
    assert t1.equals(t2)


def test_class_families_are_distinct():
    assert len(CLASSES) >= 8
    looks = {(c.shape, c.texture) for c in CLASSES}
    assert len(looks) == len(CLASSES)  # no two classes share shape and texture
    config = SyntheticConfig(image_size=64)
    rows = [generate_sample(config, "labeled", i) for i in range(12)]
    for r in rows:
        wave, _ = sf.read(io.BytesIO(r["audio"]["bytes"]))
        assert np.isfinite(wave).all() and 0.2 < np.abs(wave).max() <= 1.0


def test_command_line(tmp_path, capsys):
    main(
        [
            "--out",
            str(tmp_path),
            "--num_labeled",
            "4",
            "--num_unlabeled",
            "4",
            "--num_validation",
            "2",
            "--num_test",
            "2",
            "--image_size",
            "48",
            "--seed",
            "1",
            "--num_workers",
            "1",
        ]
    )
    assert "labeled=4" in capsys.readouterr().out
    assert (tmp_path / "data" / "unlabeled-00003-of-00004.parquet").exists()


def test_objects_list_every_object_and_mark_the_sounding_one():
    config = SyntheticConfig(image_size=64)
    counts = {2: 0, 3: 0}
    sounding_positions = []
    for index in range(40):
        row = generate_sample(config, "test", index)
        objects = check_objects(row["objects"], sample_id=row["id"])
        assert len(objects) in counts and len({o["label"] for o in objects}) == len(objects)  # distinct classes
        counts[len(objects)] += 1
        sounding = [o for o in objects if o["sounding"]]
        assert len(sounding) == 1
        assert sounding[0]["box"] == row["boxes"][0] and sounding[0]["label"] == row["label"]
        sounding_positions.append([o["sounding"] for o in objects].index(True))
    assert counts[2] and counts[3]  # both scene sizes occur
    assert len(set(sounding_positions)) == 3  # the sounding object is not always the first one drawn
    unlabeled = generate_sample(config, "unlabeled", 0)
    assert [o["box"] for o in unlabeled["objects"] if o["sounding"]] == unlabeled["true_boxes"]


def test_objects_column_round_trips_through_parquet(tmp_path):
    kw = dict(num_labeled=0, num_unlabeled=0, num_validation=0, num_test=3, image_size=32, progress=False)
    generate_benchmark(str(tmp_path), **kw, num_workers=1)
    rows = pq.read_table(tmp_path / "data/test-00000-of-00001.parquet").to_pylist()
    for index, row in enumerate(rows):
        expected = generate_sample(SyntheticConfig(**{k: v for k, v in kw.items() if k != "progress"}), "test", index)
        assert [o["label"] for o in row["objects"]] == [o["label"] for o in expected["objects"]]
        np.testing.assert_allclose([o["box"] for o in row["objects"]], [o["box"] for o in expected["objects"]],
                                   rtol=1e-6)
        assert [o["sounding"] for o in row["objects"]] == [o["sounding"] for o in expected["objects"]]


def test_check_objects_names_the_sample_and_the_object():
    good = {"box": [0.1, 0.2, 0.5, 0.6], "label": "dog", "sounding": True}
    assert check_objects(None) is None and check_objects([]) == []
    assert check_objects([good]) == [good]
    bad_values = {
        "box": {**good, "box": [0.5, 0.2, 0.1, 0.6]},  # x1 < x0
        "outside": {**good, "box": [0.1, 0.2, 1.5, 0.6]},
        "nan": {**good, "box": [0.1, float("nan"), 0.5, 0.6]},
        "three numbers": {**good, "box": [0.1, 0.2, 0.5]},
        "label": {**good, "label": 3},
        "sounding": {**good, "sounding": "yes"},
        "keys": {"box": good["box"], "label": "dog"},
    }
    for name, bad in bad_values.items():
        try:
            check_objects([good, bad], sample_id="scene-7")
        except DataValidationError as error:
            assert "'scene-7'" in str(error) and "object 1" in str(error), name
        else:
            raise AssertionError(f"{name}: accepted {bad}")
