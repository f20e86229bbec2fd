"""The `audio-visual-source-localization` pipeline: saved with the model (code + config entry), loaded with
`pipeline(..., trust_remote_code=True)` from another directory, offline, running the folder's own code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import soundfile as sf
import torch
from transformers import pipeline

from xpl_hf import PIPELINE_TASK, XPLConfig, XPLModel, XPLProcessor, save_pretrained_with_pipeline
from xpl_hf.maps import branch_confidences

TINY = dict(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    config = XPLConfig(**TINY)
    return XPLModel(config).eval(), XPLProcessor.from_config(config)


@pytest.fixture(scope="module")
def saved(model_and_processor, tmp_path_factory):
    """A model folder written by save_pretrained_with_pipeline, plus a 640 x 480 frame and a 2 s WAV."""
    root = tmp_path_factory.mktemp("pipeline")
    model, processor = model_and_processor
    save_pretrained_with_pipeline(model, processor, root / "xpl-output")
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(root / "frame.jpg")
    t = np.arange(32000) / 16000
    sf.write(root / "sound.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return root


def test_saved_folder_carries_the_pipeline(saved):
    folder = saved / "xpl-output"
    config = json.loads((folder / "config.json").read_text())
    entry = config["custom_pipelines"][PIPELINE_TASK]
    assert entry["impl"] == "pipeline_xpl.AudioVisualSourceLocalizationPipeline" and entry["pt"] == ["AutoModel"]
    for name in ("pipeline_xpl.py", "processing_xpl.py", "modeling_xpl.py", "maps.py", "model.safetensors",
                 "preprocessor_config.json"):
        assert (folder / name).is_file(), name


def test_pipeline_offline_from_another_directory(saved, tmp_path):
    """A fresh interpreter in an unrelated directory: only the folder's code runs (xpl_hf is never imported)."""
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import pipeline
        localizer = pipeline("audio-visual-source-localization", model={str(saved / "xpl-output")!r},
                             trust_remote_code=True)
        result = localizer(image={str(saved / "frame.jpg")!r}, audio={str(saved / "sound.wav")!r})
        many = localizer([{{"image": {str(saved / "frame.jpg")!r}, "audio": {str(saved / "sound.wav")!r}}}] * 2,
                         threshold=None)
        print(json.dumps({{
            "shapes": {{k: list(result[k].shape) for k in ("map", "map_a", "map_b")}},
            "range": [float(result["map"].min()), float(result["map"].max())],
            "box": result["box"], "consensus": result["consensus"],
            "many": [sorted(r) for r in many],
            "modules": [type(localizer).__module__, type(localizer.model).__module__,
                        type(localizer.processor).__module__],
            "xpl_hf_imported": any(name == "xpl_hf" or name.startswith("xpl_hf.") for name in sys.modules),
        }}))
    """)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shapes"] == {"map": [480, 640], "map_a": [480, 640], "map_b": [480, 640]}  # the frame's own size
    assert out["range"] == [0.0, 1.0]
    x0, y0, x1, y1 = out["box"]
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
    assert -1.0 <= out["consensus"] <= 1.0
    assert out["many"] == [["confidence", "confidence_a", "confidence_b", "consensus", "map", "map_a", "map_b"]] * 2
    # (threshold=None: no box)
    assert all(module.startswith("transformers_modules.") for module in out["modules"]), out["modules"]
    assert not out["xpl_hf_imported"]


def test_folder_needs_trust_remote_code(saved):
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline(PIPELINE_TASK, model=str(saved / "xpl-output"))


def test_in_process_with_arrays(model_and_processor):
    model, processor = model_and_processor
    localizer = pipeline(PIPELINE_TASK, model=model, processor=processor, device="cpu")
    image = np.zeros((30, 50, 3), np.uint8)
    waveform = np.zeros(8000, np.float32)
    result = localizer(image=image, audio=waveform, sampling_rate=8000, threshold=0.9)
    assert result["map"].shape == (30, 50) and result["box"] is not None
    # the same pair as a dict with its own rate, as `datasets` gives audio
    same = localizer({"image": image, "audio": {"array": waveform, "sampling_rate": 8000}}, threshold=0.9)
    assert torch.equal(same["map"], result["map"]) and same["box"] == result["box"]
    with torch.no_grad():
        direct = model(**processor(images=image, audio=waveform, sampling_rate=8000))
    expected = processor.post_process_localization(direct, target_sizes=[(30, 50)])[0]
    assert torch.allclose(result["map_b"], expected["map_b"]) and result["consensus"] == pytest.approx(
        expected["consensus"])
    # the confidence: the mean of the top quarter of each branch's probability map, fused = their mean
    confidences = branch_confidences(direct.maps_a, direct.maps_b)
    for key, branch in (("confidence", "fused"), ("confidence_a", "a"), ("confidence_b", "b")):
        assert result[key] == pytest.approx(float(confidences[branch][0]))
    assert 0.0 < result["confidence"] < 1.0


def test_bad_calls(model_and_processor, tmp_path):
    model, processor = model_and_processor
    localizer = pipeline(PIPELINE_TASK, model=model, processor=processor, device="cpu")
    with pytest.raises(ValueError, match="both `image=` and `audio=`"):
        localizer(image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="'image' and 'audio'"):
        localizer({"image": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(TypeError, match="unknown option"):
        localizer(image=np.zeros((8, 8, 3), np.uint8), audio=np.zeros(800), sampling_rate=8000, treshold=0.5)
    with pytest.raises(ValueError, match="does not exist"):
        localizer(image=np.zeros((8, 8, 3), np.uint8), audio=str(tmp_path / "missing.wav"))


def test_processor_found_next_to_the_model(saved):
    """Without `processor=`, the pipeline loads the one saved with the model (here clip_seconds = 1.0)."""
    model = XPLModel.from_pretrained(saved / "xpl-output")
    localizer = pipeline(PIPELINE_TASK, model=model, device="cpu")
    assert localizer.processor.clip_seconds == 1.0 and localizer.processor.image_size == 64
    assert Path(model.name_or_path) == saved / "xpl-output"


def test_saving_during_training_leaves_the_model_alone(tmp_path):
    """Training saves its best model mid-run: the save neither moves the model nor switches it to eval mode."""
    model = XPLModel(XPLConfig(**TINY)).train()
    save_pretrained_with_pipeline(model, XPLProcessor.from_config(model.config), tmp_path)
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert (tmp_path / "pipeline_xpl.py").is_file()


def test_video_input(model_and_processor, tmp_path):
    """`video=` (path, bytes) with `time=`: the frame and the sound around it, maps at the frame's size."""
    from media_samples import make_video

    from xpl_hf.media import MediaError, read_video_clip

    model, processor = model_and_processor
    localizer = pipeline(PIPELINE_TASK, model=model, processor=processor, device="cpu")
    video = make_video(tmp_path / "clip.mp4", seconds=3.0, size=(80, 48))
    result = localizer(video=str(video), time=1.0)
    assert result["map"].shape == (48, 80) and result["time"] == 1.0
    for seconds in (np.float32(1.0), np.int64(1)):  # numpy scalars are times too
        assert torch.equal(localizer(video=str(video), time=seconds)["map"], result["map"])
    with pytest.raises(ValueError, match=r"time=True: expected a time in seconds .* not a bool"):
        localizer(video=str(video), time=True)  # not read as 1 s
    with pytest.raises(ValueError, match="not a str"):
        localizer({"video": str(video), "time": "1.0"})
    assert localizer(video=video.read_bytes())["time"] == pytest.approx(1.5, abs=0.05)  # default: the middle
    clip = read_video_clip(video, time=1.0, clip_seconds=processor.clip_seconds + 0.1)
    same = localizer(image=clip.frames[0], audio=clip.audio, sampling_rate=clip.sampling_rate)
    assert torch.equal(same["map"], result["map"])
    silent = make_video(tmp_path / "silent.mp4", audio=False)
    with pytest.raises(ValueError, match="no audio stream; pass its sound as `audio=`"):
        localizer(video=str(silent))
    assert localizer(video=str(silent), audio=np.zeros(8000, np.float32), sampling_rate=8000)["map"].shape == (24, 32)
    playlist = tmp_path / "x.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\n{video}\n#EXT-X-ENDLIST\n")
    with pytest.raises(MediaError, match="refused 'x.m3u8'"):
        localizer(video=str(playlist))
    with pytest.raises(MediaError, match="time=nan"):
        localizer(video=str(video), time=float("nan"))
    with pytest.raises(ValueError, match="`time=` goes with `video=`"):
        localizer(image=clip.frames[0], audio=clip.audio, sampling_rate=16000, time=1.0)


def test_pipeline_sees_the_training_pixels_of_a_large_jpeg(model_and_processor, tmp_path):
    """Issue 18.9: a 1024 px JPEG reached the model 1.56 grey levels apart on the pipeline and training paths (the
    pipeline decoded it at full size, training at the reduced scale); both now decode it the same way."""
    from xpl_hf.data.transforms import XPLCollator

    model, processor = model_and_processor
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:1024, 0:1024]
    photo = np.clip(128 + 90 * np.sin(x / 41.0)[..., None] * np.cos(y / 29.0)[..., None]
                    + rng.normal(0, 25, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    PIL.Image.fromarray(photo).save(path, quality=90)
    wav = tmp_path / "sound.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    localizer = pipeline(PIPELINE_TASK, model=model, processor=processor, device="cpu")
    features = localizer.preprocess({"image": str(path), "audio": str(wav)})
    row = {"id": "photo", "image": {"bytes": path.read_bytes(), "path": None},
           "audio": {"bytes": wav.read_bytes(), "path": None}, "boxes": [], "gt_rule": "union"}
    training = XPLCollator(processor, train=False)([row])["pixel_values"]
    assert torch.equal(features["pixel_values"], training)
    assert features["target_size"] == (1024, 1024)  # maps still drawn at the photo's full size


def test_a_processor_for_other_inputs_is_refused(saved):
    """A processor built for another image size gave maps of the wrong size without a word."""
    model = XPLModel.from_pretrained(saved / "xpl-output")
    other = XPLProcessor.from_config(XPLConfig(**{**model.config.to_dict(), "image_size": 128}))
    with pytest.raises(ValueError, match="image_size"):
        pipeline(PIPELINE_TASK, model=model, processor=other, device="cpu")


def test_float16_folder_runs_on_cpu(model_and_processor, tmp_path):
    """The README's call on a folder saved in float16 (a GPU run): pipeline() loads it with dtype="auto", i.e. in
    float16; on the CPU the pipeline runs it in float32 (float32 inputs met float16 weights and crashed). With an
    explicit dtype=torch.float16 it keeps float16 and casts the inputs."""
    model, processor = model_and_processor
    folder = tmp_path / "fp16-output"
    half = XPLModel(model.config)
    half.load_state_dict(model.state_dict())
    save_pretrained_with_pipeline(half.half(), processor, folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    script = textwrap.dedent(f"""
        import json
        import numpy as np
        import torch
        from transformers import pipeline
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)
        audio = (0.1 * rng.standard_normal(8000)).astype(np.float32)
        out = {{}}
        for name, kwargs in (("default", {{}}), ("float16", {{"dtype": torch.float16}})):
            localizer = pipeline("audio-visual-source-localization", model={str(folder)!r}, trust_remote_code=True,
                                 device="cpu", **kwargs)
            result = localizer(image=image, audio=audio, sampling_rate=8000)
            out[name] = [str(localizer.model.dtype), list(result["map"].shape), result["confidence"]]
        print(json.dumps(out))
    """)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["default"][:2] == ["torch.float32", [30, 50]]
    assert out["float16"][:2] == ["torch.float16", [30, 50]]
    assert out["float16"][2] == pytest.approx(out["default"][2], abs=2e-3)
    assert "running it in float32" in done.stderr
