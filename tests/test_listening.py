"""The listening checks: the swap permutation, the noise clips, object selection (xpl_hf.metrics.listening) and their
run inside evaluate_model (xpl_hf.evaluation), checked against plain forwards with the replaced sound."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.evaluation import ListeningSettings, evaluate_model, save_per_scene_scores
from xpl_hf.hub import build_model_card
from xpl_hf.maps import branch_confidences
from xpl_hf.metrics.extended import extended_protocol, ground_truth_areas, size_subsets
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.metrics.listening import (
    box_pixels,
    format_listening_table,
    noise_clip_index,
    noise_waveform,
    object_means,
    select_objects,
    summarize_selection,
    swap_permutation,
)
from xpl_hf.metrics.protocol import per_sample_ciou

# ------------------------------------------------------------------------------------------------ swap permutation


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_swap_never_keeps_a_clip_or_its_label(seed):
    rng = np.random.default_rng(seed)
    labels = list(rng.choice(["dog", "bell", "drum", "siren"], size=301, p=[0.45, 0.25, 0.2, 0.1]))
    donors, rule = swap_permutation(labels, seed=seed)
    assert sorted(donors.tolist()) == list(range(301))  # a permutation: every sound used once
    assert all(labels[j] != labels[i] for i, j in enumerate(donors))
    assert rule == "another clip of a different label"
    again, _ = swap_permutation(labels, seed=seed)
    np.testing.assert_array_equal(donors, again)  # deterministic
    assert not np.array_equal(donors, swap_permutation(labels, seed=seed + 100)[0])


def test_swap_without_labels_is_a_derangement_and_half_is_the_limit():
    for n in (2, 3, 10, 500):
        donors, rule = swap_permutation([""] * n)
        assert sorted(donors.tolist()) == list(range(n)) and (donors != np.arange(n)).all()
        assert rule.startswith("another clip (the set has no labels")
    # empty labels only need another clip; labelled clips another label
    labels = ["a", "a", "", "b", "", "c"]
    for seed in range(20):
        donors, _ = swap_permutation(labels, seed=seed)
        assert all(j != i and (not labels[i] or labels[j] != labels[i]) for i, j in enumerate(donors))
    # exactly half is still possible, more than half is not: then only "another clip" holds, and says why
    donors, rule = swap_permutation(["a", "a", "b", "c"])
    assert all(["a", "a", "b", "c"][j] != ["a", "a", "b", "c"][i] for i, j in enumerate(donors))
    donors, rule = swap_permutation(["a", "a", "a", "b"])
    assert (donors != np.arange(4)).all() and "'a' holds 3 of 4" in rule
    with pytest.raises(ValueError, match="at least 2 clips"):
        swap_permutation(["a"])


# ------------------------------------------------------------------------------------------------------- noise


def test_noise_is_seeded_per_clip_at_the_stated_level():
    a = noise_waveform("clip-1", 16000, 16000, seed=0)
    np.testing.assert_array_equal(a, noise_waveform("clip-1", 16000, 16000, seed=0))
    assert a.dtype == np.float32 and a.shape == (16000,)
    assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(0.1, rel=1e-5)
    assert not np.array_equal(a, noise_waveform("clip-2", 16000, 16000, seed=0))
    assert not np.array_equal(a, noise_waveform("clip-1", 16000, 16000, seed=1))
    # pink: power falls as 1/f, so each octave holds about the same power; white: power grows with the band's width
    power = {c: np.abs(np.fft.rfft(noise_waveform("x", 64000, 16000, color=c).astype(np.float64))) ** 2
             for c in ("pink", "white")}
    frequencies = np.fft.rfftfreq(64000, 1 / 16000)
    octave = lambda p, low: p[(frequencies >= low) & (frequencies < 2 * low)].sum()  # noqa: E731
    assert octave(power["pink"], 4000) / octave(power["pink"], 250) == pytest.approx(1.0, abs=0.25)
    assert octave(power["white"], 4000) / octave(power["white"], 250) == pytest.approx(16.0, rel=0.25)
    with pytest.raises(ValueError, match="noise color"):
        noise_waveform("x", 10, 16000, color="blue")


# --------------------------------------------------------------------------------------------- object selection


def test_box_pixels_follow_the_vggss_ground_truth_rule():
    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0 = rng.uniform(0, 0.8, 2)
        box = [x0, y0, x0 + rng.uniform(0.01, 0.2), y0 + rng.uniform(0.01, 0.2)]
        px0, py0, px1, py1 = box_pixels(box)
        region = np.zeros((224, 224), dtype=np.float32)
        region[py0:py1, px0:px1] = 1
        np.testing.assert_array_equal(region, ground_truth_map([box], "union"))
    assert box_pixels([0.5, 0.5, 0.501, 0.502]) == (112, 112, 113, 113)  # under a pixel: one pixel kept


def test_object_means_match_slicing_of_the_upsampled_map():
    rng = np.random.default_rng(1)
    maps = torch.from_numpy(rng.random((3, 5, 9)).astype(np.float32))  # h != w: the axes cannot be swapped
    objects = [[{"box": [0.1, 0.2, 0.6, 0.5]}, {"box": [0.0, 0.0, 1.0, 1.0]}], [], [{"box": [0.3, 0.3, 0.31, 0.9]}]]
    means = object_means(maps, objects)
    big = torch.nn.functional.interpolate(maps[:, None].double(), size=(224, 224), mode="bicubic",
                                          align_corners=False)[:, 0].numpy()
    for scene, items in enumerate(objects):
        expected = [big[scene][y0:y1, x0:x1].mean() for x0, y0, x1, y1 in (box_pixels(o["box"]) for o in items)]
        np.testing.assert_allclose(means[scene], expected, rtol=1e-12)


def _scenes(rng: np.random.Generator, count: int) -> list[list[dict]]:
    """Scenes of 2-3 side-by-side objects (disjoint boxes), one of them sounding."""
    scenes = []
    for _ in range(count):
        n = int(rng.integers(2, 4))
        width = 1.0 / n
        sounding = int(rng.integers(n))
        scenes.append([{"box": [k * width + 0.02, rng.uniform(0, 0.3), (k + 1) * width - 0.02, rng.uniform(0.6, 1)],
                        "label": f"class{k}", "sounding": k == sounding} for k in range(n)])
    return scenes


def _box_map(items: list[dict], size: int = 28) -> np.ndarray:
    """A map that is 1 inside the sounding object's box and 0 elsewhere."""
    out = np.zeros((size, size), dtype=np.float32)
    for item in items:
        if item["sounding"]:
            x0, y0, x1, y1 = (int(round(v * size)) for v in item["box"])
            out[y0:y1, x0:x1] = 1.0
    return out


def test_a_map_on_the_sounding_object_selects_every_scene():
    scenes = _scenes(np.random.default_rng(2), 40)
    picked = select_objects(torch.from_numpy(np.stack([_box_map(s) for s in scenes])), scenes)
    assert (picked["score"] == 1).all()
    assert [s[i]["sounding"] for s, i in zip(scenes, picked["selected"])] == [True] * 40
    summary = summarize_selection(picked["score"], picked["chance"])
    assert summary["accuracy"] == 100.0 and summary["num_scenes"] == 40
    assert summary["chance"] == pytest.approx(100 * np.mean([1 / len(s) for s in scenes]))


def test_audio_blind_maps_score_the_chance_level():
    rng = np.random.default_rng(3)
    scenes = _scenes(rng, 30)
    chance = 100 * np.mean([1 / len(s) for s in scenes])
    # a constant map ties every object: exactly chance, scene by scene
    flat = select_objects(torch.full((30, 7, 7), 0.3), scenes)
    np.testing.assert_allclose(flat["score"], [1 / len(s) for s in scenes])
    assert summarize_selection(flat["score"], flat["chance"])["accuracy"] == pytest.approx(chance)
    # a map made from the picture alone (here: random, fixed per scene) scores chance in expectation over which object
    # sounds: averaging over every choice of the sounding object gives exactly mean(1 / number of objects)
    picture_maps = torch.from_numpy(rng.random((30, 7, 7)).astype(np.float32))
    totals = []
    for scene, picture_map in zip(scenes, picture_maps):
        scores = []
        for sounding in range(len(scene)):
            relabelled = [{**o, "sounding": k == sounding} for k, o in enumerate(scene)]
            scores.append(select_objects(picture_map[None], [relabelled])["score"][0])
        totals.append(np.mean(scores))
    assert 100 * np.mean(totals) == pytest.approx(chance)


def test_ties_count_as_a_fraction_and_scenes_without_a_choice_take_no_part():
    left, right = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]
    two = [{"box": left, "label": "a", "sounding": True}, {"box": right, "label": "b", "sounding": False}]
    symmetric = torch.ones(1, 224, 224)
    symmetric[0, 100:124, :] = 2.0  # a horizontal band: both halves get the same mean
    assert select_objects(symmetric, [two])["score"][0] == 0.5
    three = [*two, {"box": [0.0, 0.0, 1.0, 0.1], "label": "c", "sounding": False}]
    assert select_objects(symmetric, [three])["score"][0] == 0.5  # the two halves tie above the top strip
    not_taking_part = [None, [], two[:1], [{**two[0]}, {**two[1], "sounding": True}]]
    picked = select_objects(torch.ones(4, 7, 7), not_taking_part)
    assert np.isnan(picked["score"]).all() and (picked["selected"] == -1).all()
    assert summarize_selection(picked["score"], picked["chance"]) is None


# ------------------------------------------------------------------------------------------- inside evaluate_model

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(image_size=IMAGE_SIZE, embed_dim=16, vggish_fc_dim=32, clip_seconds=1.0)).eval()
    processor = XPLProcessor(image_size=IMAGE_SIZE, clip_seconds=1.0)
    rng = np.random.default_rng(0)
    n = 7
    audio = [processor.audio_features(rng.standard_normal(16000).astype(np.float32) * 0.2, 16000) for _ in range(n)]
    scenes = _scenes(rng, n)
    rows = {
        "ids": [f"s{i}" for i in range(n)],
        "pixel_values": torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE),
        "audio_log_mel": torch.stack([a["audio_log_mel"] for a in audio]),
        "audio_waveform": torch.stack([a["audio_waveform"] for a in audio]),
        "gt_maps": torch.from_numpy(np.stack([ground_truth_map([o["box"] for o in s if o["sounding"]], "union")
                                              for s in scenes])),
        "labels": ["dog", "bell", "dog", "drum", "bell", "drum", "siren"],
    }
    return model, processor, rows, {f"s{i}": s for i, s in enumerate(scenes)}


def _batches(rows, size):
    n = len(rows["ids"])
    for start in range(0, n, size):
        part = {k: v[start : start + size] for k, v in rows.items()}
        part["pixel_values_b"] = part["pixel_values"]
        part["is_labeled"] = torch.ones(len(part["ids"]), dtype=torch.bool)
        yield part


def _forward_scores(model, rows, audio) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        output = model(pixel_values=rows["pixel_values"], **audio)
    return {b: per_sample_ciou(getattr(output, f), rows["gt_maps"]) for b, f in
            (("a", "maps_a"), ("b", "maps_b"), ("fused", "maps"))}


def test_listening_scores_equal_forwards_with_the_replaced_sound(tiny, tmp_path):
    model, processor, rows, objects = tiny
    settings = ListeningSettings(seed=3, noise_color="white", noise_rms=0.05, noise_clips=3)
    result = evaluate_model(model, _batches(rows, 3), processor=processor, listening=settings, objects=objects)
    listening = result["listening"]
    per_scene = listening["per_scene"]
    donors, rule = swap_permutation(rows["labels"], seed=3)
    assert per_scene["swap_donor"] == [f"s{j}" for j in donors] and listening["swap"]["rule"] == rule
    ids = rows["ids"]
    clips = [noise_clip_index(i, 3) for i in ids]
    assert per_scene["noise_clip"] == clips and len(set(clips)) > 1
    noise = {}
    for rate in (16000, 22050):
        noise[rate] = torch.from_numpy(np.stack([noise_waveform(f"noise-{k}", rate, rate, seed=3, color="white",
                                                                rms=0.05) for k in clips]))
    variants = {
        "true": {k: rows[k] for k in ("audio_log_mel", "audio_waveform")},
        "swapped": {k: rows[k][donors] for k in ("audio_log_mel", "audio_waveform")},
        "silence": {"audio_log_mel": processor.log_mel_examples(torch.zeros(7, 16000)),
                    "audio_waveform": torch.zeros(7, 22050)},
        "noise": {"audio_log_mel": processor.log_mel_examples(noise[16000]),
                  "audio_waveform": noise[22050].clamp(-1, 1) * 256},
    }
    for variant, audio in variants.items():
        expected = _forward_scores(model, rows, audio)
        for branch in ("a", "b", "fused"):
            np.testing.assert_allclose(per_scene[f"ciou_{variant}_{branch}"], expected[branch], atol=1e-6,
                                       err_msg=f"{variant} {branch}")
    # drops are true minus variant
    drop = listening["drops"]["swapped"]["fused"]["ciou"]
    assert drop == listening["metrics"]["true"]["fused"]["ciou"] - listening["metrics"]["swapped"]["fused"]["ciou"]
    # object selection on the true maps equals the pure function on the forward's maps
    with torch.inference_mode():
        fused = model(pixel_values=rows["pixel_values"], **variants["true"]).maps
    picked = select_objects(fused, [objects[i] for i in ids])
    np.testing.assert_allclose(per_scene["correct_true_fused"], picked["score"])
    assert listening["selection"]["chance"] == pytest.approx(100 * np.mean([1 / len(objects[i]) for i in ids]))
    # the batch size changes neither the donors nor the noise (only the convolutions' rounding)
    again = evaluate_model(model, _batches(rows, 5), processor=processor, listening=settings, objects=objects)
    assert again["listening"]["per_scene"]["swap_donor"] == per_scene["swap_donor"]
    for column in ("ciou_swapped_fused", "ciou_noise_a", "ciou_silence_b"):
        np.testing.assert_allclose(again["listening"]["per_scene"][column], per_scene[column], atol=1e-4)
    # the per-scene file: one row per scene, every column
    path = save_per_scene_scores(result, tmp_path / "scores.csv")
    with open(path) as handle:
        written = list(csv.DictReader(handle))
    assert [r["id"] for r in written] == ids and [r["label"] for r in written] == rows["labels"]
    assert set(written[0]) == set(per_scene)
    assert [float(r["ciou_swapped_fused"]) for r in written] == per_scene["ciou_swapped_fused"]  # exact round trip
    assert [int(r["selected_noise_b"]) for r in written] == per_scene["selected_noise_b"]
    table = format_listening_table(result)
    for text in ("| true |", "| swapped |", "| silence |", "| noise |", "| true - swapped |", "chance"):
        assert text in table
    # the model card: listening figures in the model-index and the table in the text
    entry = {"dataset": "xpl-synthetic", "split": "test", **{b: result["metrics"][b] for b in ("a", "b", "fused")},
             "listening": {k: v for k, v in listening.items() if k != "per_scene"}}
    card = build_model_card(model.config, entry)
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index["ciou_swapped"] == round(listening["metrics"]["swapped"]["fused"]["ciou"], 4)
    assert index["selection_noise_b"] == round(listening["selection"]["variants"]["noise"]["b"]["accuracy"], 4)
    assert index["selection_chance"] == round(listening["selection"]["chance"], 4)
    assert "### Listening checks (xpl-synthetic, test)" in card.text and "| true - noise |" in card.text


def test_a_model_deaf_to_the_sound_loses_nothing(tiny):
    model, processor, rows, objects = tiny
    deaf = XPLModel(model.config).eval()
    deaf.load_state_dict(model.state_dict())
    with torch.no_grad():
        for branch in (deaf.branch_a, deaf.branch_b):  # e = normalize(bias): the same embedding for every sound
            branch.audio_proj.weight.zero_()
            branch.audio_proj.bias.copy_(torch.linspace(-1, 1, branch.audio_proj.bias.numel()))
    listening = evaluate_model(deaf, _batches(rows, 4), processor=processor, listening=True,
                               objects=objects)["listening"]
    for variant, per_branch in listening["drops"].items():
        for branch, drop in per_branch.items():
            assert drop == {"ciou": 0.0, "auc": 0.0}, (variant, branch)
    accuracies = {v: listening["selection"]["variants"][v]["fused"]["accuracy"] for v in listening["metrics"]}
    assert len(set(accuracies.values())) == 1


def test_listening_refuses_a_model_whose_maps_are_not_the_pairing(tiny):
    model, processor, rows, _ = tiny

    class Shifted(torch.nn.Module):  # maps that are not sigmoid(w <V, e> + b) of the returned features
        def __init__(self):
            super().__init__()
            self.inner, self.branch_a, self.branch_b = model, model.branch_a, model.branch_b

        def forward(self, **inputs):
            output = self.inner(**inputs)
            output.maps_a = output.maps_a * 0.5
            return output

    with pytest.raises(ValueError, match="pair each image's visual features"):
        evaluate_model(Shifted().eval(), _batches(rows, 4), processor=processor, listening=True)
    assert not model.training  # evaluate_model restored the eval mode it was given


def test_soft_ground_truths_are_kept_exactly_for_the_swap(tiny):
    model, processor, rows, _ = tiny
    soft = {**rows, "gt_maps": rows["gt_maps"] * 0.3}  # not a multiple of 0.5: not stored as uint8
    listening = evaluate_model(model, _batches(soft, 4), processor=processor, listening=True)["listening"]
    donors, _ = swap_permutation(rows["labels"])
    expected = _forward_scores(model, soft, {k: rows[k][donors] for k in ("audio_log_mel", "audio_waveform")})
    np.testing.assert_allclose(listening["per_scene"]["ciou_swapped_fused"], expected["fused"], atol=1e-6)
    assert listening["selection"] is None and "correct_true_fused" not in listening["per_scene"]


def test_extended_protocol_from_the_listening_maps(tiny, tmp_path):
    """Confidences per scene and variant are map_confidence of a forward with that sound; the extended rows and the
    box-size table are the pure functions of those arrays; both reach the table, the card and the per-scene file."""
    model, processor, rows, objects = tiny
    result = evaluate_model(model, _batches(rows, 3), processor=processor, listening=True, objects=objects,
                            subsets={"heard": ["s0", "s2", "s5"]})
    listening, per_scene = result["listening"], result["listening"]["per_scene"]
    donors, _ = swap_permutation(rows["labels"])
    with torch.inference_mode():
        true = model(pixel_values=rows["pixel_values"], **{k: rows[k] for k in ("audio_log_mel", "audio_waveform")})
        swapped = model(pixel_values=rows["pixel_values"],
                        **{k: rows[k][donors] for k in ("audio_log_mel", "audio_waveform")})
    for variant, output in (("true", true), ("swapped", swapped)):
        expected = branch_confidences(output.maps_a, output.maps_b)
        for branch in ("a", "b", "fused"):
            np.testing.assert_allclose(per_scene[f"confidence_{variant}_{branch}"], expected[branch].numpy(),
                                       atol=1e-6, err_msg=f"{variant} {branch}")
    np.testing.assert_allclose(result["per_sample"]["confidence_fused"], per_scene["confidence_true_fused"])
    column = {k: np.array(v) for k, v in per_scene.items() if k.startswith(("ciou_", "confidence_"))}
    for variant in ("swapped", "silence", "noise"):
        assert listening["extended"][variant]["b"] == extended_protocol(
            column["confidence_true_b"], column["ciou_true_b"], column[f"confidence_{variant}_b"])
    heard = np.isin(rows["ids"], ["s0", "s2", "s5"])
    assert result["subsets"]["heard"]["extended"]["swapped"]["fused"] == extended_protocol(
        column["confidence_true_fused"][heard], column["ciou_true_fused"][heard],
        column["confidence_swapped_fused"][heard])
    areas = ground_truth_areas(rows["gt_maps"].numpy())
    assert per_scene["gt_area"] == areas.tolist()
    assert listening["sizes"] == result["sizes"]
    for size, entry in size_subsets(column["ciou_true_a"], areas).items():
        assert result["sizes"][size]["num_samples"] == entry["num_samples"]
        assert {k: v for k, v in result["sizes"][size].get("a", {}).items()} == {
            k: v for k, v in entry.items() if k != "num_samples"}
    table = format_listening_table(result)
    assert "AP@0.5 / max-F1@0.5 / ROC AUC" in table and "| medium (< 96²) |" in table
    written = save_per_scene_scores(result, tmp_path / "scores.csv").read_text().splitlines()[0].split(",")
    assert written[:3] == ["id", "label", "gt_area"] and "confidence_noise_a" in written
    entry = {"dataset": "xpl-synthetic", "fused": result["metrics"]["fused"],
             "listening": {k: v for k, v in listening.items() if k != "per_scene"}}
    index = {r.metric_type: r for r in build_model_card(model.config, entry).data.eval_results}
    assert index["ap50_swapped"].metric_value == round(listening["extended"]["swapped"]["fused"]["ap50"], 4)
    assert index["max_f1_50_noise_a"].metric_name == "max-F1@0.5, noise as negatives (branch A)"
    assert "ciou_huge_b" in index or result["sizes"]["huge"]["num_samples"] == 0
