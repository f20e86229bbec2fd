"""xpl-hf: Cross Pseudo-Labeling (XPL) for semi-supervised audio-visual source localization.

The package's names load on first use (PEP 562), so `import xpl_hf.training_args` (what `train_xpl.py --help` needs)
does not import torch, torchvision and transformers. The first use of any name below also registers XPL with
transformers' Auto classes and its pipeline registry (`register()`), as an eager import used to.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.4.0"  # the package's version; pyproject.toml reads it from here

_LAZY = {  # name -> submodule that defines it
    "XPLConfig": "configuration_xpl",
    "XPLModel": "modeling_xpl",
    "XPLModelOutput": "modeling_xpl",
    "XPLPreTrainedModel": "modeling_xpl",
    "AVSLBranch": "modeling_xpl",
    "XPLProcessor": "processing_xpl",
    "AudioError": "processing_xpl",
    "ImageError": "processing_xpl",
    "check_processor_matches": "processing_xpl",
    "load_model_and_processor": "loading",
    "METRIC_PATH": "metrics.protocol",
    "AudioVisualSourceLocalizationPipeline": "pipeline_xpl",
    "save_pretrained_with_pipeline": "pipeline_xpl",
    "PIPELINE_TASK": "pipeline_xpl",  # its TASK
}
_RENAMED = {"PIPELINE_TASK": "TASK"}
_registered = False


def register() -> None:
    """Register XPL with `AutoConfig`, `AutoModel`, `AutoProcessor` and the pipeline registry (idempotent)."""
    global _registered
    if _registered:
        return
    _registered = True
    from transformers import AutoConfig, AutoModel, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_xpl import XPLConfig
    from .modeling_xpl import XPLModel
    from .pipeline_xpl import TASK, AudioVisualSourceLocalizationPipeline
    from .processing_xpl import XPLProcessor

    AutoConfig.register("xpl", XPLConfig, exist_ok=True)
    AutoModel.register(XPLConfig, XPLModel, exist_ok=True)
    AutoProcessor.register(XPLConfig, XPLProcessor, exist_ok=True)
    # Saved folders carry the code, so `AutoModel.from_pretrained(dir, trust_remote_code=True)` works without xpl_hf.
    XPLConfig.register_for_auto_class()
    XPLModel.register_for_auto_class("AutoModel")
    XPLProcessor.register_for_auto_class("AutoProcessor")
    # pipeline("audio-visual-source-localization", model=XPLModel_or_folder, ...) in this process; saved folders carry
    # the pipeline's code too (save_pretrained_with_pipeline), for `pipeline(..., trust_remote_code=True)` anywhere.
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=AudioVisualSourceLocalizationPipeline,
                                        pt_model=AutoModel, type="multimodal")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'xpl_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), _RENAMED.get(name, name))
    register()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


if TYPE_CHECKING:  # for type checkers and IDEs: the names above, imported eagerly
    from .configuration_xpl import XPLConfig
    from .loading import load_model_and_processor
    from .metrics.protocol import METRIC_PATH
    from .modeling_xpl import AVSLBranch, XPLModel, XPLModelOutput, XPLPreTrainedModel
    from .pipeline_xpl import TASK as PIPELINE_TASK
    from .pipeline_xpl import AudioVisualSourceLocalizationPipeline, save_pretrained_with_pipeline
    from .processing_xpl import AudioError, ImageError, XPLProcessor, check_processor_matches

__all__ = ["XPLConfig", "XPLModel", "XPLModelOutput", "XPLPreTrainedModel", "AVSLBranch", "XPLProcessor",
           "AudioError", "ImageError", "check_processor_matches", "load_model_and_processor", "METRIC_PATH",
           "AudioVisualSourceLocalizationPipeline", "save_pretrained_with_pipeline", "PIPELINE_TASK", "register",
           "__version__"]
