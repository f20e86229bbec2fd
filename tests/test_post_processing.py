"""XPLProcessor.post_process_localization (maps at each image's size, as the protocol views them; the box) and
xpl_hf.visualization.overlay_heatmap."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.maps import pearson_consensus
from xpl_hf.metrics.protocol import normalize_maps, upsample_maps
from xpl_hf.modeling_xpl import XPLModelOutput
from xpl_hf.visualization import overlay_heatmap


@pytest.fixture(scope="module")
def processor():
    return XPLProcessor(image_size=64, clip_seconds=1.0)


def outputs_from(maps_a: torch.Tensor, maps_b: torch.Tensor) -> XPLModelOutput:
    def norm(m):
        flat = m.flatten(1)
        low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(m)

    return XPLModelOutput(maps=0.5 * (norm(maps_a) + norm(maps_b)), maps_a=maps_a, maps_b=maps_b)


def test_maps_at_each_image_size_in_unit_range(processor):
    torch.manual_seed(0)
    outputs = outputs_from(torch.rand(2, 7, 7), torch.rand(2, 7, 7))
    results = processor.post_process_localization(outputs, target_sizes=[(480, 640), (100, 100)])
    assert len(results) == 2
    for result, size in zip(results, [(480, 640), (100, 100)]):
        for key in ("map", "map_a", "map_b"):
            heat = result[key]
            assert heat.shape == size and heat.dtype == torch.float32
            assert heat.min() == 0.0 and heat.max() == 1.0
        assert "box" not in result  # only with a threshold
    expected_rho = pearson_consensus(outputs.maps_a, outputs.maps_b)
    assert [r["consensus"] for r in results] == pytest.approx(expected_rho.tolist())
    # a tensor of sizes works like a list; None means the model input size
    same = processor.post_process_localization(outputs, target_sizes=torch.tensor([[480, 640], [100, 100]]))
    assert torch.equal(same[1]["map_b"], results[1]["map_b"])
    assert processor.post_process_localization(outputs)[0]["map"].shape == (64, 64)


def test_maps_are_what_the_protocol_scores(processor):
    """At 224 x 224 the maps equal the protocol's upsample + normalise, bit for bit."""
    torch.manual_seed(1)
    outputs = outputs_from(torch.rand(3, 7, 7), torch.rand(3, 7, 7))
    results = processor.post_process_localization(outputs, target_sizes=[(224, 224)] * 3)
    for key, name in (("map", "maps"), ("map_a", "maps_a"), ("map_b", "maps_b")):
        expected = normalize_maps(upsample_maps(outputs[name]))
        for i in range(3):
            assert torch.equal(results[i][key], expected[i])


def test_flat_maps_stay_flat(processor):
    outputs = XPLModelOutput(maps=torch.zeros(1, 7, 7), maps_a=torch.full((1, 7, 7), 0.5),
                             maps_b=torch.full((1, 7, 7), 0.3))
    result = processor.post_process_localization(outputs, target_sizes=[(480, 640)], threshold=0.5)[0]
    assert torch.equal(result["map"], torch.zeros(480, 640))
    assert torch.equal(result["map_a"], torch.full((480, 640), 0.5))
    assert result["box"] is None and result["consensus"] == 0.0  # nothing above the threshold; flat maps: ρ = 0


def test_threshold_box(processor):
    raw = torch.zeros(1, 7, 7)
    raw[0, 1:3, 4:6] = 1.0  # a hot patch top right (rows 1-2, columns 4-5 of 7)
    outputs = XPLModelOutput(maps=raw, maps_a=raw, maps_b=raw)
    result = processor.post_process_localization(outputs, target_sizes=[(700, 1400)], threshold=0.5)[0]
    x0, y0, x1, y1 = result["box"]
    assert all(isinstance(v, int) for v in result["box"])
    # the hot patch covers x in [800, 1200), y in [100, 300) of the 1400 x 700 image; bicubic keeps it about there
    assert all(abs(got - edge) <= 50 for got, edge in zip((x0, y0, x1, y1), (800, 100, 1200, 300))), (x0, y0, x1, y1)
    heat = result["map"]
    inside = heat >= 0.5
    assert inside[y0:y1, x0:x1].sum() == inside.sum()  # every pixel >= threshold is in the box
    assert inside[y0, x0:x1].any() and inside[y1 - 1, x0:x1].any()  # and the box is tight
    assert inside[y0:y1, x0].any() and inside[y0:y1, x1 - 1].any()
    peak = processor.post_process_localization(outputs, target_sizes=[(700, 1400)], threshold=1.0)[0]["box"]
    assert x0 <= peak[0] < peak[2] <= x1 and y0 <= peak[1] < peak[3] <= y1
    everything = processor.post_process_localization(outputs, target_sizes=[(70, 140)], threshold=0.0)[0]["box"]
    assert everything == [0, 0, 140, 70]


def test_real_model_outputs(processor):
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)).eval()
    image = PIL.Image.new("RGB", (90, 60), "gray")
    batch = processor(images=image, audio=np.zeros(16000, np.float32), sampling_rate=16000)
    with torch.no_grad():
        outputs = model(**batch)
    result = processor.post_process_localization(outputs, target_sizes=[(image.height, image.width)], threshold=0.5)
    assert result[0]["map"].shape == (60, 90) and result[0]["box"] is not None


def test_bad_arguments(processor):
    outputs = outputs_from(torch.rand(2, 7, 7), torch.rand(2, 7, 7))
    with pytest.raises(ValueError, match="2 maps"):
        processor.post_process_localization(outputs, target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="threshold"):
        processor.post_process_localization(outputs, threshold=1.5)
    with pytest.raises(ValueError, match=r"target_sizes\[1\]"):
        processor.post_process_localization(outputs, target_sizes=[(10, 10), (0, 5)])
    with pytest.raises(ValueError, match="megapixels"):
        processor.post_process_localization(outputs, target_sizes=[(10, 10), (100_000, 100_000)])
    with pytest.raises(ValueError, match="maps_b"):
        processor.post_process_localization({"maps": outputs.maps, "maps_a": outputs.maps_a})


# ---------------------------------------------------------------------------------------------------------- overlay
def test_overlay_size_mode_and_colours():
    image = PIL.Image.new("RGB", (64, 48), (128, 128, 128))
    heat = torch.zeros(48, 64)
    heat[:10, :10] = 1.0
    overlay = overlay_heatmap(image, heat)
    assert overlay.size == (64, 48) and overlay.mode == "RGB"
    pixels = np.asarray(overlay, dtype=int)
    assert pixels[2, 2, 0] > pixels[2, 2, 2] and pixels[-2, -2, 2] > pixels[-2, -2, 0]  # jet: hot = red, cold = blue
    assert np.array_equal(np.asarray(overlay_heatmap(image, heat, alpha=0.0)), np.asarray(image))
    grey = overlay_heatmap(PIL.Image.new("L", (64, 48), 128), heat.numpy(), colormap="gray", alpha=1.0)
    assert grey.mode == "RGB" and np.asarray(grey)[2, 2].tolist() == [255, 255, 255]


def test_overlay_rejects_a_map_of_another_size():
    with pytest.raises(ValueError, match="post_process_localization"):
        overlay_heatmap(PIL.Image.new("RGB", (64, 48)), np.zeros((7, 7)))
    with pytest.raises(ValueError, match="colormap"):
        overlay_heatmap(PIL.Image.new("RGB", (8, 8)), np.zeros((8, 8)), colormap="no-such-map")


def test_confidence_of_each_map(processor):
    """The confidence: the mean of the top quarter (13 of 49 cells) of each branch's probability map, fused = mean."""
    maps_a = torch.zeros(1, 7, 7)
    maps_a[0, :2] = 0.9  # 14 cells at 0.9: the top 13 average 0.9
    maps_b = torch.full((1, 7, 7), 0.2)
    result = processor.post_process_localization(outputs_from(maps_a, maps_b))[0]
    assert (result["confidence_a"], result["confidence_b"]) == pytest.approx((0.9, 0.2))
    assert result["confidence"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match=r"probability maps, in \[0, 1\]"):
        processor.post_process_localization(outputs_from(maps_a - 0.5, maps_b))  # e.g. a similarity map
