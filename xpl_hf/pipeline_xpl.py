"""`pipeline("audio-visual-source-localization")`: where in a frame does its sound come from?

```python
>>> from transformers import pipeline
>>> localizer = pipeline("audio-visual-source-localization", model="xpl-output", trust_remote_code=True)
>>> result = localizer(image="frame.jpg", audio="sound.wav", threshold=0.5)
>>> result["map"].shape                 # (H, W): the fused heat map at the frame's own size, in [0, 1]
>>> result["box"], result["consensus"]  # [x0, y0, x1, y1] around the map >= 0.5; the branches' agreement ρ
>>> result["confidence"]                # in [0, 1]; below 0.5: no source of this sound found in the frame
>>> localizer(video="clip.mp4", time=2.0)  # the frame at 2 s and the sound around it (default: the middle frame)
```

A folder saved by [`save_pretrained_with_pipeline`] (what training writes) carries this file, the model's and the
processor's code, and a `custom_pipelines` entry in its `config.json`, so the call above works from any directory,
offline, without xpl-hf installed: `trust_remote_code=True` runs the folder's own copy of the code.

Inputs, per call: `image` (path, PIL image, array, bytes: `xpl_hf.image.load_image`'s rules, decoded for the model's
input size exactly as training decodes it) and `audio` (WAV / FLAC / OGG path or bytes, an array with
`sampling_rate=`, or a `{"array", "sampling_rate"}` dict as `datasets` gives it); or `video` (path, bytes or binary
file object of an allow-listed container: `xpl_hf.media`, which refuses playlists and URLs) with an optional `time`
in seconds (a number: int, float or numpy scalar; default: the middle frame), whose frame and surrounding sound are
used (`audio=` replaces the sound). A list of such dicts returns a list of results. Output: the dict of
[`XPLProcessor.post_process_localization`] for that image (`map`, `map_a`, `map_b`, `consensus`, `confidence`,
`confidence_a`, `confidence_b`, and `box` unless `threshold=None`; `time` for a video), the maps at the frame's full
size.

Precision: a model folder saved in float16 / bfloat16 (a GPU run) is run in float32 on the CPU, where the half
types are slow and the processor's inputs are float32; pass `dtype=torch.float16` to `pipeline()` to keep the saved
type (inputs are then cast to it). On a GPU, `dtype="auto"` (the default) keeps the saved type.
"""

from __future__ import annotations

import logging
import numbers
import os
from typing import Any

import torch
from transformers import Pipeline

from .audio import WINDOW_MARGIN_SECONDS
from .image import full_size
from .media import read_video_clip
from .processing_xpl import XPLProcessor, check_processor_matches

logger = logging.getLogger(__name__)

TASK = "audio-visual-source-localization"
DEFAULT_THRESHOLD = 0.5
"""Default `threshold` of the box: half-way between the least and the most likely location of the normalised map."""


class AudioVisualSourceLocalizationPipeline(Pipeline):
    r"""
    Heat maps of the sounding object in an image, from [`XPLModel`]'s two branches and their fusion.

    Args:
        model ([`XPLModel`]): the model.
        processor ([`XPLProcessor`], *optional*): its processor; loaded from the model's folder / Hub id when omitted
            (built from the model's config if that folder has none). `feature_extractor=` is accepted as an alias.
        device, kwargs: as for every [`Pipeline`]; call-time options are `sampling_rate` (for arrays) and
            `threshold` (`float` in [0, 1] or `None`, default 0.5).
    """

    _load_processor = False  # XPLProcessor is a FeatureExtractionMixin; it is loaded in __init__ (see `processor`)
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, model, processor: XPLProcessor | None = None, feature_extractor: XPLProcessor | None = None,
                 **kwargs):
        processor = processor if processor is not None else feature_extractor
        if processor is None:
            processor = self._load_model_processor(model)
        check_processor_matches(model.config, processor)  # a processor for other inputs gives maps of the wrong size
        dtype = kwargs.get("dtype")  # pipeline() passes its own, "auto" unless the caller names one
        super().__init__(model=model, processor=processor, **kwargs)
        self._float32_on_cpu(dtype)

    def _float32_on_cpu(self, dtype) -> None:
        """Run a half-precision model in float32 on the CPU unless the caller asked for its type (`dtype=`)."""
        half = (torch.float16, torch.bfloat16)
        if self.device.type == "cpu" and self.model.dtype in half and dtype in (None, "auto"):
            logger.warning("the model's weights are %s; running it in float32 on the CPU (pass dtype=%s to keep "
                           "them)", self.model.dtype, self.model.dtype)
            self.model.float()

    @staticmethod
    def _load_model_processor(model) -> XPLProcessor:
        source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        if source:
            revision = getattr(model.config, "_commit_hash", None)  # the Hub commit the weights came from, if any
            try:
                return XPLProcessor.from_pretrained(source, revision=revision)
            except OSError as error:  # none saved; a saved processor with bad settings is an error, not replaced
                logger.warning("no processor saved with %s (%s); building one from the model config", source, error)
        return XPLProcessor.from_config(model.config)

    def __call__(self, inputs: dict | list[dict] | None = None, *, image: Any = None, audio: Any = None,
                 video: Any = None, time: float | None = None, **kwargs) -> dict | list[dict]:
        """
        Args:
            inputs: `{"image": ..., "audio": ...}` (optionally with `"sampling_rate"`) or `{"video": ..., "time":
                ...}`, or a list of them.
            image, audio: one pair, instead of `inputs`.
            video, time: a video and the time of its frame in seconds (default: the middle), instead of `inputs`.
            sampling_rate (`int`, *optional*): rate of audio given as arrays.
            threshold (`float` in [0, 1] or `None`, defaults to 0.5): threshold of the box on the fused map.

        Returns:
            One dict per pair (a list for a list): see [`XPLProcessor.post_process_localization`].
        """
        if video is not None:
            if inputs is not None or image is not None:
                raise ValueError("pass either `video=` (optionally with `time=` and `audio=`), `image=` and `audio=`, "
                                 "or `inputs`.")
            inputs = {"video": video, "time": time, **({"audio": audio} if audio is not None else {})}
        elif time is not None:
            raise ValueError("`time=` goes with `video=`.")
        elif inputs is None:
            if image is None or audio is None:
                raise ValueError("pass both `image=` and `audio=` (or `inputs={'image': ..., 'audio': ...}`).")
            inputs = {"image": image, "audio": audio}
        elif image is not None or audio is not None:
            raise ValueError("pass either `inputs` or `image=` and `audio=`, not both.")
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, sampling_rate=None, threshold=DEFAULT_THRESHOLD, **unknown):
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; the options are `sampling_rate` and `threshold`.")
        preprocess_params = {} if sampling_rate is None else {"sampling_rate": sampling_rate}
        return preprocess_params, {}, {"threshold": threshold}

    def preprocess(self, inputs: dict, sampling_rate: int | None = None) -> dict:
        if not isinstance(inputs, dict) or not ({"image", "audio"} <= inputs.keys() or "video" in inputs):
            raise ValueError(f"each input must be a dict with 'image' and 'audio', or 'video'; got "
                             f"{type(inputs).__name__}"
                             f"{' with keys ' + str(sorted(inputs)) if isinstance(inputs, dict) else ''}.")
        if "video" in inputs:
            return self._preprocess_video(inputs, sampling_rate)
        # decoded for the model's input size, as the training collator decodes it: the same pixels on both paths
        image = self.processor.load_image(inputs["image"], target_size=self.processor.image_size)
        return self._features(image, inputs["audio"], inputs.get("sampling_rate", sampling_rate))

    def _preprocess_video(self, inputs: dict, sampling_rate: int | None) -> dict:
        clip = read_video_clip(inputs["video"], time=_seconds(inputs.get("time")),
                               clip_seconds=self.processor.clip_seconds + WINDOW_MARGIN_SECONDS)
        if inputs.get("audio") is not None:
            audio, rate = inputs["audio"], inputs.get("sampling_rate", sampling_rate)
        elif clip.audio is None:
            raise ValueError("the video has no audio stream; pass its sound as `audio=`.")
        else:
            audio, rate = clip.audio, clip.sampling_rate
        return {**self._features(clip.frames[0], audio, rate), "time": clip.time}

    def _features(self, image, audio, rate: int | None) -> dict:
        """The model inputs of one (decoded image, audio) pair, and the size its maps are drawn at."""
        if isinstance(audio, dict):  # {"array", "sampling_rate"} (datasets' Audio) or {"path"} / {"bytes"}
            rate = audio.get("sampling_rate", rate)
            audio = next((audio[k] for k in ("array", "raw", "bytes", "path") if audio.get(k) is not None), None)
            if audio is None:
                raise ValueError("an audio dict needs 'array' (with 'sampling_rate'), 'bytes' or 'path'.")
        if isinstance(audio, (str, os.PathLike, bytes, bytearray)):
            rate = None  # files carry their own rate
        features = self.processor(images=image, audio=audio, sampling_rate=rate, return_tensors="pt")
        width, height = full_size(image)
        return {**features, "target_size": (height, width)}

    def _forward(self, model_inputs: dict) -> dict:
        passed = {key: model_inputs.pop(key) for key in ("target_size", "time") if key in model_inputs}
        dtype = self.model.dtype  # the processor gives float32; a model kept in another type gets its own
        model_inputs = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in model_inputs.items()}
        outputs = self.model(**model_inputs)
        return {"maps": outputs.maps, "maps_a": outputs.maps_a, "maps_b": outputs.maps_b, **passed}

    def postprocess(self, model_outputs: dict, threshold: float | None = DEFAULT_THRESHOLD) -> dict:
        result = self.processor.post_process_localization(
            model_outputs, target_sizes=[model_outputs["target_size"]], threshold=threshold)[0]
        if "time" in model_outputs:
            result["time"] = model_outputs["time"]
        return result

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Model + processor + this pipeline's code, with the `custom_pipelines` entry that `pipeline()` reads."""
        from transformers import AutoModel

        # What PIPELINE_REGISTRY.register_pipeline records, set here so that a copy loaded with trust_remote_code
        # (never registered) saves itself as well.
        self._registered_impl = {TASK: {"impl": type(self), "pt": (AutoModel,), "type": "multimodal"}}
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


def _seconds(time: Any) -> float | None:
    """`time=` of a video as a float: a real number (int, float, numpy scalar) or None; a bool is refused."""
    if time is None:
        return None
    if isinstance(time, bool) or not isinstance(time, numbers.Real):
        raise ValueError(f"time={time!r}: expected a time in seconds (an int, a float or a numpy scalar), not a "
                         f"{type(time).__name__}.")
    return float(time)


def save_pretrained_with_pipeline(model, processor: XPLProcessor, save_directory: str | os.PathLike,
                                  **kwargs) -> None:
    """`model.save_pretrained` + `processor.save_pretrained` that also make the folder a pipeline.

    The folder then answers `pipeline("audio-visual-source-localization", model=folder, trust_remote_code=True)`
    (see the module docstring). The model stays on its device, in its type. `kwargs` go to `model.save_pretrained`.
    """
    parameter = next(model.parameters())  # the model keeps its device and its type (no float32 for saving)
    AudioVisualSourceLocalizationPipeline(model=model, processor=processor, device=parameter.device,
                                          dtype=parameter.dtype).save_pretrained(save_directory, **kwargs)


__all__ = ["AudioVisualSourceLocalizationPipeline", "save_pretrained_with_pipeline", "TASK", "DEFAULT_THRESHOLD"]
