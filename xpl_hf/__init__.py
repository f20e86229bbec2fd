"""xpl-hf: Cross Pseudo-Labeling (XPL) for semi-supervised audio-visual source localization."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_xpl import XPLConfig
from .loading import load_model_and_processor
from .metrics.protocol import METRIC_PATH
from .modeling_xpl import AVSLBranch, XPLModel, XPLModelOutput, XPLPreTrainedModel
from .processing_xpl import AudioError, ImageError, XPLProcessor

__version__ = "0.1.0"

AutoConfig.register("xpl", XPLConfig, exist_ok=True)
AutoModel.register(XPLConfig, XPLModel, exist_ok=True)
AutoProcessor.register(XPLConfig, XPLProcessor, exist_ok=True)
# Saved folders carry the code, so `AutoModel.from_pretrained(dir, trust_remote_code=True)` works without xpl_hf.
XPLConfig.register_for_auto_class()
XPLModel.register_for_auto_class("AutoModel")
XPLProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["XPLConfig", "XPLModel", "XPLModelOutput", "XPLPreTrainedModel", "AVSLBranch", "XPLProcessor",
           "AudioError", "ImageError", "load_model_and_processor", "METRIC_PATH", "__version__"]
