"""The Gradio Space (space/app.py): its functions, and the app launched on 127.0.0.1 answering gradio_client calls.

A tiny randomly initialised model (image_size 64) stands in for a trained one: the tests check the plumbing (three
overlays, ρ, timing, messages), not the quality of the maps. Hostile uploads (hours-long audio in a few hundred KB,
videos whose frame cannot be reached cheaply, corrupt files) are refused from their headers, with decoding counted by
a wrapper around PyAV / soundfile rather than timed.
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from media_samples import make_video  # noqa: E402

from xpl_hf import XPLConfig, XPLModel, XPLProcessor  # noqa: E402
from xpl_hf.media import MAX_DECODE_FRAMES  # noqa: E402

APP_PATH = Path(__file__).resolve().parent.parent / "space" / "app.py"


def load_app():
    """Import space/app.py as a module (it is a Space entry point, not part of the package)."""
    if "xpl_space_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("xpl_space_app", APP_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["xpl_space_app"] = module
        spec.loader.exec_module(module)
    return sys.modules["xpl_space_app"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_tiny_model(folder: Path) -> Path:
    config = XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64)
    XPLModel(config).save_pretrained(folder)
    XPLProcessor.from_config(config).save_pretrained(folder)
    return folder


def launch(app, demo) -> str:
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                        **app.launch_kwargs(demo))
    return demo.local_url


def write_wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def write_video(path: Path, image: PIL.Image.Image, seconds: float = 4.0, fps: int = 10, rate: int = 16000,
                keyframe_interval: int | None = None) -> Path:
    """An MP4 (MPEG-4 video + AAC audio) of a still frame with a tone, written with PyAV. With `keyframe_interval`,
    H.264 with exactly that many frames from one keyframe to the next (no scene-cut keyframes)."""
    import av

    frame_rgb = np.asarray(image.convert("RGB").resize((96, 96)))
    with av.open(str(path), "w") as container:
        if keyframe_interval:
            params = f"keyint={keyframe_interval}:min-keyint={keyframe_interval}:scenecut=0"
            video = container.add_stream("libx264", rate=fps, options={"x264-params": params})
        else:
            video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 96, 96, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(seconds * fps)):
            tinted = frame_rgb.copy()
            tinted[..., 0] = np.uint8(i * 255 // int(seconds * fps))  # frames differ: seeking is observable
            for packet in video.encode(av.VideoFrame.from_ndarray(tinted, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        t = np.arange(int(seconds * rate)) / rate
        wave = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
        for start in range(0, len(wave), 1024):
            chunk = wave[start:start + 1024][None]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def write_long_audio(path: Path, container_format: str, codec: str, seconds: float, rate: int = 8000) -> Path:
    """A genuine `seconds`-long silent file in a few hundred KB: one encoded silent packet muxed over and over
    (what a hostile upload can do; no encoding work, so hours cost a fraction of a second)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        packets = []
        for start in range(0, 2 * rate, 1024):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            packets += [bytes(packet) for packet in stream.encode(frame)]
        step = stream.codec_context.frame_size or 1024
        silent = packets[len(packets) // 2]
        for index in range(int(seconds * rate) // step):
            packet = av.Packet(silent)
            packet.stream, packet.time_base = stream, Fraction(1, rate)
            packet.pts = packet.dts = index * step
            container.mux(packet)
    return path


class CountingContainer:
    """Wraps a PyAV container and counts the frames it decodes; raises past `limit` (so a test fails fast)."""

    def __init__(self, container, counter: dict):
        self._container, self._counter = container, counter

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        self._container.__enter__()
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counter["frames"] += 1
            if self._counter["frames"] > self._counter["limit"]:
                raise RuntimeError(f"test: more than {self._counter['limit']} frames decoded")
            yield frame


@pytest.fixture
def decoded(monkeypatch):
    """Counts what the app decodes: PyAV frames (`frames`, at most `limit`) and soundfile reads (`sf_reads`)."""
    import av

    counter = {"frames": 0, "limit": 10_000, "sf_reads": 0}
    real_open, real_read = av.open, sf.SoundFile.read
    monkeypatch.setattr(av, "open", lambda *a, **k: CountingContainer(real_open(*a, **k), counter))

    def counting_read(self, *args, **kwargs):
        counter["sf_reads"] += 1
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", counting_read)
    return counter


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("xpl-output"))


@pytest.fixture(scope="module")
def examples(app, tmp_path_factory):
    return app.make_examples(tmp_path_factory.mktemp("examples"), count=2)


@pytest.fixture(scope="module")
def served(app, model_dir, examples):
    demo = app.build_demo(str(model_dir), examples_dir=Path(examples[0][0]).parent)
    assert demo.xpl_ready
    url = launch(app, demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def server(served):
    return served[1]


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


# --------------------------------------------------------------------------------------------- launched app, client
def test_client_gets_three_overlays_rho_and_time(client, examples):
    jpg, wav, _ = examples[0]
    out = client.predict(handle_file(jpg), handle_file(wav), api_name="/localize")
    assert len(out) == 7
    overlays, confidence, rho, ms, status = out[:3], out[3], out[4], out[5], out[6]
    assert isinstance(confidence, float) and 0.0 < confidence < 1.0 and "**Confidence " in status
    for path in overlays:
        with PIL.Image.open(path) as im:
            assert im.size == (224, 224) and im.mode == "RGB"  # drawn on the frame at its own size
    assert isinstance(rho, float) and -1.0 <= rho <= 1.0
    assert ms > 0
    assert "Consensus ρ" in status and "ms" in status


def test_client_bad_inputs_get_clear_messages(client, examples, tmp_path):
    jpg, wav, _ = examples[0]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    long_wav = write_wav(tmp_path / "long.wav", 61.0, rate=8000)
    cases = [
        ((corrupt, wav), "Could not read the image"),
        ((jpg, text), "Could not read the audio"),
        ((jpg, long_wav), r"61\.0 s long; the limit is 60 s"),
        ((None, wav), "Please add an image"),
        ((jpg, None), "Please add a sound"),
    ]
    for (image, audio), message in cases:
        args = [handle_file(str(p)) if p is not None else None for p in (image, audio)]
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/localize")
    # the server is still up and answers a good pair after all that
    assert len(client.predict(handle_file(jpg), handle_file(wav), api_name="/localize")) == 7


def test_client_video(app, client, examples, tmp_path):
    if not app.HAVE_AV:
        pytest.fail("PyAV (`av`) is not installed: the Space's video input needs it (pip install av).")
    video = write_video(tmp_path / "clip.mp4", PIL.Image.open(examples[0][0]))
    out = client.predict(handle_file(str(video)), 1.5, api_name="/localize_video")
    assert len(out) == 7 and 0.0 < out[3] < 1.0 and -1.0 <= out[4] <= 1.0
    assert "frame at 1.50 s" in out[6]
    with pytest.raises(AppError, match="Could not read the video"):
        client.predict(handle_file(examples[0][1]), 0.0, api_name="/localize_video")


def test_no_model_shows_notice_and_runs_nothing(app, tmp_path, monkeypatch, examples):
    for var in ("XPL_MODEL_ID", "XPL_MODEL_DIR"):
        monkeypatch.delenv(var, raising=False)
    demo = app.build_demo(str(tmp_path / "xpl-output"), examples_dir=Path(examples[0][0]).parent)
    assert not demo.xpl_ready
    url = launch(app, demo)
    try:
        with urllib.request.urlopen(url + "config", timeout=10) as response:
            config = json.loads(response.read())
        markdown = [c["props"].get("value") for c in config["components"] if c.get("type") == "markdown"]
        notice = next(m for m in markdown if m and "No trained model found" in m)
        assert "does not exist" in notice and "python space/app.py --model xpl-output" in notice
        buttons = [c["props"] for c in config["components"] if c.get("type") == "button"]
        assert buttons and not any(b.get("interactive") for b in buttons)
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="No trained model"):
            client.predict(handle_file(examples[0][0]), handle_file(examples[0][1]), api_name="/localize")
    finally:
        demo.close()


# ------------------------------------------------------------------------------------------------- plain functions
def test_model_lookup(app, tmp_path, monkeypatch, model_dir):
    monkeypatch.setenv("XPL_MODEL_ID", "org/some-model")
    monkeypatch.setenv("XPL_MODEL_DIR", str(tmp_path))
    sources = app.candidate_sources()
    assert sources[:2] == ["org/some-model", str(tmp_path)] and "xpl-output" in sources
    assert app.candidate_sources("my/folder") == ["my/folder"]  # an explicit model is the only candidate
    (tmp_path / "checkpoints" / "checkpoint_1").mkdir(parents=True)
    with pytest.raises(app.ModelNotFound, match="training has not finished"):
        app.load_model(str(tmp_path))
    shutil.copytree(model_dir, tmp_path / "best")  # train_xpl.py's best-so-far model while training runs
    assert "training has not finished" in app.load_model(str(tmp_path)).description
    with pytest.raises(app.ModelNotFound, match="does not exist"):
        app.load_model(str(tmp_path / "nope"))
    loaded = app.load_model(str(model_dir))
    assert loaded.processor.image_size == 64 and not loaded.model.training
    assert "resnet18 + vggish" in loaded.description


def test_localize_and_overlay(app, model_dir, examples):
    loaded = app.load_model(str(model_dir))
    image = app.read_image(examples[0][0])
    waveform, rate = app.read_audio(examples[0][1], loaded.processor.clip_seconds)
    result = app.localize(loaded, image, waveform, rate)
    # maps at the displayed frame's size, as XPLProcessor.post_process_localization gives them
    assert result.map_a.shape == result.map_b.shape == result.map_fused.shape == (224, 224)
    assert result.map_fused.min() == 0.0 and result.map_fused.max() == 1.0
    assert result.overlay_fused.size == (224, 224) and -1.0 <= result.rho <= 1.0
    # a large frame is shown at DISPLAY_SIDE; the hot colour (red) sits where the model's map peaks
    big = PIL.Image.new("RGB", (1000, 600), "gray")
    result = app.localize(loaded, big, waveform, rate)
    overlay = np.asarray(result.overlay_fused, dtype=int)
    assert overlay.shape == (307, 512, 3) and result.map_fused.shape == (307, 512)
    hot = np.unravel_index(result.map_fused.argmax(), result.map_fused.shape)
    cold = np.unravel_index(result.map_fused.argmin(), result.map_fused.shape)
    assert overlay[hot][0] > overlay[hot][2] and overlay[cold][2] > overlay[cold][0]
    assert not hasattr(app, "heatmap_overlay")  # one overlay rule: xpl_hf.visualization.overlay_heatmap


def test_confidence_beside_the_maps_and_plain_words_when_low(app, model_dir, examples):
    """The page shows post-processing's confidence; below 0.5 it says in words that no source was found."""
    loaded = app.load_model(str(model_dir))
    image = app.read_image(examples[0][0])
    waveform, rate = app.read_audio(examples[0][1], loaded.processor.clip_seconds)
    result = app.localize(loaded, image, waveform, rate)
    batch = loaded.processor(images=image, audio=waveform, sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        expected = loaded.processor.post_process_localization(loaded.model(**batch))[0]
    assert (result.confidence, result.confidence_a, result.confidence_b) == pytest.approx(
        (expected["confidence"], expected["confidence_a"], expected["confidence_b"]), abs=1e-6)
    low = dataclasses.replace(result, confidence=0.2, confidence_a=0.1, confidence_b=0.3)
    high = dataclasses.replace(result, confidence=0.8, confidence_a=0.7, confidence_b=0.9)
    assert "No source of this sound found in the frame" in app.summary_markdown(low)
    assert "**Confidence 0.20** (A 0.10, B 0.30" in app.summary_markdown(low)
    assert "No source" not in app.summary_markdown(high) and "**Confidence 0.80**" in app.summary_markdown(high)
    demo = app.build_demo(loaded)
    labels = {c.elem_id: c.label for c in demo.blocks.values() if getattr(c, "elem_id", None)}
    assert labels["map-a"] == f"Branch {loaded.model.config.branch_label('a')}" == "Branch A (VGGish)"
    assert labels["confidence"].startswith("Confidence")


def test_input_limits(app, tmp_path):
    wide = tmp_path / "wide.png"
    PIL.Image.new("RGB", (4097, 8)).save(wide)
    with pytest.raises(app.InputError, match="limit is 4096 px"):
        app.read_image(str(wide))
    tiny = tmp_path / "tiny.png"
    PIL.Image.new("RGB", (4, 4)).save(tiny)
    with pytest.raises(app.InputError, match="at least 8 px"):
        app.read_image({"path": str(tiny)})
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(app.InputError, match="empty"):
        app.read_audio(str(empty))
    rgba = tmp_path / "rgba.png"
    PIL.Image.new("RGBA", (20, 10)).save(rgba)
    assert app.read_image(str(rgba)).mode == "RGB"
    stereo = tmp_path / "stereo.flac"
    sf.write(stereo, np.zeros((48000, 2), np.float32), 48000)
    waveform, rate = app.read_audio(str(stereo))
    assert rate == 48000 and waveform.shape[0] == 2


def test_read_video_frame_and_audio(app, tmp_path, examples):
    if not app.HAVE_AV:
        pytest.fail("PyAV (`av`) is not installed: the Space's video input needs it (pip install av).")
    video = write_video(tmp_path / "clip.mp4", PIL.Image.open(examples[0][0]))
    assert app.video_duration(str(video)) == pytest.approx(4.0, abs=0.3)
    early, audio, rate, used = app.read_video(str(video), 0.0)
    late, _, _, used_late = app.read_video(str(video), 3.5)
    assert early.size == (96, 96) and used == 0.0 and used_late == pytest.approx(3.5)
    assert np.asarray(late)[..., 0].mean() > np.asarray(early)[..., 0].mean() + 100  # a later frame was decoded
    assert rate == 16000 and audio.shape == (1, math.ceil(3.1 * rate))  # the clip and the processor's margin
    with pytest.raises(app.InputError, match="The time 99 s is past the end of the video 'clip.mp4'"):
        app.read_video(str(video), 99.0)


@pytest.mark.parametrize("time_s", [math.nan, math.inf, -1.0, "soon"])
def test_bad_video_times_blame_the_time_not_the_file(app, tmp_path, examples, time_s):
    video = write_video(tmp_path / "clip.mp4", PIL.Image.open(examples[0][0]), seconds=1.0)
    with pytest.raises(app.InputError, match="The time") as info:
        app.read_video(str(video), time_s)
    assert "corrupt" not in str(info.value) and "not a supported" not in str(info.value)


def write_playlist(folder: Path, name: str, target: Path) -> Path:
    """A text file in HLS playlist syntax naming `target`: what a hostile upload named `x.m3u8` holds."""
    path = folder / name
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n")
    return path


def test_uploaded_playlist_cannot_read_a_server_file(app, tmp_path, examples, decoded):
    """Issue 18.1: an uploaded `x.m3u8` naming a file on the server must not show that file's frame or sound (an
    MPEG-TS file, which FFmpeg's HLS demuxer reads as a segment: the app decoded it before xpl_hf.media)."""
    secret = make_video(tmp_path / "server-secret.ts", seconds=4.0, size=(96, 96), container_format="mpegts")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    for name in ("x.m3u8", "x.m3u", "x.mp4"):
        playlist = write_playlist(uploads, name, secret)
        with pytest.raises(app.InputError, match=f"Could not read the video '{name}'"):
            app.read_video(str(playlist), 0.5)
        with pytest.raises(app.InputError, match=f"Could not read the audio '{name}'"):
            app.read_audio(str(playlist))
        assert app.video_duration(str(playlist)) == 0.0
    concat = uploads / "concat.mp4"
    concat.write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    with pytest.raises(app.InputError, match="Could not read the video 'concat.mp4'"):
        app.read_video(str(concat), 0.5)
    assert decoded["frames"] == 0  # nothing of the server's file was decoded


def test_client_playlist_upload_is_refused(client, app, tmp_path):
    secret = make_video(tmp_path / "server-secret.ts", seconds=4.0, size=(96, 96), container_format="mpegts")
    playlist = write_playlist(tmp_path, "x.m3u8", secret)
    with pytest.raises(AppError, match="refused 'x.m3u8'"):
        client.predict(handle_file(str(playlist)), 0.5, api_name="/localize_video")


def test_api_outputs_are_named(client):
    """Every output of the API has a label (Gradio names unlabelled ones `value_<id>`)."""
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for name in ("/localize", "/localize_video"):
        labels = [item["label"] for item in endpoints[name]["returns"]]
        assert len(labels) == 7 and not any(str(label).startswith("value_") for label in labels), labels
        assert "Summary" in labels


def test_launch_message_names_the_share_flag(app, served, monkeypatch):
    demo, _ = served
    monkeypatch.delenv("SPACE_ID", raising=False)
    text = app.launch_message(demo)
    assert demo.local_url in text and "--share" in text and "share=True" not in text


# ---------------------------------------------------------------------------------------------- hostile uploads
@pytest.mark.parametrize("name,container_format,codec", [
    ("long.aac", "adts", "aac"),  # raw AAC: PyAV
    ("long.m4a", "mp4", "aac"),  # MPEG-4 audio: PyAV
    ("long.ogg", "ogg", "libopus"),  # soundfile
    ("long.mp3", "mp3", "libmp3lame"),  # soundfile
])
def test_hours_of_audio_refused_before_decoding(app, tmp_path, decoded, name, container_format, codec):
    path = write_long_audio(tmp_path / name, container_format, codec, seconds=2 * 3600)
    assert path.stat().st_size < 8 * 1024 * 1024  # under the upload cap: only the duration can stop it
    decoded["limit"] = 50
    with pytest.raises(app.InputError, match=r"is 7[12]\d\d\.\d s long; the limit is 60 s"):
        app.read_audio(str(path))
    assert decoded["frames"] == 0 and decoded["sf_reads"] == 0  # refused from the headers


def test_only_the_audio_window_is_decoded(app, tmp_path, decoded):
    path = write_long_audio(tmp_path / "minute.m4a", "mp4", "aac", seconds=50)  # 390 AAC frames of 1024 samples
    waveform, rate = app.read_audio(str(path), clip_seconds=3.0)
    assert rate == 8000 and waveform.shape == (1, math.ceil(3.1 * 8000))
    assert decoded["frames"] < 40  # the 3.1 s around the middle (about 25 frames) and the frames before a seek point


def test_video_frame_search_is_capped(app, tmp_path, decoded, examples):
    """One keyframe then 749 predicted frames: reaching 29 s would decode 725 frames; the app stops at its cap."""
    video = write_video(tmp_path / "one-keyframe.mp4", PIL.Image.open(examples[0][0]), seconds=30.0, fps=25,
                        keyframe_interval=10_000)
    with pytest.raises(app.InputError, match="cannot reach the frame at 29.000 s"):
        app.read_video(str(video), 29.0)
    assert decoded["frames"] <= MAX_DECODE_FRAMES
    decoded["frames"] = 0
    frame, audio, rate, used = app.read_video(str(video), 0.5)  # close to the keyframe: fine
    assert used == 0.5 and frame.size == (96, 96) and audio.shape == (1, math.ceil(3.1 * rate))
    assert decoded["frames"] < 100  # about 13 video frames and the 3 s of audio (about 50 AAC frames)


def test_messages_never_show_server_paths(app, tmp_path, client):
    deep = tmp_path / "server-private" / "upload-1234"
    deep.mkdir(parents=True)
    cases = {"clip.m4a": app.read_audio, "clip.mp4": lambda p: app.read_video(p, 0.0), "clip.png": app.read_image}
    for name, reader in cases.items():
        (deep / name).write_bytes(b"\x00\x01 not a media file at all " * 64)
        with pytest.raises(app.InputError) as info:
            reader(str(deep / name))
        message = str(info.value)
        assert f"'{name}'" in message and "server-private" not in message and str(tmp_path) not in message, message
    assert app.strip_paths("Invalid data: '/tmp/gradio/abc/clip.m4a' (see /var/x/y.log)") == \
        "Invalid data: 'clip.m4a' (see y.log)"
    # through the running app: the message names the file, not Gradio's cache folder
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(deep / "clip.png")), handle_file(str(deep / "clip.m4a")), api_name="/localize")
    assert "clip.png" in str(info.value) and tempfile.gettempdir() + "/" not in str(info.value)


def test_uploads_are_deleted(app, served, client, tmp_path):
    from gradio.route_utils import delete_files_created_by_app

    demo, _ = served
    frequency, age = demo.delete_cache
    assert (frequency, age) == app.DELETE_CACHE and 0 < frequency <= age <= 3600
    rng = np.random.default_rng()  # fresh content: Gradio's cache paths are content hashes
    PIL.Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "mine.png")
    sf.write(tmp_path / "mine.wav", rng.uniform(-0.5, 0.5, 16000).astype(np.float32), 16000)
    client.predict(handle_file(str(tmp_path / "mine.png")), handle_file(str(tmp_path / "mine.wav")),
                   api_name="/localize")
    uploads = [Path(f) for f in demo.upload_file_set if Path(f).name in ("mine.png", "mine.wav")]
    assert len(uploads) == 2 and all(f.is_file() for f in uploads)
    delete_files_created_by_app(demo, age=0)  # what the schedule set by delete_cache runs every `frequency` s
    assert not any(f.exists() for f in uploads)


def test_space_sees_the_training_pixels(app, tmp_path):
    """A large JPEG reaches the model as training decodes it (reduced scale), and a phone photo stands upright."""
    from xpl_hf.data.transforms import XPLCollator

    processor = XPLProcessor(image_size=64, clip_seconds=1.0)
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored sideways
    PIL.Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo, quality=90,
                                                                                  exif=exif.tobytes())
    image = app.read_image(str(photo), processor.image_size)
    assert image.width < image.height  # upright: 300 wide, 400 high at full scale
    wav = tmp_path / "sound.wav"
    write_wav(wav, 1.0)
    row = {"id": "photo", "image": {"bytes": photo.read_bytes(), "path": None},
           "audio": {"bytes": wav.read_bytes(), "path": None}, "boxes": [], "gt_rule": "union"}
    training = XPLCollator(processor, train=False)([row])["pixel_values"]
    assert torch.equal(processor(images=image)["pixel_values"], training)
