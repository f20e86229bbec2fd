"""Per-sample transforms and collate (xpl_hf.data.transforms): contract batch, augmentation, bad samples."""

import io

import datasets
import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from conftest import make_benchmark
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from xpl_hf.data.augment import GEOMETRIC_OPS, ColorRandAugment
from xpl_hf.data.loading import load_labeled, load_unlabeled_stream
from xpl_hf.data.synthetic import SyntheticConfig, generate_sample
from xpl_hf.data.transforms import BadSampleError, XPLCollator
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.processing_xpl import XPLProcessor

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
CONFIG = SyntheticConfig(image_size=64)


@pytest.fixture(scope="module")
def processor():
    return XPLProcessor(image_size=64)


@pytest.fixture(scope="module")
def rows():
    return [generate_sample(CONFIG, "labeled", i) for i in range(4)]


def test_color_randaugment_has_no_geometry():
    space = ColorRandAugment._AUGMENTATION_SPACE
    assert not set(GEOMETRIC_OPS) & set(space)
    assert {"Brightness", "Color", "Contrast", "Equalize", "Posterize", "Solarize"} <= set(space)
    # a colour op never moves content: the centroid of an off-centre square stays put
    torch.manual_seed(0)
    image = torch.full((3, 32, 32), 40, dtype=torch.uint8)
    image[:, 4:12, 18:26] = 220
    aug = ColorRandAugment(num_ops=3, magnitude=20)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for _ in range(30):
        out = aug(image)
        assert out.shape == image.shape
        weight = (out.int() - out[:, 31:32, 0:1].int()).abs().sum(0).float()
        if weight.sum() == 0:  # e.g. posterized to a flat image
            continue
        cy, cx = (weight * ys).sum() / weight.sum(), (weight * xs).sum() / weight.sum()
        assert abs(cy - 7.5) < 0.5 and abs(cx - 21.5) < 0.5
    # the same check catches a geometric op
    rotate = v2.RandomRotation((30, 30))
    out = rotate(image)
    weight = (out.int() - 40).abs().sum(0).float()
    assert abs((weight * ys).sum() / weight.sum() - 7.5) > 0.5 or abs((weight * xs).sum() / weight.sum() - 21.5) > 0.5


def test_training_batch_matches_contract(processor, rows):
    torch.manual_seed(0)
    batch = XPLCollator(processor, train=True)(rows)
    assert batch["ids"] == [r["id"] for r in rows]
    assert batch["pixel_values"].shape == batch["pixel_values_b"].shape == (4, 3, 64, 64)
    assert not torch.equal(batch["pixel_values"], batch["pixel_values_b"])  # independent augmentations
    assert batch["audio_log_mel"].shape == (4, 3, 96, 64)
    assert batch["audio_waveform"].shape == (4, 66150)
    assert batch["gt_maps"].shape == (4, 224, 224) and batch["gt_maps"].dtype == torch.float32
    np.testing.assert_array_equal(batch["gt_maps"][0].numpy(), ground_truth_map(rows[0]["boxes"], "union"))
    assert batch["is_labeled"].dtype == torch.bool and batch["is_labeled"].all()
    assert batch["labels"] == [r["label"] for r in rows]
    assert "true_gt_maps" not in batch


def test_eval_batch_is_deterministic(processor, rows):
    collate = XPLCollator(processor, train=False)
    b1, b2 = collate(rows), collate(rows)
    assert b1["pixel_values_b"] is b1["pixel_values"]
    assert torch.equal(b1["pixel_values"], b2["pixel_values"])
    # evaluation view == the processor's own preprocessing
    direct = processor.image_to_tensor(processor.load_image(PIL.Image.open(io.BytesIO(rows[0]["image"]["bytes"]))))
    assert torch.allclose(b1["pixel_values"][0], direct)


def test_unlabeled_batch_has_true_maps(processor):
    rows = [generate_sample(CONFIG, "unlabeled", i) for i in range(3)]
    batch = XPLCollator(processor, train=True)(rows)
    assert not batch["is_labeled"].any() and batch["gt_maps"].sum() == 0
    assert batch["true_gt_maps"].shape == (3, 224, 224)
    np.testing.assert_array_equal(batch["true_gt_maps"][1].numpy(), ground_truth_map(rows[1]["true_boxes"], "union"))


def _wav(wave, sr=16000, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def bad_rows(rows):
    good = rows[0]
    nan = np.zeros(16000, np.float32)
    nan[10] = np.nan
    return {
        "corrupt image": {**good, "id": "bad-jpeg", "image": {"bytes": good["image"]["bytes"][:200], "path": None}},
        "not an image": {**good, "id": "bad-img2", "image": {"bytes": b"hello", "path": None}},
        "unreadable audio": {**good, "id": "bad-audio", "audio": {"bytes": b"RIFFxxxx", "path": None}},
        "empty audio": {**good, "id": "empty-audio", "audio": {"bytes": _wav(np.zeros(0, np.float32)), "path": None}},
        "nan audio": {**good, "id": "nan-audio", "audio": {"bytes": _wav(nan, subtype="FLOAT"), "path": None}},
        "bad rule": {**good, "id": "bad-rule", "gt_rule": "boxes"},
        "bad boxes": {**good, "id": "bad-boxes", "boxes": [[0.1, 0.2]]},
    }


@pytest.mark.parametrize(
    "case", ["corrupt image", "not an image", "unreadable audio", "empty audio", "nan audio", "bad rule", "bad boxes"]
)
def test_bad_sample_skip_and_strict(processor, rows, case, caplog):
    bad = bad_rows(rows)[case]
    collate = XPLCollator(processor, train=True)
    batch = collate([rows[1], bad, rows[2]])
    assert batch["ids"] == [rows[1]["id"], rows[2]["id"]]
    assert collate.num_skipped == 1 and collate.skipped[0][0] == bad["id"]
    assert bad["id"] in caplog.text
    assert collate([bad]) is None  # a batch of only bad samples
    with pytest.raises(BadSampleError, match=bad["id"]):
        XPLCollator(processor, train=True, on_bad_sample="raise")([rows[1], bad])


def test_dataloader_over_loaded_splits(processor, tmp_path):
    make_benchmark(str(tmp_path), num_labeled=6, num_unlabeled=8, num_validation=2, num_test=2)
    labeled = load_labeled(str(tmp_path), "labeled")
    batches = list(DataLoader(labeled, batch_size=4, collate_fn=XPLCollator(processor, train=True)))
    assert [len(b["ids"]) for b in batches] == [4, 2]
    stream = load_unlabeled_stream(str(tmp_path), shuffle_buffer=4)
    batches = list(DataLoader(stream, batch_size=4, collate_fn=XPLCollator(processor, train=True), num_workers=0))
    assert sum(len(b["ids"]) for b in batches) == 8 and all("true_gt_maps" in b for b in batches)


def _jpeg_value(red: int) -> dict:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (red, 0, 0)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": f"{red}.png"}


def test_collator_takes_one_of_the_frames_per_training_visit_and_image_in_evaluation(processor, rows):
    """A row with ``frames`` (video converted with --frames_per_clip K): training draws one frame per visit with
    torch's generator (seeded), evaluation always uses ``image``."""
    row = dict(rows[0], image=_jpeg_value(128), frames=[_jpeg_value(r) for r in (0, 128, 255)])
    evaluate = XPLCollator(processor, train=False)
    train = XPLCollator(processor, train=True, num_ops=0)  # no colour change: the frame shows through

    def red(batch):  # the red channel of the first view, back in [0, 255]
        return round(float(batch["pixel_values"][0, 0, 0, 0]) * processor.image_std[0] * 255
                     + processor.image_mean[0] * 255)

    assert {red(evaluate([row])) for _ in range(5)} == {128}
    torch.manual_seed(0)
    first = [red(train([row])) for _ in range(12)]
    torch.manual_seed(0)
    assert [red(train([row])) for _ in range(12)] == first  # seeded
    assert set(first) == {0, 128, 255}  # every frame is visited
