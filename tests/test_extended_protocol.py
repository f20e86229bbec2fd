"""The extended protocol (xpl_hf.metrics.extended) and the confidence of a map (xpl_hf.maps.map_confidence):
hand-computed cases, the limits (perfect model, audio-blind model) and an independent implementation written here
from the definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xpl_hf.maps import branch_confidences, map_confidence
from xpl_hf.metrics.extended import (
    average_precision,
    extended_protocol,
    extended_rows,
    ground_truth_areas,
    precision_recall_at,
    precision_recall_curve,
    roc_auc,
    size_masks,
    size_subsets,
)
from xpl_hf.metrics.protocol import summarize_ciou

# --------------------------------------------------------------------------------------------------- confidence


def test_map_confidence_is_the_mean_of_the_top_quarter():
    maps = torch.zeros(2, 2, 4)  # 8 positions: the top ceil(8 / 4) = 2
    maps[0, 0, :2] = torch.tensor([1.0, 0.5])
    maps[1] = 0.25
    np.testing.assert_allclose(map_confidence(maps).numpy(), [0.75, 0.25])
    odd = torch.linspace(0, 1, 49).reshape(1, 7, 7)  # 49 positions: the top ceil(49 / 4) = 13, as SLAVC's [-n // 4:]
    assert float(map_confidence(odd)) == pytest.approx(float(torch.linspace(0, 1, 49)[-13:].mean()), abs=1e-12)
    assert isinstance(map_confidence(maps.numpy()), np.ndarray)  # arrays in, arrays out
    assert float(map_confidence(odd, share=1.0)) == pytest.approx(0.5)
    both = branch_confidences(maps, torch.ones(2, 2, 4))
    np.testing.assert_allclose(both["fused"].numpy(), [0.875, 0.625])


def test_map_confidence_refuses_maps_outside_its_range():
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        map_confidence(torch.full((1, 7, 7), -0.5))  # a cosine similarity, not a probability map
    with pytest.raises(ValueError, match="share"):
        map_confidence(torch.zeros(1, 7, 7), share=0.0)
    with pytest.raises(ValueError, match="shape"):
        map_confidence(torch.zeros(3))


# ------------------------------------------------------------------------------------------- hand-computed case

POS, CIOU, NEG = [0.9, 0.7, 0.4], [0.8, 0.3, 0.6], [0.8, 0.2, 0.4]


def test_precision_recall_by_hand():
    # thresholds 0.9, 0.8, 0.7, 0.4, 0.2: TP / FP / FN = 1/0/2, 1/1/2, 1/2/1 (a positive in the wrong place),
    # 2/3/0 (a positive and a negative tied at 0.4), 2/4/0
    curve = precision_recall_curve(POS, CIOU, NEG, 0.5)
    np.testing.assert_allclose(curve["thresholds"], [0.9, 0.8, 0.7, 0.4, 0.2])
    np.testing.assert_allclose(curve["precision"], [1, 1 / 2, 1 / 3, 2 / 5, 1 / 3])
    np.testing.assert_allclose(curve["recall"], [1 / 3, 1 / 3, 1 / 2, 1, 1])
    # envelope 1, 1/2, 2/5, 2/5, 1/3 over recall steps 1/3, 0, 1/6, 1/2, 0
    assert average_precision(curve["precision"], curve["recall"]) == pytest.approx(0.6)
    out = extended_protocol(POS, CIOU, NEG)
    assert out["ap50"] == pytest.approx(60.0)
    assert out["max_f1_50"] == pytest.approx(100 * 4 / 7)  # at 0.4: 2 * 0.4 * 1 / 1.4
    assert out["ap75"] == pytest.approx(100 * 22 / 45)  # only 0.8 is correct: 1/3 + 1/3 * 1/6 + 1/5 * 1/2
    assert (out["precision_50"], out["recall_50"]) == pytest.approx((100 / 3, 50.0))  # at tau = 0.5
    assert out["f1_50"] == pytest.approx(40.0)
    assert out["roc_auc"] == pytest.approx(100 * 6.5 / 9)  # 3 + 2 + 1.5 (a tie counts half) of 9 pairs
    assert (out["num_positives"], out["num_negatives"]) == (3, 3)


def test_nothing_detected_and_no_correct_positive():
    assert precision_recall_at([0.1], [1.0], [0.2], confidence_threshold=0.5) == (1.0, 0.0)
    out = extended_protocol([0.9, 0.8], [0.1, 0.2], [0.3])  # detected, never in the right place
    assert out["ap50"] == 0.0 and out["max_f1_50"] == 0.0
    assert "roc_auc" not in extended_protocol([0.9], [1.0], [])  # no negatives: precision from positives alone


def test_input_errors():
    with pytest.raises(ValueError, match="match one to one"):
        extended_protocol([0.5, 0.6], [1.0], [0.1])
    with pytest.raises(ValueError, match="at least one positive"):
        extended_protocol([], [], [0.1])
    with pytest.raises(ValueError, match="conf_neg: holds NaN"):
        extended_protocol([0.5], [1.0], [math.nan])


# --------------------------------------------------------------------------------------------------- the limits


def test_perfect_model_has_ap_one():
    rng = np.random.default_rng(0)
    conf_pos, conf_neg = 0.6 + 0.4 * rng.random(200), 0.5 * rng.random(200)  # every positive above every negative
    out = extended_protocol(conf_pos, 0.5 + 0.5 * rng.random(200), conf_neg)
    assert out["ap50"] == out["max_f1_50"] == out["roc_auc"] == 100.0


def test_audio_blind_model_scores_the_share_of_positives():
    rng = np.random.default_rng(1)
    frames = rng.random(300)
    # the confidence depends on the frame only: each frame's negative ties with its positive, so every threshold
    # detects as many negatives as positives (all in the right place): precision = share of positives, exactly
    out = extended_protocol(frames, np.ones(300), frames)
    assert out["ap50"] == pytest.approx(50.0) and out["roc_auc"] == pytest.approx(50.0)
    two_negatives = extended_protocol(frames, np.ones(300), np.concatenate([frames, frames]))
    assert two_negatives["ap50"] == pytest.approx(100 / 3)
    # a confidence drawn independently of the sound: AP near the share of positives (sampling noise only)
    n = 20000
    drawn = extended_protocol(rng.random(n), np.ones(n), rng.random(n))
    assert drawn["ap50"] == pytest.approx(50.0, abs=1.5) and drawn["roc_auc"] == pytest.approx(50.0, abs=1.5)


# ----------------------------------------------------------------------------------- an independent implementation


def reference_ap_and_f1(conf_pos, ciou_pos, conf_neg, theta):
    """Straight from the definition: loop over every distinct confidence, count, then the envelope by max."""
    points = []
    for tau in sorted(set(conf_pos) | set(conf_neg), reverse=True):
        tp = fp = fn = 0
        for c, iou in zip(conf_pos, ciou_pos):
            if c >= tau and iou >= theta:
                tp += 1
            elif c >= tau:
                fp += 1
            else:
                fn += 1
        fp += sum(1 for c in conf_neg if c >= tau)
        precision = 1.0 if tp + fp == 0 else tp / (tp + fp)
        recall = 0.0 if tp + fn == 0 else tp / (tp + fn)
        points.append((recall, precision))
    ap, previous = 0.0, 0.0
    for k, (recall, _) in enumerate(points):
        ap += (recall - previous) * max(p for _, p in points[k:])
        previous = recall
    f1 = max((2 * p * r / (p + r) if p + r > 0 else 0.0) for r, p in points)
    return ap, f1


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_the_reference_implementation(seed):
    rng = np.random.default_rng(seed)
    n_pos, n_neg = rng.integers(1, 80), rng.integers(0, 120)
    # rounded confidences: ties, within and across positives and negatives
    conf_pos, conf_neg = np.round(rng.random(n_pos), 1 + seed % 3), np.round(rng.random(n_neg), 1 + seed % 3)
    ciou = rng.random(n_pos)
    out = extended_protocol(conf_pos, ciou, conf_neg)
    for theta, key in ((0.5, "50"), (0.75, "75")):
        ap, f1 = reference_ap_and_f1(list(conf_pos), list(ciou), list(conf_neg), theta)
        assert abs(out[f"ap{key}"] - 100 * ap) < 1e-9 and abs(out[f"max_f1_{key}"] - 100 * f1) < 1e-9
    if n_neg:
        pairs = [(p > q) + 0.5 * (p == q) for p in conf_pos for q in conf_neg]
        assert abs(out["roc_auc"] - 100 * np.mean(pairs)) < 1e-9
        assert abs(roc_auc(conf_pos, conf_neg) - np.mean(pairs)) < 1e-12


# ---------------------------------------------------------------------------------------------- box-size subsets


def test_size_subsets_by_area():
    gts = np.zeros((4, 224, 224))
    gts[0, :31, :31] = 1  # 961 < 32² small
    gts[1, :32, :32] = 1  # 1024 = 32²: medium
    gts[2, :100, :100] = 1  # 10,000: large (< 144² = 20,736)
    gts[3, :, :] = 0.5  # a Flickr map where one annotator of two marks everything: 25,088 -> huge
    areas = ground_truth_areas(gts)
    np.testing.assert_array_equal(areas, [961, 1024, 10000, 25088])
    masks = size_masks(areas)
    assert [int(np.flatnonzero(masks[name])[0]) for name in ("small", "medium", "large", "huge")] == [0, 1, 2, 3]
    ciou = np.array([0.2, 0.6, 0.9, 0.4])
    out = size_subsets(ciou, areas)
    assert out["medium"] == {**summarize_ciou([0.6]), "num_samples": 1}
    assert size_subsets(ciou[:1], areas[:1])["huge"] == {"num_samples": 0}


def test_ground_truth_areas_keep_the_maps_dtype():
    """Bool maps are summed in float64 without a float64 copy of the maps (2,000 scenes: 800 MB), with the same
    areas as float maps; a torch tensor works as well."""
    import tracemalloc

    import torch

    gts = np.zeros((200, 224, 224), dtype=bool)
    gts[:, :50, :40] = True
    tracemalloc.start()
    areas = ground_truth_areas(gts)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < gts.nbytes  # a float64 copy would take 8x the maps' bytes
    assert areas.dtype == np.float64 and (areas == 2000.0).all()
    np.testing.assert_array_equal(ground_truth_areas(torch.from_numpy(gts)), areas)
    np.testing.assert_array_equal(ground_truth_areas(gts.astype(np.float32)), areas)


def test_extended_rows_for_every_negative_and_subset():
    conf = {"true": {"a": np.array(POS)}, "swapped": {"a": np.array(NEG)}, "silence": {"a": np.zeros(3)}}
    rows = extended_rows(conf, {"a": np.array(CIOU)})
    assert rows["swapped"]["a"] == extended_protocol(POS, CIOU, NEG)
    assert rows["silence"]["a"]["roc_auc"] == 100.0 and set(rows) == {"swapped", "silence"}
    first_two = extended_rows(conf, {"a": np.array(CIOU)}, mask=np.array([True, True, False]))
    assert first_two["swapped"]["a"] == extended_protocol(POS[:2], CIOU[:2], NEG[:2])
