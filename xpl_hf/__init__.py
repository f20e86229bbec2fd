"""xpl-hf: Cross Pseudo-Labeling (XPL) for semi-supervised audio-visual source localization."""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_xpl import XPLConfig
from .loading import load_model_and_processor
from .metrics.protocol import METRIC_PATH
from .modeling_xpl import AVSLBranch, XPLModel, XPLModelOutput, XPLPreTrainedModel
from .pipeline_xpl import TASK as PIPELINE_TASK
from .pipeline_xpl import AudioVisualSourceLocalizationPipeline, save_pretrained_with_pipeline
from .processing_xpl import AudioError, ImageError, XPLProcessor, check_processor_matches

__version__ = "0.1.0"

AutoConfig.register("xpl", XPLConfig, exist_ok=True)
AutoModel.register(XPLConfig, XPLModel, exist_ok=True)
AutoProcessor.register(XPLConfig, XPLProcessor, exist_ok=True)
# Saved folders carry the code, so `AutoModel.from_pretrained(dir, trust_remote_code=True)` works without xpl_hf.
XPLConfig.register_for_auto_class()
XPLModel.register_for_auto_class("AutoModel")
XPLProcessor.register_for_auto_class("AutoProcessor")
# pipeline("audio-visual-source-localization", model=XPLModel_or_folder, ...) in this process; saved folders carry the
# pipeline's code too (save_pretrained_with_pipeline), for `pipeline(..., trust_remote_code=True)` anywhere.
PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=AudioVisualSourceLocalizationPipeline,
                                    pt_model=AutoModel, type="multimodal")

__all__ = ["XPLConfig", "XPLModel", "XPLModelOutput", "XPLPreTrainedModel", "AVSLBranch", "XPLProcessor",
           "AudioError", "ImageError", "load_model_and_processor", "check_processor_matches", "METRIC_PATH",
           "AudioVisualSourceLocalizationPipeline", "save_pretrained_with_pipeline", "PIPELINE_TASK", "__version__"]
