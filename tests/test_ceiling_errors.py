"""bench/ceiling_errors.py: failure rates by sounding class and by (sounding, silent) pair."""

import numpy as np
from bench_modules import load


def scene(sounding: str, silent: str) -> list[dict]:
    return [{"label": sounding, "sounding": True, "box": [0, 0, 0.5, 0.5]},
            {"label": silent, "sounding": False, "box": [0.5, 0.5, 1, 1]}]


def test_failures_by_class_and_pair():
    ce = load("ceiling_errors")
    objects = [scene("flute", "siren")] * 10 + [scene("flute", "drum")] * 10 + [scene("drum", "flute")] * 10
    selected = np.ones((2, 30))
    selected[:, :10] = [[0.0] * 5 + [1.0] * 5, [0.0] * 10]  # flute beside siren: 15 of 20 (seed, scene) fail
    by_class, pairs = ce.failure_tables(selected, objects)
    assert by_class == {"flute": 37.5, "drum": 0.0}
    assert pairs[0] == ("flute", "siren", 75.0, 10)
    assert ("flute", "drum", 0.0, 10) in pairs and ("drum", "flute", 0.0, 10) in pairs
    assert ce.failure_tables(selected, objects, min_scenes=11)[1] == []


def test_oracle_map_selects_the_sounding_box_unless_another_box_lies_inside_it():
    ce = load("ceiling_errors")
    assert ce.oracle_selection([scene("flute", "siren")]) == 100.0  # boxes in opposite quarters
    # a silent box inside the sounding one, away from its edges: the upsampled box map is at least as high there,
    # so the oracle cannot pick the sounding object
    nested = [[{"label": "flute", "sounding": True, "box": [0.0, 0.0, 0.5, 0.5]},
               {"label": "siren", "sounding": False, "box": [0.0, 0.0, 0.3, 0.3]}]]
    assert ce.oracle_selection(nested, map_size=2) < 100.0
