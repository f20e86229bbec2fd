"""Schema, box rules, column and id checks of xpl_hf.data.schema."""

import math

import pytest
from datasets import Audio, Image

from xpl_hf.data.schema import (
    SYNTHETIC_FEATURES,
    XPL_FEATURES,
    DataValidationError,
    check_columns,
    check_unique_ids,
    clean_boxes,
    find_duplicate_ids,
)


def test_features_follow_design():
    assert list(XPL_FEATURES) == ["id", "image", "audio", "boxes", "gt_rule", "label"]
    assert isinstance(XPL_FEATURES["image"], Image)
    assert isinstance(XPL_FEATURES["audio"], Audio) and XPL_FEATURES["audio"].decode is False
    assert "true_boxes" in SYNTHETIC_FEATURES
    # the parquet metadata round-trips the features
    from datasets import Features

    assert Features.from_arrow_schema(XPL_FEATURES.arrow_schema) == XPL_FEATURES


def test_clean_boxes_reorder_rules():
    boxes = [
        [0.1, 0.2, 0.5, 0.6],  # fine
        [-0.2, 0.1, 1.3, 0.9],  # out of range -> clipped
        [0.7, 0.8, 0.2, 0.3],  # inverted -> reordered
        [0.4, 0.4, 0.4, 0.9],  # zero width -> dropped
        [0.1, math.nan, 0.2, 0.3],  # NaN -> malformed
        [0.1, 0.2, 0.3],  # 3 numbers -> malformed
    ]
    out, rep = clean_boxes(boxes)
    assert out == [[0.1, 0.2, 0.5, 0.6], [0.0, 0.1, 1.0, 0.9], [0.2, 0.3, 0.7, 0.8]]
    assert (rep.kept, rep.clipped, rep.reordered, rep.zero_area, rep.malformed) == (3, 1, 1, 1, 2)
    assert rep.repaired
    assert clean_boxes(None)[0] == [] and not clean_boxes([])[1].repaired


def test_clean_boxes_protocol_drop_rule():
    # a VGG-SS corrupt entry: the max corner is -2.88e16; clipping makes the box inverted -> dropped
    out, rep = clean_boxes([[0.0, 0.38125, 0.30625, -2.88e16], [0.1, 0.1, 0.2, 0.2]], inverted="drop")
    assert out == [[0.1, 0.1, 0.2, 0.2]]
    assert rep.clipped == 1 and rep.inverted_dropped == 1
    with pytest.raises(ValueError):
        clean_boxes([], inverted="bogus")


def test_missing_columns_named():
    with pytest.raises(DataValidationError, match=r"\['audio'\]"):
        check_columns(["id", "image", "boxes", "gt_rule"])
    with pytest.raises(DataValidationError, match="labeled split needs boxes"):
        check_columns(["id", "image", "audio"], require_boxes=True)
    check_columns(["id", "image", "audio"], require_boxes=False)


def test_duplicate_ids():
    assert find_duplicate_ids(["a", "b", "a", "c", "a"]) == {"a": 3}
    with pytest.raises(DataValidationError, match="'a' x2"):
        check_unique_ids(["a", "b", "a"])
    check_unique_ids(["a", "b"])
