"""The cIoU / AUC protocol (xpl_hf.metrics), the ground-truth rules (xpl_hf.metrics.ground_truth), the annotation
parsers (xpl_hf.data.annotations), the `evaluate` metric, the model loop (xpl_hf.evaluation) and the overlays
(xpl_hf.visualization)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xpl_hf import METRIC_PATH
from xpl_hf.data.annotations import flickr_boxes_from_xml, read_id_list
from xpl_hf.evaluation import evaluate_model, save_per_scene_scores
from xpl_hf.metrics import protocol as ev
from xpl_hf.metrics.extended import extended_protocol, ground_truth_areas, size_subsets
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.metrics.protocol import localization_metrics, summarize_ciou
from xpl_hf.visualization import pick_best_median_worst, save_overlay_grid


def flickr_ground_truth_from_xml(path):
    return ground_truth_map(flickr_boxes_from_xml(path), "flickr")


def vggss_ground_truths(path):
    return {str(e["file"]): ground_truth_map(e["bbox"], "union") for e in json.load(open(path))}

REPO = Path(__file__).resolve().parents[1]


def _find_metadata() -> Path:
    """The community split lists / annotations: $XPL_AVSL_METADATA, the shared checkout, or a copy in the repo."""
    candidates = [os.environ.get("XPL_AVSL_METADATA"), "/work/shared/data/avsl_metadata",
                  REPO.parent / "shared" / "data" / "avsl_metadata", REPO / "shared" / "data" / "avsl_metadata"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "vggss.json").is_file():
            return Path(candidate)
    return Path(candidates[1])  # tests using it then fail naming this path


METADATA = _find_metadata()
VGGSS_JSON = METADATA / "vggss.json"


def box_map(x0, y0, x1, y1, value=1.0):
    """A 224 x 224 map with value in the integer pixel box [y0:y1, x0:x1]."""
    gt = np.zeros((224, 224), np.float32)
    gt[y0:y1, x0:x1] = value
    return gt


def reference_ciou(prediction: np.ndarray, gt: np.ndarray) -> float:
    """Straightforward one-sample version of the protocol, written independently of the vectorised code."""
    heat = torch.as_tensor(prediction, dtype=torch.float32)[None, None]
    heat = F.interpolate(heat, size=(224, 224), mode="bicubic", align_corners=False)[0, 0].numpy()
    low, high = heat.min(), heat.max()
    if high - low != 0:
        heat = (heat - low) / (high - low)
    threshold = np.sort(heat.flatten())[224 * 224 // 2]
    binary = np.zeros((224, 224))
    binary[heat >= threshold] = 1
    denominator = np.sum(gt) + np.sum(binary * (gt == 0))
    return float(np.sum(binary * gt) / denominator) if denominator > 0 else 0.0


# ----------------------------------------------------------------------------------------------- ground truth


def test_union_rule_matches_integer_boxes():
    gt = ground_truth_map([[0.1, 0.2, 0.6, 0.7]], "union")
    # 0.1*224 = 22.4 -> 22, 0.2*224 = 44.8 -> 44, 0.6*224 = 134.4 -> 134, 0.7*224 = 156.8 -> 156
    assert gt.dtype == np.float32 and gt.shape == (224, 224)
    np.testing.assert_array_equal(gt, box_map(22, 44, 134, 156))
    # union of overlapping boxes stays binary; out-of-range coordinates are clipped
    two = ground_truth_map([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]], "union")
    assert set(np.unique(two)) == {0.0, 1.0}
    assert two.sum() == 112 * 112 * 2 - 56 * 56
    np.testing.assert_array_equal(ground_truth_map([[-0.5, 0.0, 2.0, 1.0]], "union"), np.ones((224, 224)))
    # a corrupt coordinate (as in 12 vggss.json entries) clips to an empty box
    assert ground_truth_map([[0.5, 0.3, -2.88e16, 0.9]], "union").sum() == 0
    assert ground_truth_map([], "union").sum() == 0
    assert ground_truth_map([[0.1, 0.1, 0.2, 0.2]], "none").sum() == 0
    assert ground_truth_map(np.array([0.0, 0.0, 0.5, 1.0]), "union", size=8).sum() == 32


def test_ground_truth_map_errors():
    with pytest.raises(ValueError, match="unknown ground-truth rule"):
        ground_truth_map([[0, 0, 1, 1]], "vggss")
    with pytest.raises(ValueError, match="x0, y0, x1, y1"):
        ground_truth_map([[0, 0, 1]], "union")


def test_flickr_rule_int_224_over_256_is_exact():
    coordinates = np.arange(257)
    normalised = coordinates / 256
    expected = [int(224 * v / 256) for v in coordinates]
    assert [int(224 * v) for v in normalised] == expected
    # boxes are stored as float32 in the dataset schema: still exact
    assert [int(224 * float(v)) for v in normalised.astype(np.float32)] == expected


FLICKR_XML = """<?xml version="1.0"?>
<annotation>
  <file>12345.jpg</file>
  <size><width>256</width><height>256</height></size>
  <object>
    <bbox><index>0</index><xmin>10</xmin><ymin>20</ymin><xmax>150</xmax><ymax>200</ymax></bbox>
    <bbox><index>1</index><xmin>100</xmin><ymin>50</ymin><xmax>250</xmax><ymax>256</ymax></bbox>
  </object>
  <object>
    <bbox><index>2</index><YMIN>0</YMIN><XMIN>0.0</XMIN><YMAX>30</YMAX><XMAX>37</XMAX></bbox>
  </object>
</annotation>
"""


def flickr_reference(boxes_256):
    gt = np.zeros((224, 224))
    for xmin, ymin, xmax, ymax in boxes_256:
        xmin, ymin, xmax, ymax = (int(224 * v / 256) for v in (xmin, ymin, xmax, ymax))
        gt[ymin:ymax, xmin:xmax] += 1
    return np.minimum(gt / 2, 1)


def test_flickr_xml(tmp_path):
    path = tmp_path / "12345.xml"
    path.write_text(FLICKR_XML)
    raw = [[10, 20, 150, 200], [100, 50, 250, 256], [0, 0, 37, 30]]
    assert flickr_boxes_from_xml(path, normalize=False) == raw
    assert flickr_boxes_from_xml(path) == [[v / 256 for v in box] for box in raw]
    gt = flickr_ground_truth_from_xml(path)
    np.testing.assert_array_equal(gt, flickr_reference(raw))
    assert set(np.unique(gt)) == {0.0, 0.5, 1.0}
    # hand check: (x=100 -> 87, y=100 -> 87) lies in boxes 1 and 2 -> 1; (5, 5) only in box 3 -> 0.5
    assert gt[87, 87] == 1.0 and gt[5, 5] == 0.5 and gt[223, 0] == 0.0
    assert ground_truth_map(flickr_boxes_from_xml(path), "flickr").tolist() == gt.tolist()


def test_flickr_xml_positional_namespaces_and_errors(tmp_path):
    positional = tmp_path / "positional.xml"
    positional.write_text(
        '<annotation xmlns="http://example.com/ns"><object><bbox><label>1</label><a>8</a><b>16</b><c>128</c>'
        "<d>64</d></bbox></object></annotation>"
    )
    assert flickr_boxes_from_xml(positional, normalize=False) == [[8, 16, 128, 64]]
    empty = tmp_path / "empty.xml"
    empty.write_text("<annotation><file>x.jpg</file></annotation>")
    assert flickr_boxes_from_xml(empty) == []
    assert flickr_ground_truth_from_xml(empty).sum() == 0
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><object><bbox><xmin>1</xmin><ymin>x</ymin></bbox></object></annotation>")
    with pytest.raises(ValueError, match="broken.xml: bbox 0"):
        flickr_boxes_from_xml(broken)
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("<annotation><bbox>")
    with pytest.raises(ValueError, match="not a valid XML"):
        flickr_boxes_from_xml(garbage)


# ---------------------------------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def vggss_gts():
    return vggss_ground_truths(VGGSS_JSON)


def test_whole_image_predictor_on_vggss(vggss_gts):
    """The community's sanity check: predicting the whole image on the 5,158 VGG-SS entries."""
    assert len(vggss_gts) == 5158
    assert sum(int(gt.sum() == 0) for gt in vggss_gts.values()) == 2  # corrupt boxes -> empty maps
    gts = list(vggss_gts.values())
    results = localization_metrics([np.ones((7, 7), np.float32)] * len(gts), gts)
    assert round(results["ciou"], 2) == 21.95
    assert round(results["auc"], 2) == 31.25
    # a flat map keeps every pixel: cIoU = box area / image area (0 for the two empty maps)
    expected = np.array([float(gt.sum()) / 224**2 for gt in gts])
    np.testing.assert_allclose(results["per_sample_ciou"], expected, rtol=0, atol=1e-12)
    assert results["mean_ciou"] == pytest.approx(expected.mean())


def test_matches_single_sample_reference(vggss_gts):
    rng = np.random.default_rng(0)
    gts = list(vggss_gts.values())[:40]
    predictions = [rng.random((7, 7)).astype(np.float32) for _ in range(30)]
    predictions += [rng.random((14, 9)).astype(np.float32) for _ in range(5)]
    predictions += [np.round(rng.random((7, 7)), 1).astype(np.float32) for _ in range(5)]  # many ties
    results = localization_metrics(predictions, gts)
    expected = [reference_ciou(p, g) for p, g in zip(predictions, gts)]
    np.testing.assert_array_equal(results["per_sample_ciou"], expected)


def test_chunking_and_input_types_do_not_change_results(vggss_gts, monkeypatch):
    rng = np.random.default_rng(1)
    gts = list(vggss_gts.values())[:23]
    maps = rng.random((23, 7, 7)).astype(np.float32)
    full = localization_metrics(maps, gts)["per_sample_ciou"]
    monkeypatch.setattr(ev, "_CHUNK", 4)
    np.testing.assert_array_equal(localization_metrics(list(maps), gts)["per_sample_ciou"], full)
    np.testing.assert_array_equal(localization_metrics(torch.from_numpy(maps), gts)["per_sample_ciou"], full)
    as_lists = localization_metrics(maps.tolist(), [g.tolist() for g in gts])
    np.testing.assert_array_equal(as_lists["per_sample_ciou"], full)


def test_crafted_maps_hand_computed():
    # a 2 x 2 map hot on the right column: the upsampled map's top half is exactly the right half (x >= 112)
    right = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert localization_metrics([right], [box_map(112, 0, 224, 224)])["per_sample_ciou"][0] == 1.0
    # ground truth = right quarter: intersection 56*224, |G| = 56*224, B outside G = 56*224 -> 1/2
    assert localization_metrics([right], [box_map(168, 0, 224, 224)])["per_sample_ciou"][0] == 0.5
    # ground truth = left half: no intersection
    assert localization_metrics([right], [box_map(0, 0, 112, 224)])["per_sample_ciou"][0] == 0.0
    # Flickr-style soft ground truth: 0.5 on the right half, 1 on its top half
    soft = box_map(112, 0, 224, 224, 0.5)
    soft[:112, 112:] = 1.0
    expected = (112 * 112 * 1.0 + 112 * 112 * 0.5) / soft.sum()
    assert localization_metrics([right], [soft])["per_sample_ciou"][0] == pytest.approx(expected, abs=0)
    # min-max normalisation: any positive affine change of the map gives the same cIoU
    assert localization_metrics([3 + 5 * right], [box_map(168, 0, 224, 224)])["per_sample_ciou"][0] == 0.5


def test_flat_map_keeps_every_pixel():
    for value in (0.0, 0.3, -7.0):
        flat = np.full((7, 7), value, np.float32)
        # B = whole image: cIoU = |G| / (|G| + (224^2 - |G|)) = box area / image area
        assert localization_metrics([flat], [box_map(0, 0, 112, 112)])["per_sample_ciou"][0] == 0.25
    flat = torch.full((2, 5, 5), 0.7)
    np.testing.assert_array_equal(ev.normalize_maps(flat), flat)


def test_ties_at_threshold_are_kept():
    # a 224 x 224 map (upsampling to the same size is the identity) with a plateau across the median
    heat = np.zeros(224 * 224, np.float32)
    heat[20000:30000] = 0.5
    heat[30000:] = 1.0
    heat = heat.reshape(224, 224)
    np.testing.assert_array_equal(ev.upsample_maps(torch.from_numpy(heat)[None])[0].numpy(), heat)
    binary = ev.binarize_maps(torch.from_numpy(heat)[None])[0].numpy()
    assert binary.sum() == 224 * 224 - 20000  # sorted[25088] = 0.5: the whole plateau is kept
    gt = np.zeros(224 * 224, np.float32)
    gt[25000:35000] = 1
    gt = gt.reshape(224, 224)
    # intersection = pixels 25000..34999 (all >= 0.5) = 10000; B outside G = 30176 - 10000
    expected = 10000 / (10000 + 30176 - 10000)
    assert localization_metrics([heat], [gt])["per_sample_ciou"][0] == pytest.approx(expected, abs=0)


def test_empty_ground_truth_scores_zero():
    rng = np.random.default_rng(2)
    empty = np.zeros((224, 224), np.float32)
    results = localization_metrics([rng.random((7, 7)), np.ones((7, 7))], [empty, empty])
    np.testing.assert_array_equal(results["per_sample_ciou"], [0.0, 0.0])
    # every sample passes only the t = 0 threshold: AUC = 100 * 0.05 * (1 + 0) / 2
    assert results["ciou"] == 0.0 and results["auc"] == pytest.approx(2.5)
    # the (unreachable through the protocol) 0 / 0 case is defined as 0 too
    none_kept = torch.zeros(1, 224, 224, dtype=torch.bool)
    assert ev.ciou_scores(none_kept, torch.zeros(1, 224, 224)).tolist() == [0.0]


def test_summary_ciou_and_auc_by_hand():
    summary = summarize_ciou([0.0, 0.5, 1.0])
    assert summary["ciou"] == pytest.approx(200 / 3)
    # success rate: 1 at t = 0, 2/3 on (0, 0.5], 1/3 on (0.5, 1] -> trapezoid area
    area = 0.05 * ((1 + 2 / 3) / 2 + 9 * 2 / 3 + (2 / 3 + 1 / 3) / 2 + 9 * 1 / 3)
    assert summary["auc"] == pytest.approx(100 * area, abs=1e-9)
    assert summary["mean_ciou"] == 0.5
    assert summarize_ciou([1.0, 1.0])["auc"] == pytest.approx(100.0)
    assert len(ev.AUC_THRESHOLDS) == 21 and ev.AUC_THRESHOLDS[-1] == 1.0


def test_input_errors_name_the_sample():
    gt = box_map(0, 0, 10, 10)
    with pytest.raises(ValueError, match="2 predictions but 1 ground truths"):
        localization_metrics([np.ones((7, 7))] * 2, [gt])
    with pytest.raises(ValueError, match="prediction 1: expected a non-empty 2-D map"):
        localization_metrics([np.ones((7, 7)), np.ones((1, 7, 7))], [gt, gt])
    with pytest.raises(ValueError, match="prediction 0: the map contains NaN"):
        localization_metrics([np.full((7, 7), np.nan)], [gt])
    with pytest.raises(ValueError, match=r"ground truth 1: expected shape \(224, 224\)"):
        localization_metrics([np.ones((7, 7))] * 2, [gt, np.ones((7, 7))])
    with pytest.raises(ValueError, match="at least one sample"):
        localization_metrics([], [])


# ------------------------------------------------------------------------------------------- evaluate module


def test_evaluate_module_agrees_with_function(tmp_path):
    rng = np.random.default_rng(3)
    boxes = [[[0.1, 0.2, 0.6, 0.7]], [[0.0, 0.0, 1.0, 1.0]], [], [[0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.3, 0.3]]]
    predictions = [rng.random((7, 7)).astype(np.float32) for _ in range(3)] + [rng.random((5, 9)).astype(np.float32)]
    gts = [ground_truth_map(b, "union") for b in boxes]
    expected = localization_metrics(predictions, gts)

    by_maps = evaluate.load(METRIC_PATH).compute(predictions=predictions, references=gts)
    by_boxes = evaluate.load(METRIC_PATH, "union").compute(predictions=predictions, references=boxes)
    for results in (by_maps, by_boxes):
        for key in ("ciou", "auc", "mean_ciou"):
            assert results[key] == expected[key]
        np.testing.assert_array_equal(results["per_sample_ciou"], expected["per_sample_ciou"])
    assert by_boxes["protocol"]["upsampling"] == "bicubic" and by_boxes["protocol"]["align_corners"] is False

    path = tmp_path / "1.xml"
    path.write_text(FLICKR_XML)
    flickr_boxes = flickr_boxes_from_xml(path)
    flickr = evaluate.load(METRIC_PATH, "flickr")
    flickr.add_batch(predictions=predictions[:1], references=[flickr_boxes])
    results = flickr.compute()
    assert results["per_sample_ciou"][0] == localization_metrics(
        predictions[:1], [flickr_ground_truth_from_xml(path)]
    )["per_sample_ciou"][0]


def test_evaluate_module_reports_box_sizes_and_the_extended_protocol():
    rng = np.random.default_rng(4)
    boxes = [[[0.0, 0.0, 0.1, 0.1]], [[0.1, 0.2, 0.6, 0.7]], [[0.0, 0.0, 1.0, 1.0]], [[0.2, 0.2, 0.5, 0.5]]]
    predictions = [rng.random((7, 7)).astype(np.float32) for _ in boxes]
    confidences, negatives = rng.random(4).tolist(), rng.random(6).tolist()
    metric = evaluate.load(METRIC_PATH, "union")
    out = metric.compute(predictions=predictions, references=boxes, confidences=confidences,
                         negative_confidences=negatives)
    gts = np.stack([ground_truth_map(b, "union") for b in boxes])
    assert out["sizes"] == size_subsets(out["per_sample_ciou"], ground_truth_areas(gts))
    assert [out["sizes"][s]["num_samples"] for s in ("small", "medium", "large", "huge")] == [1, 1, 1, 1]
    assert out["extended"] == extended_protocol(confidences, out["per_sample_ciou"], negatives)
    assert "extended" not in metric.compute(predictions=predictions, references=boxes)
    with pytest.raises(ValueError, match="pass both `confidences`"):
        metric.compute(predictions=predictions, references=boxes, confidences=confidences)


def test_evaluate_module_rejects_unknown_configuration():
    with pytest.raises(ValueError, match="unknown configuration"):
        evaluate.load(METRIC_PATH, "vgg")


# ------------------------------------------------------------------------------------------- evaluate_model


class ConstantModel(torch.nn.Module):
    """Stand-in for XPLModel: branch A predicts the whole image, B a hot right column, fused a rescaled B.

    (A constant 7 x 7 map stays exactly constant when upsampled to 224; a constant 2 x 2 map does not, because the
    bicubic weights do not sum to exactly 1 in float32 -- the protocol, like the reference code, then normalises
    that rounding noise.)
    """

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values, audio_log_mel=None, audio_waveform=None, pixel_values_b=None):
        assert not self.training
        n = pixel_values.shape[0]
        maps_a = torch.ones(n, 7, 7) * self.scale
        maps_b = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).expand(n, 2, 2)
        return type("Output", (), {"maps_a": maps_a, "maps_b": maps_b, "maps": 0.25 + 0.5 * maps_b})()


def fake_batches(gts, labels, ids, batch_size=3, unlabeled_every=0):
    for start in range(0, len(gts), batch_size):
        chunk = range(start, min(start + batch_size, len(gts)))
        n = len(chunk)
        labeled = [not (unlabeled_every and i % unlabeled_every == 0) for i in chunk]
        yield {
            "ids": [ids[i] for i in chunk],
            "pixel_values": torch.zeros(n, 3, 8, 8),
            "pixel_values_b": torch.zeros(n, 3, 8, 8),
            "audio_log_mel": torch.zeros(n, 1, 96, 64),
            "audio_waveform": torch.zeros(n, 100),
            "gt_maps": torch.from_numpy(np.stack([gts[i] for i in chunk])),
            "is_labeled": torch.tensor(labeled),
            "labels": [labels[i] for i in chunk],
        }


def test_evaluate_model_branches_labels_and_subsets():
    gts = [box_map(112, 0, 224, 224), box_map(0, 0, 112, 112), box_map(168, 0, 224, 224), box_map(0, 0, 224, 224)] * 2
    labels = ["dog", "cat", "dog", "cat"] * 2
    ids = [f"s{i}" for i in range(8)]
    model = ConstantModel().train()
    batches = fake_batches(gts, labels, ids)
    result = evaluate_model(model, batches, subsets={"heard": ["s0", "s1", "zz"]}, keep_maps=True)
    assert model.training  # restored
    assert result["metrics"]["num_samples"] == 8
    np.testing.assert_array_equal(result["per_sample"]["ciou_a"], [float(g.sum()) / 224**2 for g in gts])
    np.testing.assert_array_equal(result["per_sample"]["ciou_b"], [1.0, 0.0, 0.5, 0.5] * 2)
    assert result["metrics"]["b"] == result["metrics"]["fused"] == summarize_ciou([1.0, 0.0, 0.5, 0.5] * 2)
    assert result["summary"]["b/ciou"] == result["metrics"]["b"]["ciou"] == 75.0
    assert result["per_label"]["dog"]["b"]["ciou"] == 100.0 and result["per_label"]["cat"]["num_samples"] == 4
    heard = result["subsets"]["heard"]
    assert heard["num_samples"] == 2 and heard["missing"] == 1 and heard["b"]["ciou"] == 50.0
    assert result["maps"]["fused"].shape == (8, 2, 2)
    assert result["protocol"]["eval_size"] == 224
    json.dumps({k: v for k, v in result.items() if k != "maps"})  # results are JSON-serialisable


def test_evaluate_model_skips_unlabeled_and_honours_max_samples():
    gts = [box_map(112, 0, 224, 224)] * 7
    ids = [f"s{i}" for i in range(7)]
    result = evaluate_model(ConstantModel(), fake_batches(gts, [""] * 7, ids, unlabeled_every=3))
    assert result["num_unlabeled_skipped"] == 3 and result["metrics"]["num_samples"] == 4
    assert result["per_sample"]["ids"] == ["s1", "s2", "s4", "s5"] and result["per_label"] == {}
    limited = evaluate_model(ConstantModel(), fake_batches(gts, [""] * 7, ids), max_samples=4)
    assert limited["per_sample"]["ids"] == ["s0", "s1", "s2", "s3"]
    with pytest.raises(ValueError, match="no labeled sample"):
        evaluate_model(ConstantModel(), fake_batches(gts[:1], [""], ids[:1], unlabeled_every=1))


def test_pick_best_median_worst_and_id_lists(tmp_path):
    picks = pick_best_median_worst([0.1, 0.9, 0.5, 0.3, 0.7], per_group=1)
    assert picks == {"best": [1], "median": [2], "worst": [0]}
    assert pick_best_median_worst([0.2, 0.4], per_group=3)["best"] == [1, 0]
    path = tmp_path / "ids.csv"
    path.write_text("a_1,0\n\n# comment\nb_2\n")
    assert read_id_list(path) == ["a_1", "b_2"]
    assert len(read_id_list(METADATA / "vggss_heard_test.csv")) > 2500


def test_overlay_grid(tmp_path):
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(3)]
    path = save_overlay_grid(
        tmp_path / "grid.png",
        images,
        [rng.random((7, 7)) for _ in range(3)],
        [box_map(10, 10, 100, 100)] * 3,
        ["a", "b", "c"],
        row_names=["best"],
        columns=3,
    )
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_model_reports_confidences_and_box_sizes(tmp_path):
    gts = [box_map(0, 0, 16, 16), box_map(0, 0, 64, 64), box_map(0, 0, 112, 112), box_map(0, 0, 224, 224)]
    ids = [f"s{i}" for i in range(4)]
    result = evaluate_model(ConstantModel(), fake_batches(gts, [""] * 4, ids), subsets={"first": ["s0", "s1"]})
    per_sample = result["per_sample"]
    # A: a flat 1.0 map, B: a 2 x 2 map half 0 half 1 (its top quarter, one cell, is 1); fused: their mean
    assert per_sample["confidence_a"] == per_sample["confidence_b"] == per_sample["confidence_fused"] == [1.0] * 4
    assert per_sample["gt_area"] == [256.0, 4096.0, 12544.0, 50176.0]
    sizes = result["sizes"]
    assert [sizes[s]["num_samples"] for s in ("small", "medium", "large", "huge")] == [1, 1, 1, 1]
    assert sizes["huge"]["a"] == summarize_ciou([1.0]) and sizes["small"]["b"] == summarize_ciou([0.0])
    assert result["subsets"]["first"]["sizes"]["large"] == {"num_samples": 0}
    path = save_per_scene_scores(result, tmp_path / "scores.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["id", "label", "gt_area"] and "confidence_fused" in header
