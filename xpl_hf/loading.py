"""Load a trained XPL model and its processor from a local folder or a Hub id, checked: the loader of the
evaluation CLI and the Space."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .modeling_xpl import WEIGHT_FILES, XPLModel
from .paths import is_local
from .processing_xpl import XPLProcessor, check_processor_matches

logger = logging.getLogger(__name__)

__all__ = ["load_model_and_processor", "WEIGHT_FILES"]


def _check_local_folder(path: Path, shown: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"model folder {shown!r} does not exist (pass a saved folder or a Hub id ORG/NAME).")
    if not path.is_dir():
        raise FileNotFoundError(f"{shown!r} is a file; pass the folder written by training (save_pretrained).")
    if (path / "trainer_state.json").is_file() and not (path / "config.json").is_file():
        output_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise FileNotFoundError(
            f"{shown!r} is a training checkpoint (for --resume_from_checkpoint), not a saved model. Pass the run's "
            f"output folder ({output_dir}) or its best/ folder instead.")
    if not (path / "config.json").is_file() or not any((path / name).is_file() for name in WEIGHT_FILES):
        hint = " It holds training checkpoints only: training has not finished." if (path / "checkpoints").is_dir() \
            else ""
        raise FileNotFoundError(f"{shown!r} holds no saved model (config.json + model.safetensors).{hint}")


def load_model_and_processor(name_or_path: str | os.PathLike, revision: str | None = None,
                             token: str | bool | None = None, device: str | torch.device | None = None
                             ) -> tuple[XPLModel, XPLProcessor]:
    """`XPLModel.from_pretrained` + `XPLProcessor.from_pretrained`, checked, in eval mode (float32) on ``device``.

    A folder saved without a processor gets one built from the model's config (with a warning).

    Raises:
        FileNotFoundError: the local folder is missing, a file, a training checkpoint, or holds no model.
        WeightsError (an OSError): the weight file lacks tensors or holds NaN / infinite values (names the file).
        ValueError: a setting of config.json or preprocessor_config.json is out of its bounds, or the processor
            does not match the model (`image_size`, `clip_seconds`, sample rates); the message names the setting.
        OSError: the Hub id cannot be loaded (offline, unknown, gated).
    """
    name = os.fspath(name_or_path)
    if is_local(name):
        _check_local_folder(Path(name).expanduser(), name)
        name = str(Path(name).expanduser())
    model = XPLModel.from_pretrained(name, revision=revision, token=token)
    try:
        processor = XPLProcessor.from_pretrained(name, revision=revision, token=token)
    except OSError as error:  # none saved; a saved one with bad settings raises its ValueError
        logger.warning("no processor saved with %s (%s); building one from the model config", name, error)
        processor = XPLProcessor.from_config(model.config)
    check_processor_matches(model.config, processor)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, processor
