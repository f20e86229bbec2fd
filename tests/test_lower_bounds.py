"""Smoke test of the Hugging Face stack xpl-hf builds on, meant to run at the DECLARED LOWER BOUNDS of pyproject.toml.

`.ci/run` installs the lower bounds of LOWER_BOUND_PACKAGES into a second virtual environment (the first one's
packages underneath, so torch is not installed twice) and runs this file there with `XPL_LOWER_BOUNDS=1`; then the
first test checks that exactly those versions were imported, so the smoke tests cannot silently run on newer ones.
In the normal test run the smoke tests run on the installed versions (cheap, and they must pass there too).

    python tests/test_lower_bounds.py    # prints the pins, e.g. transformers==5.0.0 datasets==4.0.0 ...
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
LOWER_BOUND_PACKAGES = ("transformers", "datasets", "accelerate", "huggingface_hub", "evaluate")
AT_LOWER_BOUNDS = os.environ.get("XPL_LOWER_BOUNDS") == "1"


def declared_requirements() -> list[str]:
    """Every requirement of pyproject.toml: the core `dependencies` and those of each extra."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest depends on tomli there
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def declared_lower_bounds() -> dict[str, str]:
    """{package: lower bound} of LOWER_BOUND_PACKAGES, read from pyproject.toml (core dependencies and extras)."""
    from packaging.requirements import Requirement

    bounds = {}
    for req in map(Requirement, declared_requirements()):
        name = req.name.replace("-", "_").lower()
        if name in LOWER_BOUND_PACKAGES:
            lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
            if len(lows) != 1:
                raise ValueError(f"pyproject.toml: {req} declares no single lower bound")
            if bounds.setdefault(name, lows[0]) != lows[0]:
                raise ValueError(f"pyproject.toml declares two lower bounds for {name}: {bounds[name]}, {lows[0]}")
    missing = set(LOWER_BOUND_PACKAGES) - set(bounds)
    if missing:
        raise ValueError(f"pyproject.toml declares no dependency on {sorted(missing)}")
    return bounds


def _unmet(distribution: str) -> list[str]:
    """Requirements of an installed distribution that the importable versions do not satisfy (like `pip check`)."""
    from packaging.requirements import Requirement

    unmet = []
    for line in importlib.metadata.requires(distribution) or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or one for another platform
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{distribution} needs {req}, which is not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            unmet.append(f"{distribution} needs {req}, got {version}")
    return unmet


@pytest.mark.skipif(not AT_LOWER_BOUNDS, reason="checks the versions only where CI installed the lower bounds")
def test_running_at_the_declared_lower_bounds():
    from packaging.version import Version

    bounds = declared_lower_bounds()
    installed = {name: importlib.metadata.version(name) for name in bounds}
    assert {k: Version(v) for k, v in installed.items()} == {k: Version(v) for k, v in bounds.items()}, installed
    for name in bounds:  # the lower bounds must be a consistent set: each one's own requirements hold
        assert not _unmet(name), _unmet(name)
    import transformers

    assert Version(transformers.__version__) == Version(bounds["transformers"])  # the imported copy too


def test_declared_bounds_are_readable():
    bounds = declared_lower_bounds()
    assert set(bounds) == set(LOWER_BOUND_PACKAGES)
    assert all(re.fullmatch(r"\d+(\.\d+)*", v) for v in bounds.values())


# ------------------------------------------------------------------------------------------------------- smoke tests
@pytest.fixture(scope="module")
def tiny():
    from xpl_hf import XPLConfig, XPLModel, XPLProcessor

    config = XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=64, clip_seconds=1.0)
    return XPLModel(config).eval(), XPLProcessor.from_config(config)


def _inputs(processor):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    audio = rng.standard_normal(16000).astype(np.float32) * 0.1
    return processor(images=image, audio=audio, sampling_rate=16000, return_tensors="pt")


def test_model_processor_round_trip(tiny, tmp_path):
    import torch
    from transformers import AutoModel, AutoProcessor

    from xpl_hf import XPLModel, XPLProcessor

    model, processor = tiny
    inputs = _inputs(processor)
    with torch.no_grad():
        expected = model(**inputs).maps
    assert expected.shape == (1, 2, 2) and torch.isfinite(expected).all()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded, reprocessor = XPLModel.from_pretrained(tmp_path).eval(), XPLProcessor.from_pretrained(tmp_path)
    auto = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True).image_size == 64
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**_inputs(reprocessor)).maps, expected)
        torch.testing.assert_close(auto(**inputs).maps, expected)


def test_accelerate_training_step(tiny, tmp_path):
    """A prepared model and optimiser take a step that moves the weights, and save_state / load_state bring back
    the saved weights and optimiser state: the step after a restore repeats the step after the save exactly."""
    import copy

    import torch
    from accelerate import Accelerator

    model, processor = tiny
    model = copy.deepcopy(model).train()  # the module's fixture stays as it was
    accelerator = Accelerator(cpu=True)
    train_model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.01))
    inputs = _inputs(processor)

    def step() -> dict[str, torch.Tensor]:
        accelerator.backward(train_model(**inputs).maps.mean())
        optimizer.step()
        optimizer.zero_grad()
        return {k: v.detach().clone() for k, v in accelerator.unwrap_model(train_model).state_dict().items()}

    def same(x: dict, y: dict) -> bool:
        return all(torch.equal(x[k], y[k]) for k in x)

    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved = step()
    assert not same(initial, saved)  # the step reached the weights
    accelerator.save_state(str(tmp_path / "state"))
    after_save = step()  # AdamW's second step: it reads the moments of the first
    assert not same(saved, after_save)
    step()
    accelerator.load_state(str(tmp_path / "state"))
    restored = {k: v.detach().clone() for k, v in accelerator.unwrap_model(train_model).state_dict().items()}
    assert same(saved, restored)
    assert same(after_save, step())  # weights, optimiser moments and RNG all restored


def test_dataset_folder_and_streaming(tmp_path):
    import datasets
    from conftest import make_benchmark

    from xpl_hf.data.loading import load_labeled, load_unlabeled_stream

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
    folder = make_benchmark(tmp_path / "bench", num_labeled=2, num_unlabeled=4, num_validation=1, num_test=1,
                            image_size=32)
    ds = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert {k: len(v) for k, v in ds.items()} == {"labeled": 2, "unlabeled": 4, "validation": 1, "test": 1}
    assert len(list(datasets.load_dataset(str(folder), split="unlabeled", streaming=True))) == 4
    assert len(load_labeled(str(folder), "labeled")) == 2
    stream = load_unlabeled_stream(str(folder), shuffle_buffer=0)
    assert len(list(stream)) == 4 and stream.state_dict()


def test_metric_and_model_card(tmp_path):
    import evaluate
    from huggingface_hub import ModelCard

    import xpl_hf
    from xpl_hf.hub import write_model_card

    metric = evaluate.load(xpl_hf.METRIC_PATH, "union")
    results = metric.compute(predictions=[[[0.0, 1.0], [0.0, 1.0]]], references=[[[0.5, 0.0, 1.0, 1.0]]])
    assert results["ciou"] == 100.0
    card = ModelCard.load(write_model_card(tmp_path, results={"dataset": "VGG-SS", "fused": results},
                                           method_settings={"method": "xpl"}))
    assert card.data.eval_results[0].metric_value == 100.0


if __name__ == "__main__":
    sys.stdout.write(" ".join(f"{name}=={version}" for name, version in declared_lower_bounds().items()) + "\n")
