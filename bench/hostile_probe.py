"""Hostile-input probe of issue 18: at least one case per class, each classified by what the package does with it.

    python bench/hostile_probe.py [--keep DIR]

Outcomes: "clear error" (an error naming the input and the problem, or a conversion report that lists the sample
with its problem), "repaired" (a documented repair or bound held: the result is right), "crash" (an error that does
not say what is wrong, or an unbounded cost), "silent-wrong" (no error and a wrong result), "security hole" (a
server file read through a user's upload). Every case builds its own tiny inputs under a temporary folder; the whole
probe takes about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xpl_hf import XPLConfig, XPLModel, XPLProcessor, load_model_and_processor  # noqa: E402

CLEAR, REPAIRED, CRASH, SILENT, HOLE = "clear error", "repaired", "crash", "silent-wrong", "security hole"
TINY = dict(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)
SLOW_SECONDS = 10.0  # a single call above this is an unbounded cost
CASES: list[tuple[int, str, Callable[[Path], tuple[str, str]]]] = []


def case(klass: int, name: str):
    def register(function):
        CASES.append((klass, name, function))
        return function
    return register


def command_line(action: Callable[[], object]) -> Callable[[], object]:
    """``action`` with an argparse exit turned into an error holding what the command printed on stderr."""
    def run():
        stderr, sys.stderr = sys.stderr, io.StringIO()
        try:
            return action()
        except SystemExit as exit_:
            raise ValueError(f"exit {exit_.code}: {sys.stderr.getvalue().strip()}") from None
        finally:
            sys.stderr = stderr
    return run


def refused(action: Callable[[], object], *words: str) -> tuple[str, str]:
    """CLEAR if ``action`` raises an error whose text holds every word (case-insensitive), CRASH for any other error,
    SILENT when it returns."""
    try:
        action()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - classifying every outcome is the point
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if all(w.lower() in text.lower() for w in words) else CRASH), text
    return SILENT, "no error"


# ------------------------------------------------------------------------------------------------- tiny inputs
def png(size=(16, 16), color=(10, 120, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(path: Path, rate: int = 16000, seconds: float = 1.0) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, subtype="PCM_16")
    return path


def mp4(path: Path, seconds: float = 2.0) -> Path:
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=16000)
        for i in range(int(10 * seconds)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i % 255, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        samples = (0.3 * np.sin(np.arange(int(16000 * seconds)) / 5.0)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            chunk.sample_rate = 16000
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())
    return path


_MODEL: dict[str, Path] = {}


def model_folder(tmp: Path) -> Path:
    """A copy of one saved tiny model (model + processor), for a case to damage."""
    if "good" not in _MODEL:
        torch.manual_seed(0)
        model = XPLModel(XPLConfig(**TINY))
        _MODEL["good"] = tmp.parent / "good-model"
        model.save_pretrained(_MODEL["good"])
        XPLProcessor.from_config(model.config).save_pretrained(_MODEL["good"])
    return Path(shutil.copytree(_MODEL["good"], tmp / "model"))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def inputs(processor: XPLProcessor):
    return processor(images=[np.full((64, 64, 3), 90, np.uint8)], audio=[np.sin(np.arange(16000) / 7.0)],
                     sampling_rate=16000)


# --------------------------------------------------------------------------- 1. user media opened only if allowed
def _secret(tmp: Path) -> Path:
    return wav(tmp / "server-secret.wav")


def _leak_or_refusal(action, upload: Path) -> tuple[str, str]:
    """HOLE when the server file comes back; CLEAR when the upload is refused by name."""
    try:
        result = action()
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        named = upload.name in text and ("refus" in text.lower() or "allowed" in text.lower())
        return (CLEAR if named else CRASH), text
    return HOLE, f"returned {type(result).__name__}: the server file was read"


@case(1, "HLS playlist x.m3u8 naming a server file (audio)")
def hls_audio(tmp):
    from xpl_hf.media import read_audio_window

    playlist = tmp / "x.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{_secret(tmp)}\n#EXT-X-ENDLIST\n")
    return _leak_or_refusal(lambda: read_audio_window(str(playlist), seconds=1.0), playlist)


@case(1, "playlist uploaded as clip.mp4 (video)")
def hls_video(tmp):
    from xpl_hf.media import read_video_clip

    secret = mp4(tmp / "server-secret.mp4")
    upload = tmp / "clip.mp4"
    upload.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n")
    return _leak_or_refusal(lambda: read_video_clip(str(upload), clip_seconds=1.0), upload)


@case(1, "ffconcat script naming a server file")
def concat(tmp):
    from xpl_hf.media import read_audio_window

    script = tmp / "x.ffconcat"
    script.write_text(f"ffconcat version 1.0\nfile '{_secret(tmp)}'\n")
    return _leak_or_refusal(lambda: read_audio_window(str(script), seconds=1.0), script)


@case(1, "pipeline(video=playlist)")
def pipeline_playlist(tmp):
    from xpl_hf.pipeline_xpl import AudioVisualSourceLocalizationPipeline

    model, processor = load_model_and_processor(model_folder(tmp), device="cpu")
    localizer = AudioVisualSourceLocalizationPipeline(model=model, processor=processor, device="cpu")
    playlist = tmp / "y.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{mp4(tmp / 's.mp4')}\n#EXT-X-ENDLIST\n")
    return _leak_or_refusal(lambda: localizer(video=str(playlist)), playlist)


# ----------------------------------------------------------------------------- 2. work bounded for every sample rate
def _timed_rate(tmp: Path, rate: int) -> tuple[str, str]:
    path = wav(tmp / f"r{rate}.wav", rate=rate, seconds=1.0)
    start = time.perf_counter()
    try:
        features = XPLProcessor(**{k: TINY[k] for k in ("image_size", "clip_seconds")})(audio=str(path))
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if "rate" in text.lower() else CRASH), text
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(features["audio_log_mel"]).all())
    if seconds > SLOW_SECONDS:
        return CRASH, f"{seconds:.1f} s for one 1 s clip (unbounded filter)"
    return (REPAIRED if finite else SILENT), f"{seconds:.2f} s, finite={finite}"


@case(2, "383,999 Hz WAV (coprime with 16 kHz)")
def rate_coprime(tmp):
    return _timed_rate(tmp, 383_999)


@case(2, "three more coprime rates in a row")
def rate_three(tmp):
    outcomes = [_timed_rate(tmp, rate) for rate in (383_987, 383_977, 192_001)]
    worst = next((o for o in outcomes if o[0] != REPAIRED), outcomes[0])
    return worst[0], "; ".join(o[1] for o in outcomes)


@case(2, "384,001 Hz WAV (above the maximum)")
def rate_above(tmp):
    return refused(lambda: XPLProcessor(image_size=64, clip_seconds=1.0)(audio=str(wav(tmp / "a.wav", 384_001))),
                   "rate")


# ------------------------------------------------------------------------ 3. box types in the folder converter
def _folder(tmp: Path, entries: list[dict]) -> Path:
    root = tmp / "folder"
    root.mkdir()
    (root / "f.png").write_bytes(png())
    wav(root / "a.wav")
    (root / "annotations.json").write_text(json.dumps(entries))
    return root


def _convert(root: Path, out: Path):
    from xpl_hf.data.convert import convert

    return convert("folder", str(root), str(out), progress=False)


@case(3, 'converter "boxes": {} / "" / 0 / false')
def boxes_types(tmp):
    bad = {"b_dict": {}, "b_str": "", "b_zero": 0, "b_false": False}
    entries = [{"id": "good", "image": "f.png", "audio": "a.wav", "boxes": [[0.1, 0.1, 0.5, 0.5]]}]
    entries += [{"id": key, "image": "f.png", "audio": "a.wav", "boxes": value} for key, value in bad.items()]
    try:
        report = _convert(_folder(tmp, entries), tmp / "out")
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if "boxes" in text else CRASH), text
    from xpl_hf.data.loading import load_labeled

    labeled = load_labeled(str(tmp / "out"), "labeled", require_boxes=False)
    boxless = [row["id"] for row in labeled if row["id"] in bad and not row["boxes"]]
    listed = json.dumps(report.to_dict() if hasattr(report, "to_dict") else vars(report), default=str)
    if boxless:
        return SILENT, f"stored as labeled rows without a box: {boxless}"
    missing = [key for key in bad if key not in listed]
    return (CLEAR, "each refused and reported as bad boxes") if not missing else (SILENT, f"unreported: {missing}")


# ----------------------------------------------------------------------------- 4. broken weights are never served
@case(4, "model.safetensors with no tensors")
def empty_weights(tmp):
    folder = model_folder(tmp)
    save_file({}, str(folder / "model.safetensors"))
    return refused(lambda: load_model_and_processor(folder, device="cpu"), "model.safetensors", "missing")


@case(4, "model.safetensors missing one tensor")
def missing_tensor(tmp):
    folder = model_folder(tmp)
    weights = load_file(str(folder / "model.safetensors"))
    del weights["branch_a.map_bias"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return refused(lambda: load_model_and_processor(folder, device="cpu"), "model.safetensors", "branch_a.map_bias")


@case(4, "NaN weights (loader and pipeline)")
def nan_weights(tmp):
    from transformers import pipeline

    from xpl_hf import PIPELINE_TASK

    folder = model_folder(tmp)
    weights = load_file(str(folder / "model.safetensors"))
    weights["branch_b.visual_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    outcome = refused(lambda: load_model_and_processor(folder, device="cpu"), "model.safetensors", "nan")
    if outcome[0] != CLEAR:
        return outcome
    return refused(lambda: pipeline(PIPELINE_TASK, model=str(folder), device="cpu"), "model.safetensors", "nan")


def _checkpoints(tmp: Path, damage: Callable[[Path], None] | None = None):
    """Two checkpoints of a tiny run (steps 1 and 2); ``damage`` is applied to the newest."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from xpl_hf.checkpointing import TrainerState, save_checkpoint
    from xpl_hf.method import XPLMethod

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    method = XPLMethod(curriculum_window=8)
    bank, selector = method.make_bank(2), method.make_selector()
    bank.update(["u1", "u2"], {"a": torch.rand(2, 2, 2), "b": torch.rand(2, 2, 2)})
    selector.push(torch.tensor([0.1, 0.5]))
    parts = dict(model=model, optimizer=optimizer, scheduler=scheduler, bank=bank, selector=selector)
    for step in (1, 2):
        newest = save_checkpoint(accelerator, tmp / "run", state=TrainerState(step=step, fingerprint={}),
                                 total_limit=None, **parts)
    if damage is not None:
        damage(newest)
    AcceleratorState._reset_state(reset_partial_state=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _resumes_from(tmp: Path, damage) -> tuple[str, str]:
    from xpl_hf.checkpointing import resolve_checkpoint

    shapes = _checkpoints(tmp, damage)
    try:
        chosen = resolve_checkpoint(tmp / "run", "latest", shapes)
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if "checkpoint-2" in text else CRASH), text
    if chosen is not None and chosen.name == "checkpoint-1":
        return REPAIRED, "fell back to checkpoint-1"
    return SILENT, f"resumes from {chosen.name if chosen else None}"


@case(4, "checkpoint whose weights hold NaN")
def checkpoint_nan(tmp):
    def poison(path: Path):
        weights = load_file(str(path / "model.safetensors"))
        weights["weight"][0, 0] = float("nan")
        save_file(weights, str(path / "model.safetensors"))
    return _resumes_from(tmp, poison)


# ---------------------------------------------------------------------------------- 5. settings checked on load
def _bad_setting(tmp: Path, file: str, setting: str, value) -> tuple[str, str]:
    folder = model_folder(tmp)
    edit_json(folder / file, **{setting: value})
    return refused(lambda: load_model_and_processor(folder, device="cpu"), setting)


@case(5, "processor image_std = 0")
def std_zero(tmp):
    return _bad_setting(tmp, "preprocessor_config.json", "image_std", [0.0, 0.0, 0.0])


@case(5, "processor log_offset = -1")
def log_offset(tmp):
    return _bad_setting(tmp, "preprocessor_config.json", "log_offset", -1.0)


@case(5, "processor image_size 96 for a 64 px model")
def size_mismatch(tmp):
    return _bad_setting(tmp, "preprocessor_config.json", "image_size", 96)


@case(5, "pipeline given a processor for another size")
def pipeline_mismatch(tmp):
    from xpl_hf.pipeline_xpl import AudioVisualSourceLocalizationPipeline

    model, _ = load_model_and_processor(model_folder(tmp), device="cpu")
    other = XPLProcessor(image_size=96, clip_seconds=1.0)
    image, audio = np.full((64, 64, 3), 90, np.uint8), {"array": np.sin(np.arange(16000) / 7.0), "sampling_rate": 16000}
    return refused(lambda: AudioVisualSourceLocalizationPipeline(model=model, processor=other, device="cpu")(
        image=image, audio=audio), "image_size")


@case(5, "pipeline: saved processor with image_std = 0")
def pipeline_bad_processor(tmp):
    from transformers import pipeline

    from xpl_hf import PIPELINE_TASK

    folder = model_folder(tmp)
    edit_json(folder / "preprocessor_config.json", image_std=[0.0, 0.0, 0.0])
    return refused(lambda: pipeline(PIPELINE_TASK, model=str(folder), device="cpu"), "image_std")


@case(5, "config dtype float16, run on CPU")
def half_config(tmp):
    folder = model_folder(tmp)
    edit_json(folder / "config.json", dtype="float16")
    try:
        model, processor = load_model_and_processor(folder, device="cpu")
        maps = model(**inputs(processor)).maps
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if "dtype" in text else CRASH), text
    ok = maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())
    return (REPAIRED if ok else SILENT), f"loaded as {next(model.parameters()).dtype}, maps finite={ok}"


@case(5, "config vggish_sample_rate = 0")
def rate_zero(tmp):
    return _bad_setting(tmp, "config.json", "vggish_sample_rate", 0)


@case(5, "config clip_seconds = 1e7")
def clip_huge(tmp):
    return _bad_setting(tmp, "config.json", "clip_seconds", 1e7)


# ------------------------------------------------------------------------- 6. checkpoints and the saved model
@case(6, "latest checkpoint: corrupt rng_state_0.json")
def corrupt_rng(tmp):
    return _resumes_from(tmp, lambda p: (p / "rng_state_0.json").write_text("{not json"))


@case(6, "latest checkpoint: xpl_state.json = {}")
def empty_state(tmp):
    return _resumes_from(tmp, lambda p: (p / "xpl_state.json").write_text("{}"))


@case(6, "latest checkpoint: a tensor missing from the weights")
def checkpoint_missing(tmp):
    def drop(path: Path):
        weights = load_file(str(path / "model.safetensors"))
        del weights["bias"]
        save_file(weights, str(path / "model.safetensors"))
    return _resumes_from(tmp, drop)


@case(6, "kill inside atomic_save_pretrained (best model parked)")
def parked_best(tmp):
    from xpl_hf.checkpointing import recover_saved_model

    best = model_folder(tmp)
    parked = best.with_name(f".old-{best.name}")
    os.replace(best, parked)
    try:
        recover_saved_model(best)
    except Exception as err:  # noqa: BLE001
        return CRASH, f"{type(err).__name__}: {err}"
    ok = (best / "config.json").is_file() and not parked.exists()
    return (REPAIRED if ok else SILENT), "restored from .old-" if ok else "still stranded"


@case(6, "two runs on one --output_dir")
def two_runs(tmp):
    from xpl_hf.checkpointing import RunLock

    with RunLock(tmp / "run"):
        def second():
            with RunLock(tmp / "run"):
                pass
        return refused(second, "run")


@case(6, "dataset content changed under the same path")
def data_changed(tmp):
    from xpl_hf.checkpointing import check_fingerprint, data_fingerprint

    root = _hand_made(tmp, [[[0.1, 0.1, 0.5, 0.5]]])
    before = data_fingerprint(root + "/")
    _hand_made(tmp, [[[0.2, 0.2, 0.6, 0.6]]])
    after = data_fingerprint(root)
    return refused(lambda: check_fingerprint(before, after, tmp / "run"), "dataset files changed")


# ------------------------------------------------------------------------------ 7. converters report, not crash
@case(7, "annotations.json nested 100,000 deep")
def deep_json(tmp):
    root = _folder(tmp, [])
    (root / "annotations.json").write_text("[" * 100_000 + "]" * 100_000)
    return refused(lambda: _convert(root, tmp / "out"), "annotations.json")


@case(7, 'vggss.json entry with "bbox": 5')
def vggss_number(tmp):
    from xpl_hf.data.convert import vggss_annotations

    path = tmp / "vggss.json"
    path.write_text(json.dumps([{"file": "abc_000010", "class": "dog", "bbox": 5},
                                {"file": "def_000020", "class": "cat", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]))
    try:
        _, stats = vggss_annotations(str(path))
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if "bbox" in text else CRASH), text
    bad = stats.get("bad_entries") or []
    return (CLEAR, f"left out and reported: {bad[:1]}") if bad else (SILENT, "accepted without a word")


@case(7, "non-UTF-8 --test_list")
def bad_list(tmp):
    from xpl_hf.data.convert import main

    (tmp / "in").mkdir()
    (tmp / "list.txt").write_bytes(b"\xff\xfe\xfa id1\n")
    return refused(command_line(lambda: main(["flickr", "--input", str(tmp / "in"), "--output", str(tmp / "out"),
                                              "--test_list", str(tmp / "list.txt")])), "list.txt", "UTF-8")


@case(7, "--output that is a file")
def output_file(tmp):
    root = _folder(tmp, [{"id": "a", "image": "f.png", "audio": "a.wav"}])
    (tmp / "out").write_text("x")
    return refused(lambda: _convert(root, tmp / "out"), "out")


@case(7, "corrupt parquet shard")
def corrupt_shard(tmp):
    from xpl_hf.data.loading import load_labeled

    root = _hand_made(tmp, [[[0.1, 0.1, 0.5, 0.5]]])
    shard = next((Path(root) / "data").glob("test-*.parquet"))
    shard.write_bytes(b"PAR1 this is not parquet PAR1")
    return refused(lambda: load_labeled(root, "test"), shard.name)


@case(7, "empty annotations list")
def empty_list(tmp):
    return refused(lambda: _convert(_folder(tmp, []), tmp / "out"), "annotations")


@case(7, "4 GiB sparse audio file")
def sparse_audio(tmp):
    root = _folder(tmp, [{"id": "big", "image": "f.png", "audio": "big.wav", "boxes": [[0.1, 0.1, 0.5, 0.5]]},
                         {"id": "ok", "image": "f.png", "audio": "a.wav", "boxes": [[0.1, 0.1, 0.5, 0.5]]}])
    with open(root / "big.wav", "wb") as f:
        f.write((root / "a.wav").read_bytes()[:44])
        f.truncate(4 << 30)
    start = time.perf_counter()
    try:
        report = _convert(root, tmp / "out")
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if "big" in text else CRASH), text
    seconds = time.perf_counter() - start
    listed = "big" in json.dumps(report.to_dict() if hasattr(report, "to_dict") else vars(report), default=str)
    if seconds > SLOW_SECONDS:
        return CRASH, f"{seconds:.0f} s: the file was read"
    return (CLEAR if listed else SILENT), f"{seconds:.1f} s, reported={listed}"


# ------------------------------------------------------------------------ 8. values checked where data enters
def _hand_made(tmp: Path, boxes: list) -> str:
    from xpl_hf.data.schema import xpl_features
    from xpl_hf.data.shards import ShardWriter

    audio = wav(tmp / "hm.wav").read_bytes()
    with ShardWriter(str(tmp / "hand"), "test", xpl_features()) as writer:
        for i, sample_boxes in enumerate(boxes):
            writer.write({"id": f"s{i}", "image": {"bytes": png(), "path": None}, "audio": {"bytes": audio,
                          "path": None}, "boxes": sample_boxes, "gt_rule": "union", "label": ""})
    return str(tmp / "hand")


def _load_hand_made(tmp: Path, bad_box: list, *words: str) -> tuple[str, str]:
    from xpl_hf.data.loading import load_labeled

    return refused(lambda: load_labeled(_hand_made(tmp, [[[0.1, 0.1, 0.5, 0.5]], [bad_box]]), "test"), "s1", *words)


@case(8, "hand-made parquet: NaN box")
def nan_box(tmp):
    return _load_hand_made(tmp, [0.1, float("nan"), 0.5, 0.5], "nan")


@case(8, "hand-made parquet: pixel-unit box")
def pixel_box(tmp):
    return _load_hand_made(tmp, [12.0, 30.0, 180.0, 200.0], "pixel")


@case(8, "hand-made parquet: inverted box")
def inverted_box(tmp):
    from xpl_hf.data.loading import load_labeled

    logging.getLogger("xpl_hf").setLevel(logging.ERROR)
    try:
        ds = load_labeled(_hand_made(tmp, [[[0.5, 0.6, 0.1, 0.2]]]), "test")
    except Exception as err:  # noqa: BLE001
        return CRASH, f"{type(err).__name__}: {err}"
    box = np.asarray(ds[0]["boxes"][0])
    ok = np.allclose(box, [0.1, 0.2, 0.5, 0.6], atol=1e-6)
    return (REPAIRED if ok else SILENT), f"loaded box {np.round(box, 3).tolist()}"


@case(8, "metric: 0/255 reference mask")
def mask_255(tmp):
    from xpl_hf.metrics.protocol import localization_metrics

    prediction = np.zeros((7, 7), np.float32)
    prediction[:3, :3] = 1
    mask = np.zeros((224, 224), np.float32)
    mask[:96, :96] = 255
    return refused(lambda: localization_metrics([prediction], [mask]), "ground truth 0", "[0, 1]")


@case(8, "metric: ragged prediction")
def ragged(tmp):
    import evaluate

    from xpl_hf import METRIC_PATH

    metric = evaluate.load(METRIC_PATH, "union")
    return refused(lambda: metric.compute(predictions=[[[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0, 0.5], [1.0, 0.0]]],
                                          references=[[[0.5, 0.0, 1.0, 1.0]]] * 2), "prediction 1")


def _flag(*argv: str) -> Callable[[], object]:
    from xpl_hf.training_args import parse_args

    return command_line(lambda: parse_args(list(argv)))


@case(8, "--clip_seconds 100000")
def flag_clip(tmp):
    return refused(_flag("--clip_seconds", "100000"), "clip_seconds")


@case(8, "--image_size 32 (1 x 1 maps)")
def flag_size(tmp):
    return refused(_flag("--image_size", "32"), "image_size")


@case(8, "--test_split labeled")
def flag_test_split(tmp):
    from datasets import Dataset

    from xpl_hf.trainer import warn_on_split_overlap

    rows, other = Dataset.from_dict({"id": ["a", "b"]}), Dataset.from_dict({"id": ["c"]})
    try:
        found = warn_on_split_overlap({"labeled": ("labeled", rows), "validation": ("validation", other),
                                       "test": ("labeled", rows)}, None, logging.getLogger("probe"))
    except Exception as err:  # noqa: BLE001
        text = f"{type(err).__name__}: {err}"
        return (CLEAR if "labeled" in text else CRASH), text
    return (CLEAR, f"warned: {found[0][:90]}") if found else (SILENT, "no warning")


# ------------------------------------------------------------------------- 9. one decoding for train and inference
def _training_pixels(processor: XPLProcessor, image_bytes: bytes, tmp: Path) -> torch.Tensor:
    from xpl_hf.data.transforms import XPLCollator

    row = {"id": "x", "image": {"bytes": image_bytes, "path": None}, "audio": {"bytes": wav(tmp / "c.wav").read_bytes(),
           "path": None}, "boxes": [], "gt_rule": "none", "label": ""}
    return XPLCollator(processor, train=False)([row])["pixel_values"][0]


def _grey_levels(a: torch.Tensor, b: torch.Tensor, processor: XPLProcessor) -> float:
    std = torch.tensor(processor.image_std)[:, None, None] * 255
    return float(((a - b) * std).abs().mean())


@case(9, "EXIF orientation 6: training vs pipeline")
def exif(tmp):
    from xpl_hf.pipeline_xpl import AudioVisualSourceLocalizationPipeline

    image = Image.new("RGB", (64, 32), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 32, 32))
    exif_data = image.getexif()
    exif_data[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif_data, quality=95)
    model, processor = load_model_and_processor(model_folder(tmp), device="cpu")
    localizer = AudioVisualSourceLocalizationPipeline(model=model, processor=processor, device="cpu")
    served = localizer.preprocess({"image": buffer.getvalue(), "audio": str(wav(tmp / "e.wav"))})["pixel_values"][0]
    trained = _training_pixels(processor, buffer.getvalue(), tmp)
    levels = _grey_levels(served, trained, processor)
    return (REPAIRED if levels <= 1.5 else SILENT), f"pipeline vs training: {levels:.2f} grey levels apart"


@case(9, "1024 px JPEG: training vs pipeline")
def big_jpeg(tmp):
    from xpl_hf.pipeline_xpl import AudioVisualSourceLocalizationPipeline

    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(128, 60, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    model, processor = load_model_and_processor(model_folder(tmp), device="cpu")
    localizer = AudioVisualSourceLocalizationPipeline(model=model, processor=processor, device="cpu")
    served = localizer.preprocess({"image": buffer.getvalue(), "audio": str(wav(tmp / "e.wav"))})["pixel_values"][0]
    levels = _grey_levels(served, _training_pixels(processor, buffer.getvalue(), tmp), processor)
    return (REPAIRED if levels <= 1.5 else SILENT), f"{levels:.2f} grey levels apart (README promises <= 1.5)"


@case(9, "video frame at time NaN")
def nan_time(tmp):
    from xpl_hf.media import read_video_clip

    video = mp4(tmp / "v.mp4")
    return refused(lambda: read_video_clip(str(video), time=math.nan, clip_seconds=1.0), "time")


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> Counter:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="keep the inputs of every case under this folder")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    root = Path(args.keep or tempfile.mkdtemp(prefix="hostile-probe-"))
    counts: Counter = Counter()
    start = time.perf_counter()
    print(f"{'class':>5}  {'case':<54} {'outcome':<13} {'s':>5}  detail")
    for klass, name, function in CASES:
        folder = root / function.__name__
        folder.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        try:
            outcome, detail = function(folder)
        except Exception as err:  # noqa: BLE001 - the probe's own set-up failed: count it as a crash of the case
            outcome, detail = CRASH, f"(set-up) {type(err).__name__}: {err}"
        counts[outcome] += 1
        detail = " ".join(str(detail).split())
        print(f"{klass:>5}  {name:<54} {outcome:<13} {time.perf_counter() - began:5.1f}  {detail[:110]}", flush=True)
    print(f"\n{len(CASES)} cases in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{counts[o]} {o}" for o in (CLEAR, REPAIRED, CRASH, SILENT, HOLE)))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return counts


if __name__ == "__main__":
    main()
