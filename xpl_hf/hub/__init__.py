"""Hugging Face Hub helpers: the model card (:mod:`.card`), pushing a model folder (:mod:`.push`), staging and pushing
the Gradio Space (:mod:`.space`), and their command line (:mod:`.cli`, ``python -m xpl_hf.hub``).

Python::

    from xpl_hf.hub import write_model_card, push_model_folder, push_space
    write_model_card("xpl-output", results={"dataset": "VGG-SS", "split": "test",
                                            "fused": {"ciou": 39.1, "auc": 40.2}, "a": {...}, "b": {...}})
    push_model_folder("xpl-output", "my-org/xpl-vggss")
    push_space("space", "my-org/xpl-demo", model_id="my-org/xpl-vggss")

The results format is documented in :mod:`xpl_hf.hub.card`.
"""

from .card import (
    PIPELINE_TAG,
    TASK_TYPE,
    build_model_card,
    dataset_display_name,
    eval_results_from_dict,
    public_value,
    write_model_card,
)
from .cli import main
from .push import MODEL_IGNORE_PATTERNS, push_model_folder
from .space import SPACE_VARIABLE, push_space, stage_space

__all__ = ["MODEL_IGNORE_PATTERNS", "PIPELINE_TAG", "SPACE_VARIABLE", "TASK_TYPE", "build_model_card",
           "dataset_display_name", "eval_results_from_dict", "main", "public_value", "push_model_folder", "push_space",
           "stage_space", "write_model_card"]
