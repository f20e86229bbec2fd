"""XPL audio-visual source localization: a Gradio Space.

Upload a frame and its sound (file or microphone), or a video and a time, and see where the sound comes from:
the heat maps of branch A (image encoder + VGGish), branch B (image encoder + SoundNet-8) and the fused map,
the two branches' consensus (Pearson ρ) and the inference time.

Start it locally (after training, which writes `xpl-output/`):

    python space/app.py --model xpl-output          # or --model ORG/NAME (a Hub model id)

Model lookup, first match wins: `--model`, `$XPL_MODEL_ID` (Hub id), `$XPL_MODEL_DIR` (folder), `xpl_space.json`
next to this file (written by `python -m xpl_hf.hub push-space --model_id ...`), then `./xpl-output` and the
`xpl-output/` folder of the repository checkout. Without a trained model the page says so and runs nothing.

Everything the page does is in plain functions (`load_model`, `read_image`, `read_audio`, `read_video`,
`localize`) so it can be tested without a browser; `build_demo` assembles the page. The maps and overlays come from
the package (`XPLProcessor.post_process_localization`, `xpl_hf.visualization.overlay_heatmap`), as in any script.

Hostile uploads: sizes, durations and pixel counts are read from the headers and checked before decoding; only the
audio window and the video frame the model uses are decoded; messages never show the server's paths; uploaded files
are deleted from Gradio's cache (`DELETE_CACHE`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

HERE = Path(__file__).resolve().parent
try:  # In the Space, xpl_hf/ is bundled next to this file; in a checkout, it is one level up.
    import xpl_hf  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the app is started
    sys.path.insert(0, str(HERE.parent))

from xpl_hf import XPLModel, XPLProcessor  # noqa: E402
from xpl_hf.audio import WINDOW_MARGIN_SECONDS, AudioError, decode_audio  # noqa: E402
from xpl_hf.image import MAX_PIXELS, load_image  # noqa: E402
from xpl_hf.loading import load_model_and_processor  # noqa: E402
from xpl_hf.paths import looks_like_hub_id  # noqa: E402
from xpl_hf.visualization import overlay_heatmap  # noqa: E402

logger = logging.getLogger("xpl_space")

# ----------------------------------------------------------------------------------------------------------- limits
MAX_IMAGE_MB = 20
MAX_AUDIO_MB = 20
MAX_VIDEO_MB = 100
MAX_AUDIO_SECONDS = 60.0
MAX_VIDEO_SECONDS = 30 * 60.0
MAX_IMAGE_SIDE = 4096  # images and video frames; also at most xpl_hf.image.MAX_PIXELS pixels
MIN_IMAGE_SIDE = 8
MAX_VIDEO_DECODE_FRAMES = 600  # frames decoded, from the keyframe before the chosen time, to reach it
AUDIO_SEEK_SLACK_SECONDS = 30.0  # audio decoded before the wanted window when a video's seek lands early
DELETE_CACHE = (300, 900)  # gr.Blocks(delete_cache=): every 5 min, delete uploads and outputs older than 15 min
DISPLAY_SIDE = 512  # overlays are drawn on the image scaled to at most this many pixels a side
OVERLAY_ALPHA = 0.5
DEFAULT_MODEL_DIR = "xpl-output"  # train_xpl.py's default --output_dir
IMAGE_FORMATS = "JPEG, PNG, WebP, BMP, GIF, TIFF"
AUDIO_FORMATS = "WAV, FLAC, OGG, MP3"

try:  # PyAV's wheels bundle the FFmpeg libraries: no system FFmpeg needed.
    import av

    HAVE_AV = True
except ImportError:  # pragma: no cover - depends on the environment
    av = None
    HAVE_AV = False


class InputError(ValueError):
    """A user input the app cannot use; the message is shown in the page as is."""


# ------------------------------------------------------------------------------------------------------------ model
@dataclass
class LoadedModel:
    """A model ready for inference and where it came from."""

    model: XPLModel
    processor: XPLProcessor
    source: str
    description: str


class ModelNotFound(FileNotFoundError):
    """No usable trained model at the requested place; the message says what was looked for."""


def candidate_sources(model: str | None = None) -> list[str]:
    """Where to look for the model, in order (see the module docstring).

    An explicit `model` is the only candidate: asking for one model and silently getting another would mislead.
    """
    if model:
        return [str(model)]
    candidates = [os.environ.get("XPL_MODEL_ID"), os.environ.get("XPL_MODEL_DIR")]
    config_file = HERE / "xpl_space.json"
    if config_file.is_file():
        try:
            candidates.append(json.loads(config_file.read_text()).get("model_id"))
        except (OSError, ValueError):
            logger.warning("ignoring unreadable %s", config_file)
    candidates += [DEFAULT_MODEL_DIR, str(HERE.parent / DEFAULT_MODEL_DIR)]
    seen, out = set(), []
    for c in candidates:
        if c and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _describe(model: XPLModel, source: str, kind: str) -> str:
    c = model.config
    text = (f"**Model:** `{source}` ({kind}) · branch A = {c.image_backbone_a} + {c.audio_backbone_a}, "
            f"branch B = {c.image_backbone_b} + {c.audio_backbone_b} · input {c.image_size} px, "
            f"{c.map_size}×{c.map_size} map, {c.clip_seconds:g} s of audio around the middle of the clip.")
    try:
        from huggingface_hub import ModelCard

        readme = Path(source) / "README.md"
        card = ModelCard.load(readme) if readme.is_file() else (ModelCard.load(source) if kind == "Hub" else None)
        fused = [r for r in (card.data.eval_results or []) if r.metric_type in ("ciou", "auc")] if card else []
        if fused:
            text += " · reported: " + ", ".join(
                f"{r.metric_name or r.metric_type} {r.metric_value:.1f} on {r.dataset_name} {r.dataset_split or ''}"
                for r in fused)
    except Exception:  # noqa: BLE001 - the card is decoration; never fail loading for it
        pass
    return text


def load_model(source: str, device: str | None = None) -> LoadedModel:
    """Load an XPL model and its processor from a local folder or a Hub id.

    Raises:
        ModelNotFound: the folder does not exist / holds no saved model, or the Hub id cannot be loaded.
    """
    path = Path(source).expanduser()
    kind, location = ("local folder", str(path)) if path.exists() else ("Hub", source)
    best = path / "best"  # train_xpl.py keeps the best validation model there while it trains
    if path.is_dir() and not (path / "config.json").is_file() and (best / "config.json").is_file():
        kind, location = "best validation model so far: training has not finished", str(best)
    elif not path.exists() and not looks_like_hub_id(source):
        raise ModelNotFound(f"`{source}` does not exist.")
    try:  # the package's loader checks the folder (a file, no model, training checkpoints only) with a message
        model, processor = load_model_and_processor(location, device=device)
    except FileNotFoundError as err:
        raise ModelNotFound(str(err)) from None
    except Exception as err:  # noqa: BLE001 - turn any loading failure into a plain message
        raise ModelNotFound(f"could not load `{source}` ({kind}): {type(err).__name__}: {err}") from err
    return LoadedModel(model=model, processor=processor, source=source, description=_describe(model, source, kind))


def find_model(model: str | None = None) -> tuple[LoadedModel | None, str]:
    """Try every candidate source; return (the loaded model or None, a Markdown line for the page)."""
    problems = []
    for source in candidate_sources(model):
        try:
            loaded = load_model(source)
        except ModelNotFound as err:
            problems.append(f"- {err}")
            continue
        return loaded, loaded.description
    notice = (
        "### ⚠️ No trained model found\n"
        "This page shows heat maps only from a trained XPL model, and none was found. Looked for:\n"
        + "\n".join(problems) + "\n\n"
        "Train one with the README's main command (it writes `xpl-output/`), then start the app with "
        "`python space/app.py --model xpl-output`, or give a Hub model id: `--model ORG/NAME` or the environment "
        "variable `XPL_MODEL_ID`. An untrained model's maps would be noise, so nothing is run until then."
    )
    return None, notice


# ------------------------------------------------------------------------------------------------------------ inputs
# Every reader checks sizes from the file's headers before decoding anything, then decodes only what the model uses:
# the audio window around the middle (or around the chosen time of a video) and the one video frame. Messages name
# an upload by its own file name, never by the server's temporary path.
def _file_path(value) -> str | None:
    """A Gradio file payload (FileData dict, as received with preprocess=False), or a path -> the local path."""
    if value is None:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("video"), dict):  # gr.Video's payload: {"video": FileData, "subtitles": ...}
            value = value["video"]
        return value.get("path")
    return str(getattr(value, "path", value))


def _name(path: str | None) -> str:
    """How a message calls an uploaded file: its own name (Gradio keeps it), else "the uploaded file"."""
    name = os.path.basename(path or "")
    return f"'{name}'" if name else "the uploaded file"


_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/])/(?:[^\s'"/]+/)+([^\s'"/]+)""")


def _strip_paths(text: str) -> str:
    """Replace every absolute path in `text` by its file name (the server's folders stay private)."""
    return _ABSOLUTE_PATH.sub(r"\1", text)


def _details(err: Exception) -> str:
    """A library error in a few words without file paths (PyAV's `strerror` holds no path; its str() does)."""
    return _strip_paths(getattr(err, "strerror", None) or str(err) or type(err).__name__)


def _check_size(path: str, limit_mb: float, what: str) -> None:
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"The {what} file is empty.")
    if size > limit_mb * 1024 * 1024:
        raise InputError(f"The {what} file is {size / 1024 / 1024:.1f} MB; the limit is {limit_mb:g} MB.")


def _check_pixels(width: int, height: int, what: str) -> None:
    """Refuse pictures / video frames beyond the side and megapixel caps (from the header, before decoding)."""
    if max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_PIXELS:
        raise InputError(f"The {what} is {width}×{height} px; the limit is {MAX_IMAGE_SIDE} px a side.")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"The {what} is {width}×{height} px; it must be at least {MIN_IMAGE_SIDE} px a side.")


def _too_long(duration: float, limit: float, what: str) -> InputError:
    if limit >= 120:
        return InputError(f"The {what} is {duration / 60:.1f} min long; the limit is {limit / 60:g} min.")
    return InputError(f"The {what} is {duration:.1f} s long; the limit is {limit:g} s.")


def read_image(value) -> PIL.Image.Image:
    """Uploaded image -> RGB PIL image (the package's image rule), with size limits and plain messages."""
    path = _file_path(value)
    if not path:
        raise InputError("Please add an image (a video frame).")
    _check_size(path, MAX_IMAGE_MB, "image")
    try:
        with PIL.Image.open(path) as im:
            _check_pixels(*im.size, "image")  # from the header: nothing decoded yet
            im.seek(0)  # first frame of animated GIF / WebP
            im.load()
            return load_image(PIL.ImageOps.exif_transpose(im) or im)  # alpha on white, 16-bit scaled: xpl_hf.image
    except InputError:
        raise
    except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError) as err:
        raise InputError(f"Could not read the image {_name(path)}: not a supported image file "
                         f"({IMAGE_FORMATS}).") from err
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise InputError(f"Could not read the image {_name(path)}: the file is truncated or corrupt "
                         f"({_details(err)}).") from err


def _media_duration(container, stream) -> float | None:
    """Duration in seconds from the container's or the stream's header, None when neither says."""
    if container.duration:
        return float(container.duration / av.time_base)
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _decode_audio_window(container, stream, start: float, seconds: float,
                         budget_seconds: float) -> tuple[np.ndarray, int]:
    """Decode `seconds` of `stream` from `start` (seeking there first) -> (mono float32 samples, rate).

    At most `budget_seconds` of audio are decoded: when seeking lands too far before `start` (a file without an
    index), the file is refused instead of decoded from its beginning.
    """
    rate = stream.rate or stream.codec_context.sample_rate
    if not rate:
        raise InputError("The audio track does not say its sample rate.")
    if start > 0:
        container.seek(int(start * av.time_base), backward=True, any_frame=False)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks, decoded, first_time, needed = [], 0, None, 0
    for frame in container.decode(stream):
        if first_time is None:
            first_time = float(frame.time) if frame.time is not None else start
            needed = math.ceil((start + seconds - first_time) * rate)
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
            decoded += chunks[-1].size
        if decoded >= needed:
            break
        if decoded > budget_seconds * rate:
            raise InputError(f"Could not reach the sound at {start:.1f} s: the file cannot be searched (no index).")
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    offset = max(0, round((start - (first_time or 0.0)) * rate))
    samples = samples[offset:offset + math.ceil(seconds * rate)]
    if samples.size == 0:
        raise InputError("The audio track holds no samples.")
    return samples, rate


def _read_audio_av(path: str, clip_seconds: float) -> tuple[np.ndarray, int]:
    """Any audio FFmpeg reads -> (mono samples of the centred window, rate); the duration is checked first."""
    with av.open(path) as container:  # reads the headers only
        if not container.streams.audio:
            raise InputError(f"Could not read the audio {_name(path)}: the file has no audio track.")
        stream = container.streams.audio[0]
        duration = _media_duration(container, stream)
        if duration is not None and duration > MAX_AUDIO_SECONDS:
            raise _too_long(duration, MAX_AUDIO_SECONDS, "audio")
        if duration is None:  # unknown: decode up to just past the limit, refuse if the sound goes on
            samples, rate = _decode_audio_window(container, stream, 0.0, MAX_AUDIO_SECONDS + 0.5,
                                                 MAX_AUDIO_SECONDS + 1.0)
            if samples.size > MAX_AUDIO_SECONDS * rate:
                raise InputError(f"The audio is longer than the limit of {MAX_AUDIO_SECONDS:g} s.")
            return samples, rate
        seconds = clip_seconds + WINDOW_MARGIN_SECONDS  # the window decode_audio reads
        start = max(0.0, (duration - seconds) / 2)
        return _decode_audio_window(container, stream, start, seconds, MAX_AUDIO_SECONDS + 1.0)


def read_audio(value, clip_seconds: float = 3.0) -> tuple[np.ndarray, int]:
    """Uploaded / recorded audio -> (samples (channels, n), rate) of the window the model uses.

    WAV, FLAC, OGG and MP3 are read with soundfile; anything else (e.g. M4A, AAC, WebM) with PyAV when installed.
    Either way the duration comes from the headers and is checked before anything is decoded, and only the
    window around the middle is decoded.
    """
    path = _file_path(value)
    if not path:
        raise InputError("Please add a sound: upload an audio file or record one with the microphone.")
    _check_size(path, MAX_AUDIO_MB, "audio")
    import soundfile as sf

    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - not a libsndfile format: try PyAV, else say what is supported
        info = None
    if info is not None:
        duration = info.frames / info.samplerate if info.samplerate else 0.0
        if duration > MAX_AUDIO_SECONDS:
            raise _too_long(duration, MAX_AUDIO_SECONDS, "audio")
        try:
            return decode_audio(path, clip_seconds=clip_seconds + WINDOW_MARGIN_SECONDS)
        except AudioError as err:
            raise InputError(f"Could not read the audio {_name(path)}: {_details(err)}") from err
    if not HAVE_AV:
        raise InputError(f"Could not read the audio {_name(path)}: not a supported audio file ({AUDIO_FORMATS}).")
    try:
        samples, rate = _read_audio_av(path, clip_seconds)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - av raises many error types
        raise InputError(f"Could not read the audio {_name(path)}: not an audio file, or a corrupt one "
                         f"({AUDIO_FORMATS}, or any format FFmpeg reads; {_details(err)}).") from err
    return samples[None], rate


def video_duration(value) -> float:
    """Duration in seconds of an uploaded video, from its headers (0 when it cannot be read)."""
    path = _file_path(value)
    if not path or not HAVE_AV:
        return 0.0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return 0.0
            return _media_duration(container, container.streams.video[0]) or 0.0
    except Exception:  # noqa: BLE001
        return 0.0


def _decode_frame_at(container, stream, t: float) -> PIL.Image.Image:
    """The first frame at or after `t` s (the last one if `t` is past the end), decoding from the keyframe before it
    and at most MAX_VIDEO_DECODE_FRAMES frames."""
    container.seek(int(t * av.time_base), backward=True, any_frame=False)
    chosen = None
    for count, frame in enumerate(container.decode(stream), start=1):
        _check_pixels(frame.width, frame.height, "video")  # the decoded size, in case the header said otherwise
        chosen = frame
        if frame.time is None or frame.time >= t - 1e-3:
            break
        if count >= MAX_VIDEO_DECODE_FRAMES:
            raise InputError(f"Could not reach the frame at {t:.2f} s: it lies more than {MAX_VIDEO_DECODE_FRAMES} "
                             "frames after the previous keyframe. Pick another time, or re-encode the video with "
                             "more keyframes.")
    if chosen is None:
        raise InputError("Could not decode a frame of the video.")
    return chosen.to_image().convert("RGB")


def read_video(value, time_s: float, clip_seconds: float = 3.0) -> tuple[PIL.Image.Image, np.ndarray, int, float]:
    """Video -> (the frame at `time_s`, mono audio of `clip_seconds` centred on it, rate, the time actually used)."""
    if not HAVE_AV:
        raise InputError("Video needs the `av` package (PyAV): `pip install av`.")
    path = _file_path(value)
    if not path:
        raise InputError("Please add a video.")
    _check_size(path, MAX_VIDEO_MB, "video")
    try:
        with av.open(path) as container:  # reads the headers only
            if not container.streams.video:
                raise InputError(f"Could not read the video {_name(path)}: the file has no video track.")
            stream = container.streams.video[0]
            duration = _media_duration(container, stream)
            if duration is not None and duration > MAX_VIDEO_SECONDS:
                raise _too_long(duration, MAX_VIDEO_SECONDS, "video")
            if stream.codec_context.width and stream.codec_context.height:
                _check_pixels(stream.codec_context.width, stream.codec_context.height, "video")
            t = max(float(time_s or 0.0), 0.0)
            if duration is not None:
                t = min(t, max(duration - 1e-3, 0.0))
            picture = _decode_frame_at(container, stream, t)
            if not container.streams.audio:
                raise InputError(f"The video {_name(path)} has no audio track; the model needs the sound.")
            start = max(0.0, t - clip_seconds / 2)
            samples, rate = _decode_audio_window(container, container.streams.audio[0], start, clip_seconds,
                                                 clip_seconds + AUDIO_SEEK_SLACK_SECONDS)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - av raises many error types
        raise InputError(f"Could not read the video {_name(path)}: not a supported or a corrupt video file "
                         f"({_details(err)}).") from err
    return picture, samples[None], rate, t


# --------------------------------------------------------------------------------------------------------- inference
@dataclass
class Localization:
    """One result: overlays of A, B and fused maps, the maps at the overlays' size, consensus and timings."""

    overlay_a: PIL.Image.Image
    overlay_b: PIL.Image.Image
    overlay_fused: PIL.Image.Image
    map_a: np.ndarray
    map_b: np.ndarray
    map_fused: np.ndarray
    rho: float
    inference_ms: float
    preprocess_ms: float


def _display_image(image: PIL.Image.Image) -> PIL.Image.Image:
    scale = DISPLAY_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             PIL.Image.BILINEAR)
    return image


@torch.inference_mode()
def localize(loaded: LoadedModel, image: PIL.Image.Image, waveform: np.ndarray, sampling_rate: int) -> Localization:
    """Run both branches on one (image, audio) pair; make the overlays, consensus and timings.

    The maps come from `XPLProcessor.post_process_localization` at the displayed frame's size (upsampled and
    normalised as the evaluation protocol views them) and are drawn with `xpl_hf.visualization.overlay_heatmap`.
    """
    t0 = time.perf_counter()
    try:
        batch = loaded.processor(images=image, audio=waveform, sampling_rate=sampling_rate, return_tensors="pt")
    except ValueError as err:  # ImageError / AudioError name the problem
        raise InputError(f"Could not prepare the inputs: {err}") from err
    device = next(loaded.model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    t1 = time.perf_counter()
    out = loaded.model(**batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    frame = _display_image(image)
    result = loaded.processor.post_process_localization(out, target_sizes=[(frame.height, frame.width)])[0]
    maps = [result[key].cpu().numpy() for key in ("map_a", "map_b", "map")]
    overlays = [overlay_heatmap(frame, m, alpha=OVERLAY_ALPHA) for m in maps]
    return Localization(*overlays, *maps, rho=result["consensus"], inference_ms=(t2 - t1) * 1000,
                        preprocess_ms=(t1 - t0) * 1000)


def _consensus_words(rho: float) -> str:
    if rho >= 0.7:
        return "the branches agree"
    if rho >= 0.3:
        return "the branches partly agree"
    if rho >= 0.0:
        return "the branches barely agree"
    return "the branches disagree"


def summary_markdown(result: Localization, extra: str = "") -> str:
    return (f"**Consensus ρ = {result.rho:+.3f}** ({_consensus_words(result.rho)}) · model forward "
            f"**{result.inference_ms:.0f} ms** (+ {result.preprocess_ms:.0f} ms preprocessing){extra}. "
            "Each map is min-max normalised for display: red = where that branch hears the sound.")


# ------------------------------------------------------------------------------------------------------------- page
def make_examples(directory: str | Path | None = None, count: int = 3) -> list[tuple[str, str, str]]:
    """Write `count` (frame.jpg, sound.wav) pairs from xpl-hf's synthetic benchmark (test split, seed 0).

    They are generated by the package (no download, no licence question) and match what a model trained on the
    synthetic benchmark has learnt; real videos need a model trained on real data. Returns (jpg, wav, label).
    """
    from xpl_hf.data.synthetic import SyntheticConfig, generate_sample

    directory = Path(directory or Path(tempfile.gettempdir()) / "xpl_space_examples")
    directory.mkdir(parents=True, exist_ok=True)
    config = SyntheticConfig(image_size=224, seed=0)
    examples = []
    for index in range(count):
        jpg, wav = directory / f"synthetic_{index}.jpg", directory / f"synthetic_{index}.wav"
        label_file = directory / f"synthetic_{index}.txt"
        if not (jpg.is_file() and wav.is_file() and label_file.is_file()):
            row = generate_sample(config, "test", index)
            jpg.write_bytes(row["image"]["bytes"])
            wav.write_bytes(row["audio"]["bytes"])
            label_file.write_text(row["label"])
        examples.append((str(jpg), str(wav), f"synthetic scene {index}: the {label_file.read_text()} sounds"))
    return examples


def _error(err: Exception) -> gr.Error:
    logger.info("rejected input: %s", err)
    return gr.Error(_strip_paths(str(err)), duration=None, title="Cannot localize", print_exception=False)


INTRO = """# XPL: where does the sound come from?
Give a video frame and the sound around it (or a video and a time): two audio-visual models
(**A**: image encoder + VGGish, **B**: image encoder + SoundNet-8), trained together with
**XPL** cross pseudo-labeling, each draw a heat map of the sounding object; the **fused** map averages them.
Their agreement (**ρ**, Pearson correlation of the two maps) hints at how reliable the answer is.
"""

LIMITS = (f"Limits: images ≤ {MAX_IMAGE_MB} MB and ≤ {MAX_IMAGE_SIDE} px a side ({IMAGE_FORMATS}); audio ≤ "
          f"{MAX_AUDIO_MB} MB and ≤ {MAX_AUDIO_SECONDS:g} s ({AUDIO_FORMATS}"
          f"{', other formats via PyAV' if HAVE_AV else ''}); "
          f"video ≤ {MAX_VIDEO_MB} MB, ≤ {MAX_VIDEO_SECONDS / 60:g} min and ≤ {MAX_IMAGE_SIDE} px a side. The model "
          "listens to the clip length shown above, around the middle of the clip (or around the chosen time of a "
          "video).")


def build_demo(model: str | LoadedModel | None = None, examples_dir: str | Path | None = None) -> gr.Blocks:
    """The Gradio page. `model`: a folder / Hub id (None: the default lookup) or an already loaded model."""
    if isinstance(model, LoadedModel):
        loaded, model_text = model, model.description
    else:
        loaded, model_text = find_model(model)
    ready = loaded is not None

    def run_pair(image_value, audio_value):
        if not ready:
            raise gr.Error("No trained model is loaded; see the notice at the top of the page.", duration=None)
        try:
            image = read_image(image_value)
            waveform, rate = read_audio(audio_value, loaded.processor.clip_seconds)
            result = localize(loaded, image, waveform, rate)
        except InputError as err:
            raise _error(err) from None
        return (result.overlay_a, result.overlay_b, result.overlay_fused, round(result.rho, 4),
                round(result.inference_ms, 1), summary_markdown(result))

    def run_video(video_value, time_s):
        if not ready:
            raise gr.Error("No trained model is loaded; see the notice at the top of the page.", duration=None)
        try:
            image, waveform, rate, used = read_video(video_value, float(time_s or 0.0), loaded.processor.clip_seconds)
            result = localize(loaded, image, waveform, rate)
        except InputError as err:
            raise _error(err) from None
        return (result.overlay_a, result.overlay_b, result.overlay_fused, round(result.rho, 4),
                round(result.inference_ms, 1), summary_markdown(result, f" · frame at {used:.2f} s"))

    def on_video(video_value):
        duration = video_duration(video_value)
        return gr.Slider(maximum=max(duration, 0.1), value=round(duration / 2, 2), interactive=duration > 0)

    with gr.Blocks(title="XPL audio-visual source localization", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(model_text, elem_id="model-status")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Image + sound", id="pair"):
                        image_in = gr.Image(label="Frame", type="filepath", sources=["upload", "clipboard"],
                                            elem_id="image-input", height=280)
                        audio_in = gr.Audio(label="Sound (file or microphone)", type="filepath",
                                            sources=["upload", "microphone"], elem_id="audio-input")
                        pair_btn = gr.Button("Localize the sound", variant="primary", interactive=ready,
                                             elem_id="run-pair")
                    with gr.Tab("Video", id="video"):
                        if HAVE_AV:
                            video_in = gr.Video(label="Video (MP4, WebM, MOV, ...)", sources=["upload"],
                                                elem_id="video-input", height=280)
                            time_in = gr.Slider(0, 1, value=0, step=0.01, label="Time of the frame (s)",
                                                elem_id="video-time")
                            video_btn = gr.Button("Localize at this time", variant="primary", interactive=ready,
                                                  elem_id="run-video")
                        else:
                            gr.Markdown("Video input needs the `av` package (PyAV, whose wheels bundle FFmpeg); "
                                        "it is not installed here. Extract a frame and the audio instead.")
                gr.Markdown(LIMITS)
            with gr.Column(scale=2):
                status = gr.Markdown("Add a frame and a sound, then press **Localize the sound**." if ready else
                                     "Nothing to run without a trained model.", elem_id="result-status")
                with gr.Row():
                    out_a = gr.Image(label="Branch A (VGGish)", type="pil", elem_id="map-a", interactive=False)
                    out_b = gr.Image(label="Branch B (SoundNet-8)", type="pil", elem_id="map-b", interactive=False)
                    out_f = gr.Image(label="Fused (A + B)", type="pil", elem_id="map-fused", interactive=False)
                with gr.Row():
                    rho_out = gr.Number(label="Consensus ρ (Pearson, A vs B)", precision=3, elem_id="rho",
                                        interactive=False)
                    ms_out = gr.Number(label="Inference time (ms, model forward)", precision=1, elem_id="ms",
                                       interactive=False)
        outputs = [out_a, out_b, out_f, rho_out, ms_out, status]
        # preprocess=False: the functions get the uploaded files' paths and decode them themselves, so unreadable
        # files produce the page's own messages instead of a decoding error inside Gradio.
        pair_btn.click(run_pair, [image_in, audio_in], outputs, api_name="localize", preprocess=False)
        if HAVE_AV:
            video_btn.click(run_video, [video_in, time_in], outputs, api_name="localize_video", preprocess=False)
            video_in.change(on_video, video_in, time_in, preprocess=False, api_visibility="private")
        try:
            examples = make_examples(examples_dir)
        except Exception as err:  # noqa: BLE001 - examples are optional
            logger.warning("could not generate the examples: %s", err)
            examples = []
        if examples:
            gr.Examples([[jpg, wav] for jpg, wav, _ in examples], inputs=[image_in, audio_in],
                        example_labels=[label for _, _, label in examples], label="Synthetic examples (generated by "
                        "xpl-hf; they suit a model trained on its synthetic benchmark)")
    demo.xpl_ready = ready  # for tests and main()
    demo.xpl_examples_dir = str(Path(examples[0][0]).parent) if examples else None
    return demo


def launch_kwargs(demo: gr.Blocks) -> dict:
    """Arguments every launch needs (upload cap, example files)."""
    allowed = [demo.xpl_examples_dir] if getattr(demo, "xpl_examples_dir", None) else []
    return {"max_file_size": f"{MAX_VIDEO_MB}mb", "allowed_paths": allowed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="XPL audio-visual source localization demo (Gradio).")
    parser.add_argument("--model", default=None,
                        help="folder written by training (default: xpl-output) or a Hub model id")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--host", default=None, help="address to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_demo(args.model)
    demo.queue(default_concurrency_limit=1, max_size=32).launch(
        server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs(demo))


if __name__ == "__main__":
    main()
