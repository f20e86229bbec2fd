"""The metric card of the `avsl_localization` evaluate metric: present, shipped with the package, and accurate."""

import doctest
import glob
import os
from pathlib import Path

import pytest
from huggingface_hub import RepoCard

import xpl_hf
from xpl_hf.metrics.protocol import PROTOCOL, THRESHOLD_INDEX

ROOT = Path(__file__).resolve().parent.parent
CARD = Path(xpl_hf.METRIC_PATH) / "README.md"


def test_card_states_the_protocol_and_the_check_value():
    card = RepoCard.load(CARD)
    assert {"evaluate", "metric"} <= set(card.data.tags)
    text = card.text
    assert "evaluate.load(xpl_hf.METRIC_PATH)" in text
    assert "CIoU 21.95, AUC 31.25" in text
    assert f"sorted(map.flatten())[{THRESHOLD_INDEX}]" in text
    assert PROTOCOL["upsampling"] in text and "`align_corners=False`" in text
    for heading in ("Metric Description", "How to Use", "Inputs", "Output Values", "Limitations and Bias", "Citation"):
        assert f"## {heading}" in text or f"### {heading}" in text


def test_card_example_runs():
    text = "\n".join("" if line.startswith("```") else line for line in CARD.read_text().splitlines())  # fences
    test = doctest.DocTestParser().get_doctest(text, {}, "README.md", str(CARD), 0)
    assert len(test.examples) >= 3
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_package_data_ships_the_card():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["xpl_hf"]
    shipped = {os.path.normpath(p) for pattern in patterns
               for p in glob.glob(str(ROOT / "xpl_hf" / pattern), recursive=True)}
    assert os.path.normpath(CARD) in shipped
