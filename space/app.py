"""XPL audio-visual source localization: a Gradio Space.

Upload a frame and its sound (file or microphone), or a video and a time, and see where the sound comes from:
the heat maps of branch A (image encoder + VGGish), branch B (image encoder + SoundNet-8) and the fused map,
the model's confidence that something in the frame makes this sound (with a plain-language line when it is low),
the two branches' consensus (Pearson ρ) and the inference time.

Start it locally (after training, which writes `xpl-output/`):

    python space/app.py --model xpl-output          # or --model ORG/NAME (a Hub model id)

Model lookup, first match wins: `--model`, `$XPL_MODEL_ID` (Hub id), `$XPL_MODEL_DIR` (folder), `xpl_space.json`
next to this file (written by `python -m xpl_hf.hub push-space --model_id ...`), then `./xpl-output` and the
`xpl-output/` folder of the repository checkout. Without a trained model the page says so and runs nothing.

Everything the page does is in plain functions (`load_model`, `localize`, and `read_image`, `read_audio`,
`read_video` from `uploads.py` next to this file) so it can be tested without a browser; `build_demo` assembles the
page. The maps and overlays come from the package (`XPLProcessor.post_process_localization`,
`xpl_hf.visualization.overlay_heatmap`), as in any script.

Hostile uploads (`uploads.py`): sizes, durations and pixel counts are read from the headers and checked before
decoding; videos and non-libsndfile audio are opened only through `xpl_hf.media` (allow-listed container formats; no
playlists, concat scripts or protocols); only the audio window and the video frame the model uses are decoded;
messages never show the server's paths; uploaded files are deleted from Gradio's cache (`DELETE_CACHE`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch

HERE = Path(__file__).resolve().parent
try:  # In the Space, xpl_hf/ is bundled next to this file; in a checkout, it is one level up.
    import xpl_hf  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the app is started
    sys.path.insert(0, str(HERE.parent))

if str(HERE) not in sys.path:  # uploads.py lives next to this file
    sys.path.insert(0, str(HERE))

from uploads import (  # noqa: E402
    AUDIO_FORMATS,
    HAVE_AV,
    IMAGE_FORMATS,
    MAX_AUDIO_MB,
    MAX_AUDIO_SECONDS,
    MAX_IMAGE_MB,
    MAX_IMAGE_SIDE,
    MAX_VIDEO_MB,
    MAX_VIDEO_SECONDS,
    VIDEO_FORMATS,
    InputError,
    read_audio,
    read_image,
    read_video,
    strip_paths,
    video_duration,
)

from xpl_hf import XPLModel, XPLProcessor  # noqa: E402
from xpl_hf.loading import load_model_and_processor  # noqa: E402
from xpl_hf.metrics.extended import DEFAULT_CONFIDENCE_THRESHOLD  # noqa: E402
from xpl_hf.paths import looks_like_hub_id  # noqa: E402
from xpl_hf.visualization import overlay_heatmap  # noqa: E402

logger = logging.getLogger("xpl_space")

# --------------------------------------------------------------------------------------------------------- settings
DELETE_CACHE = (300, 900)  # gr.Blocks(delete_cache=): every 5 min, delete uploads and outputs older than 15 min
DISPLAY_SIDE = 512  # overlays are drawn on the image scaled to at most this many pixels a side
OVERLAY_ALPHA = 0.5
DEFAULT_MODEL_DIR = "xpl-output"  # train_xpl.py's default --output_dir


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


# --------------------------------------------------------------------------------------------------------- inference
@dataclass
class Localization:
    """One result: overlays of A, B and fused maps, the maps at the overlays' size, consensus, confidences (fused, A,
    B: `XPLProcessor.post_process_localization`'s) and timings."""

    overlay_a: PIL.Image.Image
    overlay_b: PIL.Image.Image
    overlay_fused: PIL.Image.Image
    map_a: np.ndarray
    map_b: np.ndarray
    map_fused: np.ndarray
    rho: float
    inference_ms: float
    preprocess_ms: float
    confidence: float
    confidence_a: float
    confidence_b: float


def _display_image(image: PIL.Image.Image) -> PIL.Image.Image:
    scale = DISPLAY_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             PIL.Image.BILINEAR)
    return image


@torch.inference_mode()
def localize(loaded: LoadedModel, image: PIL.Image.Image, waveform: np.ndarray, sampling_rate: int,
             model_image: PIL.Image.Image | None = None) -> Localization:
    """Run both branches on one (image, audio) pair; make the overlays, consensus and timings.

    `model_image`: the frame as the model gets it, when it differs from the displayed `image` (a large JPEG decoded
    at the reduced scale training uses: `read_image(..., target_size)`). The maps come from
    `XPLProcessor.post_process_localization` at the displayed frame's size (upsampled and normalised as the evaluation
    protocol views them) and are drawn with `xpl_hf.visualization.overlay_heatmap`.
    """
    t0 = time.perf_counter()
    try:
        batch = loaded.processor(images=model_image or image, audio=waveform, sampling_rate=sampling_rate,
                                 return_tensors="pt")
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
                        preprocess_ms=(t1 - t0) * 1000, confidence=result["confidence"],
                        confidence_a=result["confidence_a"], confidence_b=result["confidence_b"])


def _consensus_words(rho: float) -> str:
    if rho >= 0.7:
        return "the branches agree"
    if rho >= 0.3:
        return "the branches partly agree"
    if rho >= 0.0:
        return "the branches barely agree"
    return "the branches disagree"


NO_SOURCE = "No source of this sound found in the frame"
"""The page's words for a low confidence (below `DEFAULT_CONFIDENCE_THRESHOLD`)."""


def confidence_markdown(result: Localization) -> str:
    """The confidence line: the fused confidence, each branch's, and in plain words whether a source was found."""
    text = (f"**Confidence {result.confidence:.2f}** (A {result.confidence_a:.2f}, B {result.confidence_b:.2f}; the "
            "mean of the top quarter of each branch's probability map, 0-1)")
    if result.confidence < DEFAULT_CONFIDENCE_THRESHOLD:
        return (f"### {NO_SOURCE}.\n{text}: below {DEFAULT_CONFIDENCE_THRESHOLD:g}, so the maps only show where the "
                "model would look; nothing visible seems to make this sound (off-screen, silence, or a sound the "
                "model does not know).")
    return f"{text}: something in the frame seems to make this sound."


def summary_markdown(result: Localization, extra: str = "") -> str:
    return (f"{confidence_markdown(result)}\n\n"
            f"**Consensus ρ = {result.rho:+.3f}** ({_consensus_words(result.rho)}) · model forward "
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
    return gr.Error(strip_paths(str(err)), duration=None, title="Cannot localize", print_exception=False)


INTRO = """# XPL: where does the sound come from?
Give a video frame and the sound around it (or a video and a time): two audio-visual models
(**A**: image encoder + VGGish, **B**: image encoder + SoundNet-8), trained together with
**XPL** cross pseudo-labeling, each draw a heat map of the sounding object; the **fused** map averages them.
Their agreement (**ρ**, Pearson correlation of the two maps) hints at how reliable the answer is.
"""

LIMITS = (f"Limits: images ≤ {MAX_IMAGE_MB} MB and ≤ {MAX_IMAGE_SIDE} px a side ({IMAGE_FORMATS}); audio ≤ "
          f"{MAX_AUDIO_MB} MB and ≤ {MAX_AUDIO_SECONDS:g} s ({AUDIO_FORMATS}"
          f"{', M4A, AAC, WebM' if HAVE_AV else ''}); "
          f"video ≤ {MAX_VIDEO_MB} MB, ≤ {MAX_VIDEO_SECONDS / 60:g} min and ≤ {MAX_IMAGE_SIDE} px a side "
          f"({VIDEO_FORMATS}; playlists are refused). The model "
          "listens to the clip length shown above, around the middle of the clip (or around the chosen time of a "
          "video).")


def build_demo(model: str | LoadedModel | None = None, examples_dir: str | Path | None = None) -> gr.Blocks:
    """The Gradio page. `model`: a folder / Hub id (None: the default lookup) or an already loaded model."""
    if isinstance(model, LoadedModel):
        loaded, model_text = model, model.description
    else:
        loaded, model_text = find_model(model)
    ready = loaded is not None

    def label(branch: str) -> str:
        """A branch's name from the loaded model's config (its audio backbone); the bare letter without a model."""
        return loaded.model.config.branch_label(branch) if ready else branch.upper()

    def run_pair(image_value, audio_value):
        if not ready:
            raise gr.Error("No trained model is loaded; see the notice at the top of the page.", duration=None)
        try:
            image = read_image(image_value)  # shown at up to DISPLAY_SIDE px
            model_image = read_image(image_value, loaded.processor.image_size)  # the pixels training would see
            waveform, rate = read_audio(audio_value, loaded.processor.clip_seconds)
            result = localize(loaded, image, waveform, rate, model_image)
        except InputError as err:
            raise _error(err) from None
        return (result.overlay_a, result.overlay_b, result.overlay_fused, round(result.confidence, 4),
                round(result.rho, 4), round(result.inference_ms, 1), summary_markdown(result))

    def run_video(video_value, time_s):
        if not ready:
            raise gr.Error("No trained model is loaded; see the notice at the top of the page.", duration=None)
        try:
            image, waveform, rate, used = read_video(video_value, float(time_s or 0.0), loaded.processor.clip_seconds)
            result = localize(loaded, image, waveform, rate)
        except InputError as err:
            raise _error(err) from None
        return (result.overlay_a, result.overlay_b, result.overlay_fused, round(result.confidence, 4),
                round(result.rho, 4), round(result.inference_ms, 1),
                summary_markdown(result, f" · frame at {used:.2f} s"))

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
                            video_in = gr.Video(label=f"Video ({VIDEO_FORMATS})", sources=["upload"],
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
                                     "Nothing to run without a trained model.", label="Summary", show_label=False,
                                     elem_id="result-status")
                with gr.Row():
                    out_a = gr.Image(label=f"Branch {label('a')}", type="pil", elem_id="map-a", interactive=False)
                    out_b = gr.Image(label=f"Branch {label('b')}", type="pil", elem_id="map-b", interactive=False)
                    out_f = gr.Image(label="Fused (A + B)", type="pil", elem_id="map-fused", interactive=False)
                with gr.Row():
                    confidence_out = gr.Number(label="Confidence (0-1; below 0.5: no source of this sound found)",
                                               precision=2, elem_id="confidence", interactive=False)
                    rho_out = gr.Number(label="Consensus ρ (Pearson, A vs B)", precision=3, elem_id="rho",
                                        interactive=False)
                    ms_out = gr.Number(label="Inference time (ms, model forward)", precision=1, elem_id="ms",
                                       interactive=False)
        outputs = [out_a, out_b, out_f, confidence_out, rho_out, ms_out, status]
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
    # quiet: Gradio's own hint names `share=True` in `launch()`; this app's switch is its --share flag.
    demo.queue(default_concurrency_limit=1, max_size=32).launch(
        server_name=args.host, server_port=args.port, share=args.share, quiet=True, prevent_thread_lock=True,
        **launch_kwargs(demo))
    print(launch_message(demo), flush=True)
    demo.block_thread()


def launch_message(demo: gr.Blocks) -> str:
    """Where the running app answers, and how to get a public link (this app's `--share` flag)."""
    lines = [f"* Running on local URL:  {demo.local_url}"]
    if getattr(demo, "share_url", None):
        lines.append(f"* Running on public URL: {demo.share_url}")
    elif not os.environ.get("SPACE_ID"):
        lines.append("* To create a public link, start the app with `--share`: python space/app.py --share")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
