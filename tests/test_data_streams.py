"""Resumable training data (xpl_hf.data.streams): labelled order, the unlabelled stream, DropLabels."""

import pytest

from xpl_hf.data import load_unlabeled_stream
from xpl_hf.data.streams import DropLabels, LabeledBatches, UnlabeledStream


def test_labeled_batches_resume_position():
    full = LabeledBatches(10, 3, seed=1)
    it = iter(full)
    first = [next(it) for _ in range(5)]  # crosses an epoch (3 batches per epoch)
    resumed = LabeledBatches(10, 3, seed=1)
    resumed.load_state_dict({"epoch": 1, "batch": 1})
    assert next(iter(resumed)) == first[4]
    ranks = [next(iter(LabeledBatches(10, 2, seed=1, rank=r, world_size=2))) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="cannot fill one batch"):
        LabeledBatches(3, 4, seed=0)


def test_empty_unlabeled_stream_is_an_error():
    stream = UnlabeledStream(make_stream=lambda epoch: [], make_loader=lambda s: iter(()))
    with pytest.raises(ValueError, match="unlabeled stream is empty"):
        next(iter(stream))


def test_stream_resume_skips_consumed_rows(tiny_benchmark):
    def make_stream(epoch):
        return load_unlabeled_stream(tiny_benchmark, "unlabeled", seed=3, shuffle_buffer=8, epoch=epoch)

    def make_loader(stream):
        rows = list(stream)
        return [{"ids": [r["id"] for r in rows[i:i + 4]]} for i in range(0, len(rows), 4)]

    full = UnlabeledStream(make_stream, make_loader)
    it = iter(full)
    batches = [next(it)["ids"] for _ in range(10)]  # 8 batches per epoch: crosses into epoch 1
    resumed = UnlabeledStream(make_stream, make_loader)
    resumed.load_state_dict({"epoch": 0, "consumed": 12})
    it2 = iter(resumed)
    assert [next(it2)["ids"] for _ in range(7)] == batches[3:10]


def test_drop_labels_keeps_boxes_only_as_diagnostics(caplog):
    import logging

    log = logging.getLogger("test-drop")
    drop = DropLabels(log)
    labelled = {"id": "x", "boxes": [[0.1, 0.1, 0.5, 0.5]], "gt_rule": "union"}
    with caplog.at_level(logging.WARNING, logger="test-drop"):
        out = drop(labelled)
        drop({**labelled, "id": "y"})
    assert out["boxes"] == [] and out["gt_rule"] == "none"
    assert out["true_boxes"] == [[0.1, 0.1, 0.5, 0.5]] and out["true_gt_rule"] == "union"
    assert sum("carries boxes" in r.message for r in caplog.records) == 1  # said once
    plain = {"id": "z", "boxes": [], "gt_rule": "none", "true_boxes": [[0, 0, 1, 1]]}
    assert drop(plain) is plain
