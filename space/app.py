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
`localize`, `heatmap_overlay`) so it can be tested without a browser; `build_demo` assembles the page.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
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
import torch.nn.functional as F
from matplotlib import colormaps

HERE = Path(__file__).resolve().parent
try:  # In the Space, xpl_hf/ is bundled next to this file; in a checkout, it is one level up.
    import xpl_hf  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the app is started
    sys.path.insert(0, str(HERE.parent))

from xpl_hf import XPLModel, XPLProcessor  # noqa: E402
from xpl_hf.audio import AudioError, decode_audio  # noqa: E402
from xpl_hf.loading import WEIGHT_FILES, load_model_and_processor  # noqa: E402
from xpl_hf.maps import pearson_consensus  # noqa: E402
from xpl_hf.paths import looks_like_hub_id  # noqa: E402

logger = logging.getLogger("xpl_space")

# ----------------------------------------------------------------------------------------------------------- limits
MAX_IMAGE_MB = 20
MAX_AUDIO_MB = 20
MAX_VIDEO_MB = 100
MAX_AUDIO_SECONDS = 60.0
MAX_VIDEO_SECONDS = 30 * 60.0
MAX_IMAGE_SIDE = 4096
MIN_IMAGE_SIDE = 8
DISPLAY_SIDE = 512  # overlays are drawn on the image scaled to at most this many pixels a side
OVERLAY_ALPHA = 0.5
DEFAULT_MODEL_DIR = "xpl-output"  # train_xpl.py's default --output_dir
IMAGE_FORMATS = "JPEG, PNG, WebP, BMP, GIF, TIFF"
AUDIO_FORMATS = "WAV, FLAC, OGG, MP3"

try:  # PyAV's wheels bundle the FFmpeg libraries: no system FFmpeg needed.
    import av  # noqa: F401

    HAVE_AV = True
except ImportError:  # pragma: no cover - depends on the environment
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


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


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
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"`{source}` is a file; pass the folder written by training (save_pretrained).")
        kind, location = "local folder", str(path)
        if not (path / "config.json").is_file() or not _has_weights(path):
            best = path / "best"  # train_xpl.py keeps the best validation model there while it trains
            if (best / "config.json").is_file() and _has_weights(best):
                kind, location = "best validation model so far: training has not finished", str(best)
            else:
                in_progress = (path / "checkpoints").is_dir() or any(path.glob("checkpoint-*"))
                hint = (" It holds only training checkpoints: training has not finished writing the final model "
                        "yet.") if in_progress else ""
                raise ModelNotFound(f"`{source}` exists but holds no saved model (config.json + model.safetensors)."
                                    f"{hint}")
    elif looks_like_hub_id(source):
        kind, location = "Hub", source
    else:
        raise ModelNotFound(f"`{source}` does not exist.")
    try:
        model, processor = load_model_and_processor(location, device=device)
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
def _file_path(value) -> str | None:
    """A Gradio file payload (FileData dict, as received with preprocess=False), or a path -> the local path."""
    if value is None:
        return None
    if isinstance(value, dict):
        if isinstance(value.get("video"), dict):  # gr.Video's payload: {"video": FileData, "subtitles": ...}
            value = value["video"]
        return value.get("path")
    return str(getattr(value, "path", value))


def _check_size(path: str, limit_mb: float, what: str) -> None:
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"The {what} file is empty.")
    if size > limit_mb * 1024 * 1024:
        raise InputError(f"The {what} file is {size / 1024 / 1024:.1f} MB; the limit is {limit_mb:g} MB.")


def read_image(value) -> PIL.Image.Image:
    """Uploaded image -> RGB PIL image, with size limits and a plain message for anything unreadable."""
    path = _file_path(value)
    if not path:
        raise InputError("Please add an image (a video frame).")
    _check_size(path, MAX_IMAGE_MB, "image")
    try:
        with PIL.Image.open(path) as im:
            width, height = im.size
            if max(width, height) > MAX_IMAGE_SIDE:
                raise InputError(f"The image is {width}×{height} px; the limit is {MAX_IMAGE_SIDE} px a side.")
            if min(width, height) < MIN_IMAGE_SIDE:
                raise InputError(f"The image is {width}×{height} px; it must be at least {MIN_IMAGE_SIDE} px a side.")
            im.seek(0)  # first frame of animated GIF / WebP
            im.load()
            image = PIL.ImageOps.exif_transpose(im) or im
            return image.convert("RGB")
    except InputError:
        raise
    except (PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError) as err:
        raise InputError(f"Could not read the image: not a supported image file ({IMAGE_FORMATS}).") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"Could not read the image: the file is truncated or corrupt ({err}).") from err


def _decode_audio_av(path: str, start: float | None = None,
                     seconds: float | None = None) -> tuple[np.ndarray, int, float]:
    """Decode an audio stream with PyAV -> (mono float32 samples, rate, stream duration in s)."""
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            raise InputError("The file has no audio track; the model needs the sound.")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        duration = float(container.duration / av.time_base) if container.duration else float("nan")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        if start:
            container.seek(max(0, int(start * av.time_base)), any_frame=False)
        chunks, first_time = [], None
        for frame in container.decode(stream):
            if first_time is None:
                first_time = float(frame.time or 0.0)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
            if seconds is not None and sum(map(len, chunks)) >= (seconds + (start or 0) - first_time + 0.1) * rate:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise InputError("The audio track holds no samples.")
    samples = np.concatenate(chunks).astype(np.float32)
    if start is not None and seconds is not None:  # trim to [start, start + seconds] using the first frame's time
        offset = max(0, int(round((start - first_time) * rate)))
        samples = samples[offset:offset + int(math.ceil(seconds * rate))]
    if math.isnan(duration):
        duration = len(samples) / rate
    return samples, rate, duration


def read_audio(value, clip_seconds: float = 3.0) -> tuple[np.ndarray, int]:
    """Uploaded / recorded audio -> (samples (channels, n), rate) of the window the model uses.

    WAV, FLAC, OGG and MP3 are decoded with soundfile; anything else (e.g. M4A, WebM) with PyAV when installed.
    """
    path = _file_path(value)
    if not path:
        raise InputError("Please add a sound: upload an audio file or record one with the microphone.")
    _check_size(path, MAX_AUDIO_MB, "audio")
    import soundfile as sf

    try:
        info = sf.info(path)
        duration = info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - not a libsndfile format: try PyAV, else say what is supported
        info = None
    if info is None:
        if not HAVE_AV:
            raise InputError(f"Could not read the audio: not a supported audio file ({AUDIO_FORMATS}).")
        try:
            samples, rate, duration = _decode_audio_av(path)
        except Exception as err:  # noqa: BLE001 - av raises many error types
            raise InputError(f"Could not read the audio: not an audio file, or a corrupt one ({AUDIO_FORMATS}, or "
                             f"any format FFmpeg reads). Details: {err}") from err
        if duration > MAX_AUDIO_SECONDS:
            raise InputError(f"The audio is {duration:.1f} s long; the limit is {MAX_AUDIO_SECONDS:g} s.")
        return samples[None], rate
    if duration > MAX_AUDIO_SECONDS:
        raise InputError(f"The audio is {duration:.1f} s long; the limit is {MAX_AUDIO_SECONDS:g} s.")
    try:
        return decode_audio(path, clip_seconds=clip_seconds + 0.1)
    except AudioError as err:
        raise InputError(f"Could not read the audio: {err}") from err


def video_duration(value) -> float:
    """Duration in seconds of an uploaded video (0 when it cannot be read)."""
    path = _file_path(value)
    if not path or not HAVE_AV:
        return 0.0
    import av

    try:
        with av.open(path) as container:
            if container.duration:
                return float(container.duration / av.time_base)
            stream = container.streams.video[0]
            return float(stream.duration * stream.time_base) if stream.duration else 0.0
    except Exception:  # noqa: BLE001
        return 0.0


def read_video(value, time_s: float, clip_seconds: float = 3.0) -> tuple[PIL.Image.Image, np.ndarray, int, float]:
    """Video -> (the frame at `time_s`, mono audio of `clip_seconds` centred on it, rate, the time actually used)."""
    if not HAVE_AV:
        raise InputError("Video needs the `av` package (PyAV): `pip install av`.")
    import av

    path = _file_path(value)
    if not path:
        raise InputError("Please add a video.")
    _check_size(path, MAX_VIDEO_MB, "video")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError("Could not read the video: the file has no video track.")
            stream = container.streams.video[0]
            duration = float(container.duration / av.time_base) if container.duration else float("inf")
            if duration > MAX_VIDEO_SECONDS:
                raise InputError(f"The video is {duration / 60:.1f} min long; the limit is "
                                 f"{MAX_VIDEO_SECONDS / 60:g} min.")
            t = max(float(time_s or 0.0), 0.0)
            if math.isfinite(duration):
                t = min(t, max(duration - 1e-3, 0.0))
            if stream.width and stream.height and max(stream.width, stream.height) > MAX_IMAGE_SIDE:
                raise InputError(f"The video is {stream.width}×{stream.height} px; the limit is {MAX_IMAGE_SIDE} px.")
            container.seek(int(t * av.time_base), any_frame=False)
            image = None
            for frame in container.decode(stream):
                image = frame
                if frame.time is None or frame.time >= t - 1e-3:
                    break
            if image is None:
                raise InputError("Could not decode a frame of the video.")
            picture = image.to_image().convert("RGB")
        start = max(0.0, t - clip_seconds / 2)
        samples, rate, _ = _decode_audio_av(path, start=start, seconds=clip_seconds)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - av raises many error types
        raise InputError(f"Could not read the video: not a supported or a corrupt video file ({err}).") from err
    return picture, samples[None], rate, t


# --------------------------------------------------------------------------------------------------------- inference
@dataclass
class Localization:
    """One result: overlays of A, B and fused maps, raw maps, consensus and timings."""

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


def heatmap_overlay(image: PIL.Image.Image, heat: np.ndarray | torch.Tensor,
                    alpha: float = OVERLAY_ALPHA) -> PIL.Image.Image:
    """Blend a (h, w) map over `image` with the jet colormap.

    The map is upsampled to the image size (bicubic, align_corners=False, as in evaluation) and min-max normalised
    (a flat map stays flat), so colours show where each branch points, relative to the rest of the frame.
    """
    base = _display_image(image.convert("RGB"))
    m = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=(base.height, base.width), mode="bicubic", align_corners=False)[0, 0]
    low, high = float(m.min()), float(m.max())
    m = (m - low) / (high - low) if high - low > 1e-12 else torch.zeros_like(m)
    colours = colormaps["jet"](m.clamp(0, 1).numpy())[..., :3]
    blended = (1 - alpha) * np.asarray(base, dtype=np.float32) / 255.0 + alpha * colours
    return PIL.Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8))


@torch.inference_mode()
def localize(loaded: LoadedModel, image: PIL.Image.Image, waveform: np.ndarray, sampling_rate: int) -> Localization:
    """Run both branches on one (image, audio) pair; make the overlays, consensus and timings."""
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
    rho = float(pearson_consensus(out.maps_a, out.maps_b)[0])
    maps = [m[0].float().cpu().numpy() for m in (out.maps_a, out.maps_b, out.maps)]
    overlays = [heatmap_overlay(image, m) for m in maps]
    return Localization(*overlays, *maps, rho=rho, inference_ms=(t2 - t1) * 1000, preprocess_ms=(t1 - t0) * 1000)


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
    return gr.Error(str(err), duration=None, title="Cannot localize", print_exception=False)


INTRO = """# XPL: where does the sound come from?
Give a video frame and the sound around it (or a video and a time): two audio-visual models
(**A**: image encoder + VGGish, **B**: image encoder + SoundNet-8), trained together with
**XPL** cross pseudo-labeling, each draw a heat map of the sounding object; the **fused** map averages them.
Their agreement (**ρ**, Pearson correlation of the two maps) hints at how reliable the answer is.
"""

LIMITS = (f"Limits: images ≤ {MAX_IMAGE_MB} MB and ≤ {MAX_IMAGE_SIDE} px a side ({IMAGE_FORMATS}); audio ≤ "
          f"{MAX_AUDIO_MB} MB and ≤ {MAX_AUDIO_SECONDS:g} s ({AUDIO_FORMATS}"
          f"{', other formats via PyAV' if HAVE_AV else ''}); "
          f"video ≤ {MAX_VIDEO_MB} MB and ≤ {MAX_VIDEO_SECONDS / 60:g} min. The model listens to the clip length "
          "shown above, around the middle of the clip (or around the chosen time of a video).")


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

    with gr.Blocks(title="XPL audio-visual source localization") as demo:
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
