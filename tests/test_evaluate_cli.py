"""`python -m xpl_hf.evaluate` on a tiny generated dataset and a tiny randomly initialised saved model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.data import generate_benchmark, load_labeled
from xpl_hf.data.decoding import decode_audio, decode_image
from xpl_hf.evaluate import main
from xpl_hf.evaluation import ListeningSettings
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.metrics.protocol import localization_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_cli")
    generate_benchmark(str(root / "data"), num_labeled=2, num_unlabeled=0, num_validation=2, num_test=7,
                       image_size=64, seed=0, num_workers=0, progress=False, unlabeled_shards=1)
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64))
    model.save_pretrained(root / "model")
    XPLProcessor(image_size=64).save_pretrained(root / "model")
    return root


def test_cli_reports_branches_labels_subsets_and_overlays(assets, capsys):
    test = load_labeled(str(assets / "data"), "test")
    ids = list(test["id"])
    (assets / "heard.txt").write_text("\n".join(ids[:3]) + "\n")
    (assets / "unheard.csv").write_text("".join(f"{i},0\n" for i in ids[3:]) + "not-in-the-set,0\n")
    out = assets / "out"
    report = main([
        "--model", str(assets / "model"), "--dataset", str(assets / "data"), "--split", "test",
        "--batch_size", "3", "--output_dir", str(out), "--heard_list", str(assets / "heard.txt"),
        "--unheard_list", str(assets / "unheard.csv"), "--overlays_per_group", "2", "--device", "cpu",
    ])
    printed = capsys.readouterr().out
    assert "| fused |" in printed and "A (VGGish)" in printed and "B (SoundNet-8)" in printed
    for row in ("| true |", "| swapped |", "| silence |", "| noise |", "| true - swapped |", "selection"):
        assert row in printed.split("Listening checks:")[1]
    # the extended protocol beside it: AP@0.5 / max-F1@0.5 per map and id list, per kind of negative, per box size
    swapped = report["listening"]["extended"]["swapped"]
    assert f"| {swapped['fused']['ap50']:.2f} | {swapped['fused']['max_f1_50']:.2f} |" in printed
    heard = report["subsets"]["heard"]["extended"]["swapped"]["fused"]
    assert "| fused, heard (3) |" in printed and f"| {heard['ap50']:.2f} | {heard['max_f1_50']:.2f} |" in printed
    for text in ("AP@0.5 / max-F1@0.5 / ROC AUC", "| noise |", "| small (< 32²) |", "| huge (>= 144²) |"):
        assert text in printed.split("Listening checks:")[1]

    saved = json.loads((out / "results.json").read_text())
    assert saved["num_samples"] == report["num_samples"] == 7
    assert set(saved["metrics"]) == {"a", "b", "fused", "num_samples"}
    for branch in ("a", "b", "fused"):
        assert set(saved["metrics"][branch]) == {"ciou", "auc", "mean_ciou"}
        assert 0 <= saved["metrics"][branch]["auc"] <= 100
    assert saved["subsets"]["heard"]["num_samples"] == 3 and saved["subsets"]["heard"]["missing"] == 0
    assert saved["subsets"]["unheard"]["num_samples"] == 4 and saved["subsets"]["unheard"]["missing"] == 1
    assert set(saved["per_label"]) == set(test["label"])
    assert sum(entry["num_samples"] for entry in saved["per_label"].values()) == 7
    assert saved["protocol"]["upsampling"] == "bicubic" and saved["protocol"]["align_corners"] is False
    assert saved["per_sample"]["ids"] == ids
    assert (out / saved["overlays"]).read_bytes()[:4] == b"\x89PNG"

    # the same numbers as running the model by hand on each row and scoring with localization_metrics
    model = XPLModel.from_pretrained(assets / "model").eval()
    processor = XPLProcessor.from_pretrained(assets / "model")
    fused, gts = [], []
    with torch.inference_mode():
        for row in test:
            waveform, rate = decode_audio(row["audio"])
            inputs = processor(images=decode_image(row["image"]), audio=waveform, sampling_rate=rate)
            fused.append(model(**inputs).maps[0])
            gts.append(ground_truth_map(row["boxes"], row["gt_rule"]))
    expected = localization_metrics(fused, gts)
    np.testing.assert_allclose(saved["per_sample"]["ciou_fused"], expected["per_sample_ciou"], atol=1e-6)

    # listening: the figures in results.json, one per-scene row per scene (the generated scenes list their objects)
    listening = saved["listening"]
    assert set(listening["metrics"]) == {"true", "swapped", "silence", "noise"}
    assert listening["metrics"]["true"] == {b: saved["metrics"][b] for b in ("a", "b", "fused")}
    assert listening["swap"] == {"rule": "another clip of a different label", "seed": 0}
    assert listening["selection"]["num_scenes"] == 7
    chance = np.mean([1 / len(objects) for objects in test["objects"]])
    assert listening["selection"]["chance"] == pytest.approx(100 * chance)
    assert saved["summary"]["listening/selection/true/fused"] == listening["selection"]["variants"]["true"]["fused"][
        "accuracy"]
    with open(out / saved["per_scene"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ids and {r["label"] for r in rows} == set(test["label"])
    assert all(r["swap_donor"] != r["id"] and labels[r["swap_donor"]] != r["label"] for r in rows
               for labels in [dict(zip(ids, test["label"]))])
    np.testing.assert_allclose([float(r["ciou_true_fused"]) for r in rows], saved["per_sample"]["ciou_fused"])
    assert [float(r["confidence_true_fused"]) for r in rows] == saved["per_sample"]["confidence_fused"]
    assert saved["listening"]["sizes"] == saved["sizes"] and sum(e["num_samples"] for e in saved["sizes"].values()) == 7
    assert set(saved["listening"]["extended"]) == {"swapped", "silence", "noise"}
    assert all(0 <= int(r["selected_true_fused"]) < int(r["num_objects"]) for r in rows)


def test_cli_max_samples_and_bad_arguments(assets, tmp_path):
    report = main(["--model", str(assets / "model"), "--dataset", str(assets / "data"), "--max_samples", "2",
                   "--output_dir", str(tmp_path), "--overlays_per_group", "0"])
    assert report["num_samples"] == 2 and "overlays" not in report
    assert not (tmp_path / "overlays.png").exists()
    quiet = main(["--model", str(assets / "model"), "--dataset", str(assets / "data"), "--max_samples", "3",
                  "--output_dir", str(tmp_path / "quiet"), "--overlays_per_group", "0", "--no_listening"])
    assert "listening" not in quiet and "listening/swapped/fused/ciou" not in quiet["summary"]
    assert (tmp_path / "quiet" / "per_scene.csv").read_text().splitlines()[0] == (
        "id,label,gt_area,ciou_a,ciou_b,ciou_fused,confidence_a,confidence_b,confidence_fused")
    single = main(["--model", str(assets / "model"), "--dataset", str(assets / "data"), "--max_samples", "1",
                   "--output_dir", str(tmp_path / "single"), "--overlays_per_group", "0"])  # no other clip to swap in
    assert list(single["listening"]["metrics"]) == ["true", "silence", "noise"]
    assert single["listening"]["swap"]["rule"] == "not run: a single scene"
    with pytest.raises(ValueError, match="NAME=IDS_FILE"):
        main(["--model", str(assets / "model"), "--dataset", str(assets / "data"), "--subset", "heard"])
    with pytest.raises(SystemExit):
        main(["--model", str(assets / "model"), "--dataset", str(assets / "data"), "--batch_size", "0"])
    with pytest.raises(SystemExit):
        main(["--model", str(assets / "model"), "--dataset", str(assets / "data"), "--noise_rms", "0"])


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--noise_rms", "inf", "--noise_rms must be a positive finite number, got inf"),
    ("--noise_rms", "nan", "--noise_rms must be a positive finite number, got nan"),
    ("--listening_seed", "-1", "--listening_seed must be non-negative"),
])
def test_bad_listening_flags_are_refused_before_any_work(flag, value, message, tmp_path, capsys, monkeypatch):
    """Refused by the parser, naming the flag, before the model or the dataset is read (neither exists here)."""
    monkeypatch.setattr("xpl_hf.evaluate.load_model_and_processor", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "no-data"), flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="noise_rms must be a positive finite number|seed must be non-negative"):
        ListeningSettings(**({"noise_rms": float(value)} if flag == "--noise_rms" else {"seed": int(value)}))


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "xpl_hf.evaluate", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--model", "--dataset", "--split", "--batch_size", "--output_dir", "--max_samples", "--heard_list",
                 "--no_listening", "--listening_seed", "--noise_color", "--noise_rms"):
        assert flag in done.stdout


def test_a_training_checkpoint_is_refused_with_the_folder_to_pass(assets, tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-100"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"training checkpoint .* Pass the run's output folder \(.*run\)"):
        main(["--model", str(checkpoint), "--dataset", str(assets / "data")])
