"""Hostile-input probe of issue 18: at least one case per class, each classified by what the package does with it.

    python bench/hostile_probe.py [--keep DIR]

Outcomes: "clear error" (an error naming the input and the problem, or a conversion report that lists the sample
with its problem), "repaired" (a documented repair or bound held: the result is right), "crash" (an error that does
not say what is wrong, or unbounded work: one call over 10 s), "silent-wrong" (no error and a wrong result),
"security hole" (a server file read through a user's upload). Every case builds its own tiny inputs in a temporary
folder; the probe takes about a minute on two CPU cores.
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

from xpl_hf import PIPELINE_TASK, XPLConfig, XPLModel, XPLProcessor, load_model_and_processor

CLEAR, REPAIRED, CRASH, SILENT, HOLE = "clear error", "repaired", "crash", "silent-wrong", "security hole"
TINY = dict(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)
SLOW_SECONDS = 10.0
BOX = [[0.1, 0.1, 0.5, 0.5]]
CASES: list[tuple[int, str, Callable[[Path], tuple[str, str]]]] = []
Judge = Callable[[object], tuple[str, str]]


def case(klass: int, name: str):
    def register(function):
        CASES.append((klass, name, function))
        return function
    return register


def outcome(action: Callable[[], object], *words: str, judge: Judge | None = None) -> tuple[str, str]:
    """Run ``action``: an error whose text holds every word (case-insensitive) is CLEAR, any other error a CRASH; a
    result is judged by ``judge`` (SILENT without one); more than :data:`SLOW_SECONDS` is a CRASH whatever happened."""
    start = time.perf_counter()
    try:
        result = action()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - classifying every outcome is the point
        text = f"{type(err).__name__}: {err}"
        verdict = CLEAR if all(w.lower() in text.lower() for w in words) else CRASH
    else:
        verdict, text = judge(result) if judge else (SILENT, "no error")
    seconds = time.perf_counter() - start
    return (CRASH, f"{seconds:.0f} s (unbounded work); {text}") if seconds > SLOW_SECONDS else (verdict, text)


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


# ------------------------------------------------------------------------------------------------- tiny inputs
def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(path: Path, rate: int = 16000) -> Path:
    """One second of a 440 Hz tone."""
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate), rate, subtype="PCM_16")
    return path


def mp4(path: Path, seconds: int = 2) -> Path:
    """A 32 x 32 MPEG-4 video at 10 fps with an AAC track."""
    import av

    with av.open(str(path), "w") as container:
        video, audio = container.add_stream("mpeg4", rate=10), container.add_stream("aac", rate=16000)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        for i in range(10 * seconds):
            grey = np.full((32, 32, 3), 20 * i % 256, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(grey, "rgb24")))
        container.mux(video.encode())
        samples = (0.3 * np.sin(np.arange(16000 * seconds) / 5.0)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), "fltp", "mono")
            chunk.sample_rate = 16000
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())
    return path


def model_folder(tmp: Path) -> Path:
    """A copy of one saved tiny model (weights + processor) for a case to damage."""
    good = tmp.parent / "good-model"
    if not good.is_dir():
        torch.manual_seed(0)
        model = XPLModel(XPLConfig(**TINY))
        model.save_pretrained(good)
        XPLProcessor.from_config(model.config).save_pretrained(good)
    return Path(shutil.copytree(good, tmp / "model"))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_weights(path: Path, change: Callable[[dict], None]) -> None:
    weights = load_file(str(path))
    change(weights)
    save_file(weights, str(path), metadata={"format": "pt"})


def tiny_pipeline(tmp: Path, processor: XPLProcessor | None = None):
    from xpl_hf.pipeline_xpl import AudioVisualSourceLocalizationPipeline

    model, own = load_model_and_processor(model_folder(tmp), device="cpu")
    return AudioVisualSourceLocalizationPipeline(model=model, processor=processor or own, device="cpu")


# --------------------------------------------------------------------------- 1. user media opened only if allowed
def playlist(path: Path, target: Path) -> Path:
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n")
    return path


def leak(result) -> tuple[str, str]:
    return HOLE, f"returned {type(result).__name__}: the server file was read"


@case(1, "HLS playlist x.m3u8 naming a server file (audio)")
def hls_audio(tmp):
    from xpl_hf.media import read_audio_window

    upload = playlist(tmp / "x.m3u8", wav(tmp / "server-secret.wav"))
    return outcome(lambda: read_audio_window(str(upload), seconds=1.0), "x.m3u8", "allowed", judge=leak)


@case(1, "playlist uploaded as clip.mp4 (video)")
def hls_video(tmp):
    from xpl_hf.media import read_video_clip

    upload = playlist(tmp / "clip.mp4", mp4(tmp / "server-secret.mp4"))
    return outcome(lambda: read_video_clip(str(upload), clip_seconds=1.0), "clip.mp4", "allowed", judge=leak)


@case(1, "ffconcat script naming a server file")
def concat(tmp):
    from xpl_hf.media import read_audio_window

    script = tmp / "x.ffconcat"
    script.write_text(f"ffconcat version 1.0\nfile '{wav(tmp / 'server-secret.wav')}'\n")
    return outcome(lambda: read_audio_window(str(script), seconds=1.0), "x.ffconcat", "allowed", judge=leak)


@case(1, "pipeline(video=playlist)")
def pipeline_playlist(tmp):
    localizer, upload = tiny_pipeline(tmp), playlist(tmp / "y.m3u8", mp4(tmp / "server-secret.mp4"))
    return outcome(lambda: localizer(video=str(upload)), "y.m3u8", "allowed", judge=leak)


# ----------------------------------------------------------------------------- 2. work bounded for every sample rate
def features_at(tmp: Path, *rates: int) -> tuple[str, str]:
    def run():
        processor = XPLProcessor(image_size=64, clip_seconds=1.0)
        return [processor(audio=str(wav(tmp / f"r{rate}.wav", rate)))["audio_log_mel"] for rate in rates]

    def judge(mels):
        finite = all(bool(torch.isfinite(mel).all()) for mel in mels)
        return (REPAIRED, "bounded time, finite features") if finite else (SILENT, "non-finite features")
    return outcome(run, "rate", judge=judge)


case(2, "383,999 Hz WAV (coprime with 16 kHz)")(lambda tmp: features_at(tmp, 383_999))
case(2, "three more coprime rates in a row")(lambda tmp: features_at(tmp, 383_987, 383_977, 192_001))
case(2, "384,001 Hz WAV (above the maximum)")(lambda tmp: features_at(tmp, 384_001))


# ------------------------------------------------------------------------ 3. box types in the folder converter
def folder(tmp: Path, entries: list[dict]) -> Path:
    root = tmp / "folder"
    root.mkdir()
    (root / "f.png").write_bytes(png())
    wav(root / "a.wav")
    (root / "annotations.json").write_text(json.dumps(entries))
    return root


def convert(root: Path, out: Path):
    from xpl_hf.data.convert import convert as run

    return run("folder", str(root), str(out), progress=False)


def report_text(report) -> str:
    return json.dumps(report.to_dict() if hasattr(report, "to_dict") else vars(report), default=str)


@case(3, 'converter "boxes": {} / "" / 0 / false')
def boxes_types(tmp):
    from xpl_hf.data.loading import load_labeled

    bad = {"b_dict": {}, "b_str": "", "b_zero": 0, "b_false": False}
    entries = [{"id": key, "image": "f.png", "audio": "a.wav", "boxes": value}
               for key, value in {"good": BOX, **bad}.items()]

    def judge(report):
        labeled = load_labeled(str(tmp / "out"), "labeled", require_boxes=False)
        boxless = [row["id"] for row in labeled if row["id"] in bad and not row["boxes"]]
        unreported = [key for key in bad if key not in report_text(report)]
        if boxless or unreported:
            return SILENT, f"labeled without a box: {boxless}; unreported: {unreported}"
        return CLEAR, "each refused and reported as bad boxes"
    return outcome(lambda: convert(folder(tmp, entries), tmp / "out"), "boxes", judge=judge)


# ----------------------------------------------------------------------------- 4. broken weights are never served
def damaged_model(tmp: Path, change: Callable[[dict], None], *words: str) -> tuple[str, str]:
    model = model_folder(tmp)
    edit_weights(model / "model.safetensors", change)
    return outcome(lambda: load_model_and_processor(model, device="cpu"), "model.safetensors", *words)


case(4, "model.safetensors with no tensors")(lambda tmp: damaged_model(tmp, dict.clear, "missing"))
case(4, "model.safetensors missing one tensor")(
    lambda tmp: damaged_model(tmp, lambda w: w.pop("branch_a.map_bias"), "branch_a.map_bias"))
case(4, "NaN weights: load_model_and_processor")(
    lambda tmp: damaged_model(tmp, lambda w: w["branch_b.visual_proj.weight"].fill_(math.nan), "nan"))


@case(4, "NaN weights: transformers.pipeline(task, model=folder)")
def nan_pipeline(tmp):
    from transformers import pipeline

    model = model_folder(tmp)
    edit_weights(model / "model.safetensors", lambda w: w["branch_b.map_bias"].fill_(math.nan))
    return outcome(lambda: pipeline(PIPELINE_TASK, model=str(model), device="cpu"), "model.safetensors", "nan")


def resume_latest(tmp: Path, damage: Callable[[Path], None]) -> tuple[str, str]:
    """Two checkpoints of a tiny run; ``damage`` spoils the newest; which one does 'latest' resume from?"""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from xpl_hf.checkpointing import TrainerState, resolve_checkpoint, save_checkpoint
    from xpl_hf.method import XPLMethod

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    linear = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, scheduler = accelerator.prepare(linear, optimizer, scheduler)
    method = XPLMethod(curriculum_window=8)
    bank, selector = method.make_bank(2), method.make_selector()
    bank.update(["u1", "u2"], {"a": torch.rand(2, 2, 2), "b": torch.rand(2, 2, 2)})
    selector.push(torch.tensor([0.1, 0.5]))
    for step in (1, 2):
        newest = save_checkpoint(accelerator, tmp / "run", state=TrainerState(step=step, fingerprint={}),
                                 total_limit=None, model=model, optimizer=optimizer, scheduler=scheduler, bank=bank,
                                 selector=selector)
    AcceleratorState._reset_state(reset_partial_state=True)
    damage(newest)
    shapes = {k: tuple(v.shape) for k, v in linear.state_dict().items()}

    def judge(chosen):
        if chosen is not None and chosen.name == "checkpoint-1":
            return REPAIRED, "fell back to checkpoint-1"
        return SILENT, f"resumes from {getattr(chosen, 'name', None)}"
    return outcome(lambda: resolve_checkpoint(tmp / "run", "latest", shapes), "checkpoint-2", judge=judge)


case(4, "checkpoint whose weights hold NaN")(lambda tmp: resume_latest(
    tmp, lambda p: edit_weights(p / "model.safetensors", lambda w: w["weight"].fill_(math.nan))))


# ---------------------------------------------------------------------------------- 5. settings checked on load
def bad_setting(file: str, setting: str, value) -> Callable[[Path], tuple[str, str]]:
    def run(tmp: Path) -> tuple[str, str]:
        model = model_folder(tmp)
        edit_json(model / file, **{setting: value})
        return outcome(lambda: load_model_and_processor(model, device="cpu"), setting)
    return run


for _file, _setting, _value in (("preprocessor_config.json", "image_std", [0.0, 0.0, 0.0]),
                                ("preprocessor_config.json", "log_offset", -1.0),
                                ("preprocessor_config.json", "image_size", 96),
                                ("config.json", "vggish_sample_rate", 0), ("config.json", "clip_seconds", 1e7)):
    case(5, f"{_file.split('_')[0].removesuffix('.json')} {_setting} = {_value}")(bad_setting(_file, _setting, _value))


@case(5, "pipeline given a processor for another size")
def pipeline_mismatch(tmp):
    return outcome(lambda: tiny_pipeline(tmp, XPLProcessor(image_size=96, clip_seconds=1.0)), "image_size")


@case(5, "pipeline: saved processor with image_std = 0")
def pipeline_bad_processor(tmp):
    from transformers import pipeline

    model = model_folder(tmp)
    edit_json(model / "preprocessor_config.json", image_std=[0.0, 0.0, 0.0])
    return outcome(lambda: pipeline(PIPELINE_TASK, model=str(model), device="cpu"), "image_std")


@case(5, "config dtype float16, run on CPU")
def half_config(tmp):
    model = model_folder(tmp)
    edit_json(model / "config.json", dtype="float16")

    def run():
        loaded, processor = load_model_and_processor(model, device="cpu")
        return loaded(**processor(images=[np.full((64, 64, 3), 90, np.uint8)], audio=[np.sin(np.arange(16000) / 7)],
                                  sampling_rate=16000)).maps

    def judge(maps):
        ok = maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())
        return (REPAIRED if ok else SILENT), f"maps {maps.dtype}, finite={ok}"
    return outcome(run, "dtype", judge=judge)


# ------------------------------------------------------------------------- 6. checkpoints and the saved model
case(6, "latest checkpoint: corrupt rng_state_0.json")(
    lambda tmp: resume_latest(tmp, lambda p: (p / "rng_state_0.json").write_text("{not json")))
case(6, "latest checkpoint: xpl_state.json = {}")(
    lambda tmp: resume_latest(tmp, lambda p: (p / "xpl_state.json").write_text("{}")))
case(6, "latest checkpoint: a tensor missing from the weights")(
    lambda tmp: resume_latest(tmp, lambda p: edit_weights(p / "model.safetensors", lambda w: w.pop("bias"))))


@case(6, "kill inside atomic_save_pretrained (best model parked)")
def parked_best(tmp):
    from xpl_hf.run_folder import recover_saved_model

    best = model_folder(tmp)
    os.replace(best, best.with_name(f".old-{best.name}"))

    def judge(_):
        ok = (best / "config.json").is_file() and not best.with_name(f".old-{best.name}").exists()
        return (REPAIRED, "restored from .old-") if ok else (SILENT, "still stranded")
    return outcome(lambda: recover_saved_model(best), judge=judge)


@case(6, "two runs on one --output_dir")
def two_runs(tmp):
    from xpl_hf.run_folder import RunLock

    def second_run():
        with RunLock(tmp / "run"):
            pass
    with RunLock(tmp / "run"):
        return outcome(second_run, "in use")


@case(6, "dataset content changed under the same path")
def data_changed(tmp):
    from xpl_hf.checkpointing import check_fingerprint
    from xpl_hf.data.checks import data_fingerprint

    root = hand_made(tmp, [BOX])
    before = data_fingerprint(root + "/")
    hand_made(tmp, [[[0.2, 0.2, 0.6, 0.6]]])
    return outcome(lambda: check_fingerprint(before, data_fingerprint(root), tmp / "run"), "dataset files changed")


# ------------------------------------------------------------------------------ 7. converters report, not crash
@case(7, "annotations.json nested 100,000 deep")
def deep_json(tmp):
    root = folder(tmp, [])
    (root / "annotations.json").write_text("[" * 100_000 + "]" * 100_000)
    return outcome(lambda: convert(root, tmp / "out"), "annotations.json")


@case(7, 'vggss.json entry with "bbox": 5')
def vggss_number(tmp):
    from xpl_hf.data.convert import vggss_annotations

    path = tmp / "vggss.json"
    path.write_text(json.dumps([{"file": "abc_000010", "class": "dog", "bbox": 5},
                                {"file": "def_000020", "class": "cat", "bbox": BOX}]))

    def judge(parsed):
        bad = parsed[1].get("bad_entries") or []
        return (CLEAR, f"left out and reported: {bad[:1]}") if bad else (SILENT, "accepted without a word")
    return outcome(lambda: vggss_annotations(str(path)), "bbox", judge=judge)


@case(7, "non-UTF-8 --test_list")
def bad_list(tmp):
    from xpl_hf.data.convert import main

    (tmp / "in").mkdir()
    (tmp / "list.txt").write_bytes(b"\xff\xfe\xfa id1\n")
    argv = ["flickr", "--input", str(tmp / "in"), "--output", str(tmp / "out"), "--test_list", str(tmp / "list.txt")]
    return outcome(command_line(lambda: main(argv)), "list.txt", "UTF-8")


@case(7, "--output that is a file")
def output_file(tmp):
    root = folder(tmp, [{"id": "a", "image": "f.png", "audio": "a.wav"}])
    (tmp / "out").write_text("x")
    return outcome(lambda: convert(root, tmp / "out"), "out", "file")


@case(7, "corrupt parquet shard")
def corrupt_shard(tmp):
    from xpl_hf.data.loading import load_labeled

    root = hand_made(tmp, [BOX])
    shard = next((Path(root) / "data").glob("test-*.parquet"))
    shard.write_bytes(b"PAR1 this is not parquet PAR1")
    return outcome(lambda: load_labeled(root, "test"), shard.name)


case(7, "empty annotations list")(lambda tmp: outcome(lambda: convert(folder(tmp, []), tmp / "out"), "annotations"))


@case(7, "4 GiB sparse audio file")
def sparse_audio(tmp):
    root = folder(tmp, [{"id": "big", "image": "f.png", "audio": "big.wav", "boxes": BOX},
                        {"id": "ok", "image": "f.png", "audio": "a.wav", "boxes": BOX}])
    with open(root / "big.wav", "wb") as f:
        f.write((root / "a.wav").read_bytes()[:44])
        f.truncate(4 << 30)
    return outcome(lambda: convert(root, tmp / "out"), "big",
                   judge=lambda report: (CLEAR, "skipped unread and reported") if "big" in report_text(report)
                   else (SILENT, "not reported"))


# ------------------------------------------------------------------------ 8. values checked where data enters
def hand_made(tmp: Path, boxes: list) -> str:
    """A test split written with the schema but none of the converters' box rules."""
    from xpl_hf.data.schema import xpl_features
    from xpl_hf.data.shards import ShardWriter

    audio = wav(tmp / "hand.wav").read_bytes()
    with ShardWriter(str(tmp / "hand"), "test", xpl_features()) as writer:
        for i, sample_boxes in enumerate(boxes):
            writer.write({"id": f"s{i}", "image": {"bytes": png(), "path": None}, "boxes": sample_boxes,
                          "audio": {"bytes": audio, "path": None}, "gt_rule": "union", "label": ""})
    return str(tmp / "hand")


def load_box(tmp: Path, box: list, *words: str, repaired: list | None = None) -> tuple[str, str]:
    from xpl_hf.data.loading import load_labeled

    def judge(ds):
        loaded = np.asarray(ds[1]["boxes"][0])
        ok = repaired is not None and np.allclose(loaded, repaired, atol=1e-6)
        return (REPAIRED if ok else SILENT), f"loaded box {np.round(loaded, 3).tolist()}"
    return outcome(lambda: load_labeled(hand_made(tmp, [BOX, [box]]), "test"), "s1", *words, judge=judge)


case(8, "hand-made parquet: NaN box")(lambda tmp: load_box(tmp, [0.1, math.nan, 0.5, 0.5], "nan"))
case(8, "hand-made parquet: pixel-unit box")(lambda tmp: load_box(tmp, [12.0, 30.0, 180.0, 200.0], "pixel"))
case(8, "hand-made parquet: inverted box")(
    lambda tmp: load_box(tmp, [0.5, 0.6, 0.1, 0.2], repaired=[0.1, 0.2, 0.5, 0.6]))


@case(8, "metric: 0/255 reference mask")
def mask_255(tmp):
    from xpl_hf.metrics.protocol import localization_metrics

    prediction, mask = np.zeros((7, 7), np.float32), np.zeros((224, 224), np.float32)
    prediction[:3, :3], mask[:96, :96] = 1, 255
    return outcome(lambda: localization_metrics([prediction], [mask]), "ground truth 0", "[0, 1]")


@case(8, "metric: ragged prediction")
def ragged(tmp):
    import evaluate

    from xpl_hf import METRIC_PATH

    metric = evaluate.load(METRIC_PATH, "union")
    return outcome(lambda: metric.compute(predictions=[[[0.0, 1.0], [0.0, 1.0]], [[0.0, 1.0, 0.5], [1.0, 0.0]]],
                                          references=[BOX] * 2), "prediction 1")


def flag(*argv: str) -> Callable[[Path], tuple[str, str]]:
    from xpl_hf.training_args import parse_args

    return lambda tmp: outcome(command_line(lambda: parse_args(list(argv))), argv[0].lstrip("-"))


case(8, "--clip_seconds 100000")(flag("--clip_seconds", "100000"))
case(8, "--image_size 32 (1 x 1 maps)")(flag("--image_size", "32"))


@case(8, "--test_split labeled")
def test_split_labeled(tmp):
    from datasets import Dataset

    from xpl_hf.data.checks import warn_on_split_overlap

    rows, other = Dataset.from_dict({"id": ["a", "b"]}), Dataset.from_dict({"id": ["c"]})
    splits = {"labeled": ("labeled", rows), "validation": ("validation", other), "test": ("labeled", rows)}
    return outcome(lambda: warn_on_split_overlap(splits, None, logging.getLogger("probe")), "labeled",
                   judge=lambda found: (CLEAR, f"warned: {found[0]}") if found else (SILENT, "no warning"))


# ------------------------------------------------------------------------- 9. one decoding for train and inference
def decode_parity(tmp: Path, image_bytes: bytes) -> tuple[str, str]:
    """Mean distance, in grey levels, between the pipeline's and the training collator's pixels of one image."""
    from xpl_hf.data.transforms import XPLCollator

    localizer, audio = tiny_pipeline(tmp), wav(tmp / "e.wav")

    def run():
        served = localizer.preprocess({"image": image_bytes, "audio": str(audio)})["pixel_values"][0]
        row = {"id": "x", "image": {"bytes": image_bytes, "path": None}, "boxes": [], "gt_rule": "none",
               "audio": {"bytes": audio.read_bytes(), "path": None}, "label": ""}
        trained = XPLCollator(localizer.processor, train=False)([row])["pixel_values"][0]
        std = torch.tensor(localizer.processor.image_std)[:, None, None] * 255
        return float(((served - trained) * std).abs().mean())
    return outcome(run, judge=lambda levels: (REPAIRED if levels <= 1.5 else SILENT,
                                              f"{levels:.2f} grey levels apart (README: <= 1.5)"))


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@case(9, "EXIF orientation 6: training vs pipeline")
def exif(tmp):
    image = Image.new("RGB", (64, 32), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 32, 32))
    tags = image.getexif()
    tags[0x0112] = 6
    return decode_parity(tmp, jpeg(image, exif=tags, quality=95))


@case(9, "1024 px JPEG: training vs pipeline")
def big_jpeg(tmp):
    pixels = np.clip(np.random.default_rng(0).normal(128, 60, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    return decode_parity(tmp, jpeg(Image.fromarray(pixels), quality=90))


@case(9, "video frame at time NaN")
def nan_time(tmp):
    from xpl_hf.media import read_video_clip

    video = mp4(tmp / "v.mp4")
    return outcome(lambda: read_video_clip(str(video), time=math.nan, clip_seconds=1.0), "time")


# ------------------------------------------------------------ 10. archives: one memory budget, integrity, names
def stream_member(tar, name: str, size: int, byte: bytes = b"\0") -> None:
    """Add a member of ``size`` copies of ``byte`` to an open tar writer without holding it in memory."""
    import tarfile

    class Repeated(io.RawIOBase):
        def __init__(self):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = byte * n
            self.left -= n
            return n

    info = tarfile.TarInfo(name)
    info.size = size
    tar.addfile(info, io.BufferedReader(Repeated(), 1 << 20))


def folder_archive(path: Path, entries: list[dict], members: dict[str, bytes],
                   big: tuple[tuple[str, int], ...] = (), annotations_size: int = 0) -> Path:
    """A .tar.gz of a folder dataset: annotations.json (padded with spaces to ``annotations_size``), ``members`` and
    ``big`` members of zeros streamed in."""
    import tarfile

    text = json.dumps(entries).encode()
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        if annotations_size > len(text):
            info = tarfile.TarInfo("ds/annotations.json")
            info.size = annotations_size
            tar.addfile(info, io.BufferedReader(_Concat(text, annotations_size - len(text)), 1 << 20))
        else:
            stream_member_bytes(tar, "ds/annotations.json", text)
        for name, data in members.items():
            stream_member_bytes(tar, f"ds/{name}", data)
        for name, size in big:
            stream_member(tar, f"ds/{name}", size)
    return path


class _Concat(io.RawIOBase):
    """``head`` then ``pad`` spaces, read in chunks."""

    def __init__(self, head: bytes, pad: int):
        self.head, self.pad = head, pad

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        n = min(len(buffer), self.pad)
        buffer[:n] = b" " * n
        self.pad -= n
        return n


def stream_member_bytes(tar, name: str, data: bytes) -> None:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pax_bomb(path: Path, header_bytes: int) -> Path:
    """A .tar.gz whose first member carries a real PAX header of ``header_bytes`` (a comment of spaces)."""
    import gzip
    import tarfile

    value = header_bytes - 32
    record_len = len(" comment=\n") + value
    record_len += len(str(record_len + len(str(record_len))))
    with gzip.open(path, "wb", compresslevel=1) as f:
        head = tarfile.TarInfo("././@PaxHeader")
        head.size, head.type = record_len, tarfile.XHDTYPE
        f.write(head.tobuf(tarfile.USTAR_FORMAT))
        f.write(f"{record_len} comment=".encode())
        for start in range(0, value, 1 << 20):
            f.write(b" " * min(1 << 20, value - start))
        f.write(b"\n" + b"\0" * (-record_len % 512))
        info = tarfile.TarInfo("ds/annotations.json")
        info.size = 2
        f.write(info.tobuf(tarfile.USTAR_FORMAT) + b"[]" + b"\0" * 510 + b"\0" * 1024)
    return path


def pair_members(tmp: Path) -> dict[str, bytes]:
    return {"f.png": png(), "a.wav": wav(tmp / "a.wav").read_bytes()}


@case(10, "tar.gz: PAX header claiming 1 GiB (64 kB present)")
def pax_claim(tmp):
    import gzip
    import tarfile

    path = tmp / "claim.tar.gz"
    head = tarfile.TarInfo("././@PaxHeader")
    head.size, head.type = 1 << 30, tarfile.XHDTYPE
    with gzip.open(path, "wb") as f:
        f.write(head.tobuf(tarfile.USTAR_FORMAT) + b" " * 65536)
    return outcome(lambda: convert(path, tmp / "out"), "claim.tar.gz", "extended header", "budget")


@case(10, "tar.gz: annotations.json of 100 MiB of spaces")
def annotations_padding(tmp):
    path = folder_archive(tmp / "ws.tar.gz", [{"id": "a", "image": "f.png", "audio": "a.wav", "boxes": BOX}],
                          pair_members(tmp), annotations_size=100 << 20)
    return outcome(lambda: convert(path, tmp / "out"), "annotations.json", "limit")


@case(10, "tar.gz: one flipped byte inside a WAV member")
def flipped_byte(tmp):
    noise = tmp / "noise.wav"
    sf.write(str(noise), np.random.default_rng(0).uniform(-0.5, 0.5, 32000), 16000, subtype="PCM_16")
    path = folder_archive(tmp / "good.tar.gz", [{"id": "a", "image": "f.png", "audio": "n.wav", "boxes": BOX}],
                          {"f.png": png(), "n.wav": noise.read_bytes()})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    bad = tmp / "bad.tar.gz"
    bad.write_bytes(bytes(raw))
    return outcome(lambda: convert(bad, tmp / "out"), "corrupt archive", "bad.tar.gz")


@case(10, "tar.gz: two members named ds/a.wav")
def duplicate_members(tmp):
    import tarfile

    path = tmp / "dup.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        stream_member_bytes(tar, "ds/annotations.json", json.dumps([{"id": "a", "image": "f.png", "audio": "a.wav",
                                                                     "boxes": BOX}]).encode())
        for name, data in pair_members(tmp).items():
            stream_member_bytes(tar, f"ds/{name}", data)
        stream_member_bytes(tar, "ds/./a.wav", wav(tmp / "b.wav", rate=8000).read_bytes())
    return outcome(lambda: convert(path, tmp / "out"), "dup.tar.gz", "more than once")


@case(10, "tar.gz: gzip bomb, 256 MiB of zeros as a video")
def bomb_member(tmp):
    entries = [{"id": "bomb", "video": "v.mp4", "boxes": BOX}, {"id": "ok", "image": "f.png", "audio": "a.wav",
                                                                "boxes": BOX}]
    path = folder_archive(tmp / "bomb.tar.gz", entries, pair_members(tmp), big=(("v.mp4", 256 << 20),))

    def judge(report):
        text = report_text(report)
        return (CLEAR, f"{path.stat().st_size >> 10} kB archive; the member skipped and reported, streamed not held "
                "(memory below)") if "bomb" in text else (SILENT, "not reported")
    return outcome(lambda: convert(path, tmp / "out"), "bomb", judge=judge)


# ------------------------------------------------------ 11. sharded conversions know their shard set; bounds
def pair_folder(tmp: Path, n: int) -> Path:
    return folder(tmp, [{"id": f"s{i}", "image": "f.png", "audio": "a.wav", "boxes": BOX} for i in range(n)])


def part(root: Path, out: Path, num_shards: int, index: int):
    from xpl_hf.data.convert import convert as run

    return run("folder", str(root), str(out), progress=False, num_shards=num_shards, shard_index=index)


@case(11, "one machine's part alone: load_labeled")
def lone_part(tmp):
    from xpl_hf.data.loading import load_labeled

    part(pair_folder(tmp, 12), tmp / "out", 2, 0)
    card = (tmp / "out" / "README.md").exists()
    verdict = outcome(lambda: load_labeled(str(tmp / "out"), "labeled"), "incomplete", "labeled-00001-of-00002",
                      judge=lambda ds: (SILENT, f"returned {len(ds)} of 12 rows"))
    return (SILENT, "a dataset card was written for half a dataset") if card else verdict


@case(11, "a part written with another --num_shards")
def other_part(tmp):
    root, out = pair_folder(tmp, 12), tmp / "out"
    part(root, out, 2, 0)
    before = sorted(p.name for p in (out / "data").iterdir())

    def judge(_):
        after = sorted(p.name for p in (out / "data").iterdir())
        lost = sorted(set(before) - set(after))
        return (SILENT, f"deleted {lost}") if lost else (SILENT, "mixed shard sets written")
    result = outcome(lambda: part(root, out, 3, 1), "--num_shards", "labeled-00000-of-00002", judge=judge)
    after = sorted(p.name for p in (out / "data").iterdir())
    return (SILENT, f"refused but deleted {sorted(set(before) - set(after))}") if set(before) - set(after) else result


@case(11, "--shards_per_split 1000000 on 3 rows")
def many_shards(tmp):
    from xpl_hf.data.convert import main as convert_main

    argv = ["folder", "--input", str(pair_folder(tmp, 3)), "--output", str(tmp / "out"), "--shards_per_split",
            "1000000"]
    return last_line(outcome(command_line(lambda: convert_main(argv)), "--shards_per_split"))


@case(11, "shards_per_split=50 on 3 rows (Python)")
def more_shards_than_rows(tmp):
    from xpl_hf.data.convert import convert as run
    from xpl_hf.data.shards import split_shard_paths

    def judge(_):
        n = len(split_shard_paths(str(tmp / "out"), "labeled"))
        return (REPAIRED, f"{n} shards: at most one per row") if n <= 3 else (SILENT, f"{n} shards for 3 rows")
    return outcome(lambda: run("folder", str(pair_folder(tmp, 3)), str(tmp / "out"), progress=False,
                               shards_per_split=50), judge=judge)


@case(11, "corrupt second shard of a split")
def corrupt_second_shard(tmp):
    from xpl_hf.data.convert import convert as run
    from xpl_hf.data.loading import load_labeled

    run("folder", str(pair_folder(tmp, 4)), str(tmp / "out"), progress=False, shards_per_split=2)
    second = tmp / "out" / "data" / "labeled-00001-of-00002.parquet"
    second.write_bytes(b"PAR1 this is not parquet PAR1")
    return outcome(lambda: load_labeled(str(tmp / "out"), "labeled"), second.name)


def last_line(result: tuple[str, str]) -> tuple[str, str]:
    """A command line's verdict with its message's last line only (the usage text before it says nothing)."""
    return result[0], result[1].strip().splitlines()[-1]


# -------------------------------------------------------------------- 12. converter flags checked before work
def convert_flag(flag_name: str, value: str) -> Callable[[Path], tuple[str, str]]:
    def run(tmp):
        from xpl_hf.data.convert import main as convert_main

        argv = ["folder", "--input", str(pair_folder(tmp, 1)), "--output", str(tmp / "out"), flag_name, value]
        return last_line(outcome(command_line(lambda: convert_main(argv)), f"argument {flag_name}"))
    return run


for _flag, _value in (("--sample_rate", "1e9"), ("--clip_seconds", "1e6"), ("--frames_per_clip", "1000"),
                      ("--frame_time", "nan"), ("--num_workers", "100000")):
    case(12, f"convert {_flag} {_value}")(convert_flag(_flag, _value))


# ------------------------------------------------------------------------- 13. smaller ones; 14. objects column
@case(13, "Space: upload deleted by the 15-minute clean-up")
def upload_gone(tmp):
    import importlib.util

    spec = importlib.util.spec_from_file_location("space_uploads", Path(__file__).resolve().parents[1] / "space" /
                                                  "uploads.py")
    uploads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(uploads)
    read_audio = uploads.read_audio

    gone = tmp / "gradio" / "abc" / "sound.wav"
    verdict = outcome(lambda: read_audio({"path": str(gone)}), "no longer on the server", "sound.wav")
    return (CRASH, f"server path shown: {verdict[1]}") if str(tmp) in verdict[1] else verdict


@case(13, "variable frame rate: frame vs audio centre")
def vfr_frame(tmp):
    from fractions import Fraction

    import av

    from xpl_hf.media import read_video_clip

    path = tmp / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, 1000)
        audio = container.add_stream("aac", rate=16000)
        for t in (0, 100, 200, 1900):  # a 1.7 s gap
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40, np.uint8), "rgb24")
            frame.pts, frame.time_base = t, stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        samples = (0.3 * np.sin(np.arange(32000) / 5.0)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), "fltp", "mono")
            chunk.sample_rate = 16000
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())

    def judge(clip):
        gap = abs(clip.frame_times[0] - clip.time)
        on_screen = clip.frame_times[0] <= clip.time + 1e-3
        return (REPAIRED, f"frame {clip.frame_times[0]:.2f} s on screen at {clip.time:.2f} s") if on_screen else \
            (SILENT, f"frame {gap:.2f} s after the time the sound is centred on")
    return outcome(lambda: read_video_clip(str(path), time=1.0), judge=judge)


@case(13, 'folder: gt_rule "none" with boxes')
def rule_none_with_boxes(tmp):
    root = folder(tmp, [{"id": "x", "image": "f.png", "audio": "a.wav", "boxes": BOX, "gt_rule": "none"},
                        {"id": "ok", "image": "f.png", "audio": "a.wav", "boxes": BOX}])
    return outcome(lambda: convert(root, tmp / "out"), judge=lambda r: (CLEAR, "skipped as bad gt_rule")
                   if "bad gt_rule" in report_text(r) else (SILENT, "written"))


def objects_entries(sounding: Callable[[int], str]) -> list[dict]:
    dog, car = [0.05, 0.1, 0.45, 0.6], [0.55, 0.4, 0.95, 0.9]
    return [{"id": f"t{i}", "image": "f.png", "audio": "a.wav", "split": "test", "boxes": [dog],
             "objects": [{"box": dog, "label": "dog", "sounding": sounding(i) == "dog"},
                         {"box": car, "label": "car", "sounding": sounding(i) == "car"}]} for i in range(4)]


def evaluate_folder(tmp: Path, entries: list[dict]) -> str:
    from xpl_hf.evaluate import main as evaluate_main

    root = folder(tmp, entries)
    convert(root, tmp / "data")
    model_folder(tmp)
    out = io.StringIO()
    stdout, stderr, sys.stdout, sys.stderr = sys.stdout, sys.stderr, out, io.StringIO()  # no progress bars
    try:
        evaluate_main(["--model", str(tmp / "model"), "--dataset", str(tmp / "data"), "--split", "test",
                       "--output_dir", str(tmp / "eval"), "--device", "cpu", "--overlays_per_group", "0"])
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    return out.getvalue()


@case(13, "evaluate: scenes whose objects all stay silent")
def silent_objects(tmp):
    def judge(text):
        return (SILENT, "reported as 'no scene lists its objects'") if "no scene lists its objects" in text else \
            (CLEAR, "note: needs a sounding and a silent object")
    text = evaluate_folder(tmp, objects_entries(lambda i: "none"))  # set-up: the evaluation's own time is not judged
    return outcome(lambda: text, judge=judge)


@case(14, "objects through convert folder + evaluate")
def objects_column(tmp):
    def judge(text):
        return (REPAIRED, "object selection reported") if "Object selection over 4 scenes" in text else \
            (SILENT, "no object selection")
    text = evaluate_folder(tmp, objects_entries(lambda i: "dog" if i % 2 else "car"))
    return outcome(lambda: text, judge=judge)


# ----------------------------------------------------------------------- peak memory of hostile archive reading
MEMORY_SCRIPT = """
import json, resource, sys, threading, time
from xpl_hf.data.convert import convert

def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))

base, peak, running = rss(), [0], [True]

def sample():  # the peak RSS during the conversion itself, every 5 ms
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

thread = threading.Thread(target=sample)
thread.start()
try:
    convert("folder", sys.argv[1], sys.argv[2], progress=False, num_workers=int(sys.argv[3]))
    result = "converted"
except Exception as err:
    result = f"{type(err).__name__}: {err}"
running[0] = False
thread.join()
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"base": base, "peak": peak[0], "children": children, "result": result}))
"""


def memory_table(root: Path) -> None:
    """Peak memory of converting hostile archives, each in a fresh process, against the stated budget."""
    import subprocess

    from xpl_hf.data.convert.archive import MAX_HEADER_BYTES, MEMORY_BUDGET

    root.mkdir(parents=True, exist_ok=True)
    pair = pair_members(root)
    entry = {"image": "f.png", "audio": "a.wav", "boxes": BOX}
    builds = {
        "PAX header of 1 GiB (real bytes)": (lambda p: pax_bomb(p, 1 << 30), 1),
        "annotations.json of 1 GiB of spaces": (lambda p: folder_archive(
            p, [{"id": "a", **entry}], pair, annotations_size=1 << 30), 1),
        "gzip bomb: 3 GiB of zeros as one video": (lambda p: folder_archive(
            p, [{"id": "bomb", "video": "v.mp4", "boxes": BOX}, {"id": "ok", **entry}], pair,
            big=(("v.mp4", 3 << 30),)), 1),
        "8 x 256 MiB audio members, 2 workers": (lambda p: folder_archive(
            p, [{"id": f"a{i}", "image": "f.png", "audio": f"z{i}.wav", "boxes": BOX} for i in range(8)]
            + [{"id": "ok", **entry}], pair, big=tuple((f"z{i}.wav", 256 << 20) for i in range(8))), 2),
    }
    print(f"\nPeak memory of converting hostile archives (fresh process each; budget: {MEMORY_BUDGET >> 20} MiB of "
          f"members in flight, {MAX_HEADER_BYTES >> 20} MiB per extended header). growth: the converting process's "
          "peak RSS during the conversion (sampled every 5 ms) minus its RSS before; child: the largest child "
          "process's peak RSS, which counts the libraries it shares with its parent by fork")
    print(f"{'archive':<42} {'size':>8} {'growth MiB':>10} {'child MiB':>10} {'s':>5}  outcome")
    for index, (name, (build, workers)) in enumerate(builds.items()):
        path = build(root / f"hostile{index}.tar.gz")
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), str(root / f"out{index}"),
                               str(workers)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        seconds = time.perf_counter() - began
        try:
            m = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"{name:<42} {'':>8} {'':>10} {'':>10} {seconds:5.0f}  crashed: {done.stderr.strip()[-200:]}")
            continue
        growth, worker = (m["peak"] - m["base"]) / 1024, m["children"] / 1024
        verdict = "within budget" if growth <= MEMORY_BUDGET >> 20 else "OVER BUDGET"
        print(f"{name:<42} {path.stat().st_size >> 10:>6}kB {growth:>10.0f} {worker:>10.0f} {seconds:5.0f}  "
              f"{verdict}; {' '.join(m['result'].split())[:90]}", flush=True)
        path.unlink()
        shutil.rmtree(root / f"out{index}", ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------- main
def quiet() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> Counter:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="keep every case's inputs under this folder")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory table of hostile archives "
                        "(builds and converts archives claiming several GiB: about a minute, 4 GiB of disk)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet()
    root = Path(args.keep or tempfile.mkdtemp(prefix="hostile-probe-"))
    counts: Counter = Counter()
    start = time.perf_counter()
    print(f"{'class':>5}  {'case':<54} {'outcome':<13} {'s':>5}  detail")
    for index, (klass, name, function) in enumerate(CASES):
        tmp = root / f"case{index:02d}"
        tmp.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        try:
            verdict, detail = function(tmp)
        except Exception as err:  # noqa: BLE001 - the case's own set-up failed: a crash of what it set up
            verdict, detail = CRASH, f"(set-up) {type(err).__name__}: {err}"
        counts[verdict] += 1
        detail = " ".join(str(detail).split())[:110]
        print(f"{klass:>5}  {name:<54} {verdict:<13} {time.perf_counter() - began:5.1f}  {detail}", flush=True)
    print(f"\n{len(CASES)} cases in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{counts[o]} {o}" for o in (CLEAR, REPAIRED, CRASH, SILENT, HOLE)))
    if not args.no_memory:
        memory_table(root / "memory")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return counts


if __name__ == "__main__":
    main()
