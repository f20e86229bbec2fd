"""The ``objects`` column through ``convert folder`` (checked by check_objects) and into ``python -m xpl_hf.evaluate``'s
object-selection check; ``gt_rule: "none"`` with boxes refused by the converter and by the loaders."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from PIL import Image

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.data import convert as cv
from xpl_hf.data.loading import load_labeled
from xpl_hf.data.schema import DataValidationError
from xpl_hf.evaluate import main as evaluate_main

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
DOG, CAR = [0.05, 0.1, 0.45, 0.6], [0.55, 0.4, 0.95, 0.9]


def _media(root):
    root.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 30)).save(buf, format="PNG")
    (root / "f.png").write_bytes(buf.getvalue())
    sf.write(str(root / "a.wav"), 0.3 * np.sin(np.arange(16000) / 5.0), 16000, subtype="PCM_16")
    return root


def _scene(i, sounding="dog"):
    return {"id": f"t{i}", "image": "f.png", "audio": "a.wav", "split": "test",
            "boxes": [DOG if sounding == "dog" else CAR],
            "objects": [{"box": DOG, "label": "dog", "sounding": sounding == "dog"},
                        {"box": CAR, "label": "car", "sounding": sounding == "car"}]}


def test_objects_survive_the_folder_converter_and_bad_ones_are_named(tmp_path):
    src = _media(tmp_path / "src")
    entries = [_scene(0), _scene(1, "car"),
               {"id": "plain", "image": "f.png", "audio": "a.wav", "boxes": [DOG], "split": "test"},
               {**_scene(2), "id": "bad_box", "objects": [{"box": [0.5, 0.5, 0.1, 0.9], "label": "x",
                                                          "sounding": True}]},
               {**_scene(3), "id": "no_flag", "objects": [{"box": DOG, "label": "dog"}]},
               {**_scene(4), "id": "not_list", "objects": {"box": DOG}},
               {"id": "u0", "image": "f.png", "audio": "a.wav"}]
    (src / "annotations.json").write_text(json.dumps(entries))
    report = cv.convert("folder", str(src), str(tmp_path / "out"), progress=False)
    assert report.written == {"test": 3, "unlabeled": 1}
    assert sorted(report.skipped["bad objects"]) == ["bad_box", "no_flag", "not_list"]
    problems = {p["id"]: p["detail"] for p in report.problems}
    assert "object 0" in problems["bad_box"] and "sounding" in problems["no_flag"]
    rows = {r["id"]: r for r in load_labeled(str(tmp_path / "out"), "test")}
    assert rows["t1"]["objects"] == [{"box": pytest.approx(DOG), "label": "dog", "sounding": False},
                                     {"box": pytest.approx(CAR), "label": "car", "sounding": True}]
    assert rows["plain"]["objects"] is None  # unknown for that row
    assert "objects" in load_labeled(str(tmp_path / "out"), "unlabeled", require_boxes=False).column_names


def test_evaluate_reports_object_selection_for_a_converted_folder(tmp_path, capsys):
    src = _media(tmp_path / "src")
    (src / "annotations.json").write_text(json.dumps([_scene(i, "dog" if i % 2 else "car") for i in range(4)]))
    cv.convert("folder", str(src), str(tmp_path / "data"), progress=False)
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=16))
    model.save_pretrained(tmp_path / "model")
    XPLProcessor(image_size=64).save_pretrained(tmp_path / "model")
    report = evaluate_main(["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"),
                            "--split", "test", "--output_dir", str(tmp_path / "eval"), "--device", "cpu",
                            "--overlays_per_group", "0"])
    printed = capsys.readouterr().out
    assert "Object selection over 4 scenes listing their objects: chance 50.0%" in printed
    selection = report["listening"]["selection"]
    assert selection["num_scenes"] == 4 and selection["chance"] == pytest.approx(50.0)


def test_scenes_whose_objects_do_not_sound_are_not_called_scenes_without_objects(tmp_path, capsys):
    src = _media(tmp_path / "src")
    (src / "annotations.json").write_text(json.dumps([_scene(i, sounding="none") for i in range(2)]))
    cv.convert("folder", str(src), str(tmp_path / "data"), progress=False)
    torch.manual_seed(0)
    XPLModel(XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=16)).save_pretrained(tmp_path / "model")
    XPLProcessor(image_size=64).save_pretrained(tmp_path / "model")
    report = evaluate_main(["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"),
                            "--split", "test", "--output_dir", str(tmp_path / "eval"), "--device", "cpu",
                            "--overlays_per_group", "0"])
    printed = capsys.readouterr().out
    assert report["listening"]["selection"] is None
    assert "no scene lists its objects" not in printed and "both a sounding and a silent object" in printed


def test_gt_rule_none_with_boxes_is_refused_by_the_converter(tmp_path):
    src = _media(tmp_path / "src")
    (src / "annotations.json").write_text(json.dumps([
        {"id": "ok", "image": "f.png", "audio": "a.wav", "boxes": [DOG]},
        {"id": "contradiction", "image": "f.png", "audio": "a.wav", "boxes": [DOG], "gt_rule": "none"}]))
    report = cv.convert("folder", str(src), str(tmp_path / "out"), progress=False)
    assert report.skipped["bad gt_rule"] == ["contradiction"] and report.written == {"labeled": 1}


def test_gt_rule_none_with_boxes_is_refused_by_the_loaders(tmp_path):
    from xpl_hf.data.schema import xpl_features
    from xpl_hf.data.shards import write_shard

    src = _media(tmp_path / "src")
    image, audio = (src / "f.png").read_bytes(), (src / "a.wav").read_bytes()
    rows = [{"id": i, "image": {"bytes": image, "path": "f.png"}, "audio": {"bytes": audio, "path": "a.wav"},
             "boxes": [DOG], "gt_rule": rule, "label": ""} for i, rule in (("a", "union"), ("b", "none"))]
    write_shard(str(tmp_path / "hand" / "data" / "test-00000-of-00001.parquet"), rows, xpl_features())
    with pytest.raises(DataValidationError, match=r"row 1 \(id 'b'\) has gt_rule 'none'.*carries boxes"):
        load_labeled(str(tmp_path / "hand"), "test")
    assert pq.read_table(str(tmp_path / "hand" / "data" / "test-00000-of-00001.parquet")).num_rows == 2
