"""xpl_hf.media: the one safe way to open a user's media; the clips come from tests/media_samples.py."""

from __future__ import annotations

import io
import math
import tarfile

import numpy as np
import pytest
import soundfile as sf
from media_samples import dominant_hz, frame_level, make_video, tone_hz, tone_samples

from xpl_hf import media
from xpl_hf.media import ALLOWED_FORMATS, MediaError, open_media, probe_video, read_audio_window, read_video_clip


@pytest.fixture(scope="module")
def server_file(tmp_path_factory):
    """A server-side MPEG-TS clip: FFmpeg's HLS demuxer reads it as a playlist segment."""
    return make_video(tmp_path_factory.mktemp("server") / "secret.ts", container_format="mpegts")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """4 s, 10 fps, 32 x 24 mpeg4 + mono AAC at 16 kHz."""
    return make_video(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=4.0)


def grey(image) -> float:
    return float(np.asarray(image)[-4:, -4:].mean())  # away from the red corner


def test_probe_reads_the_headers(clip):
    info = probe_video(clip)
    assert (info.width, info.height, info.fps, info.has_video, info.has_audio) == (32, 24, 10.0, True, True)
    assert (info.audio_rate, info.audio_channels, info.rotation) == (16000, 1, 0)
    assert info.duration_s == pytest.approx(4.0, abs=0.1)
    assert "mp4" in info.format_name.split(",")


def test_middle_frame_and_its_audio_window(clip):
    out = read_video_clip(clip, clip_seconds=1.0)
    assert out.time == pytest.approx(probe_video(clip).duration_s / 2)
    assert len(out.frames) == 1 and out.frames[0].mode == "RGB" and out.frames[0].size == (32, 24)
    assert out.frame_times[0] == pytest.approx(2.0, abs=0.051)
    assert grey(out.frames[0]) == pytest.approx(frame_level(20, 40), abs=6)
    assert out.sampling_rate == 16000 and out.audio.dtype == np.float32 and out.audio.shape == (16000,)


def test_chosen_time_picks_that_frame_and_sound(clip):
    out = read_video_clip(clip, time=1.5, clip_seconds=0.8)  # sound window [1.1, 1.9): second 1
    assert grey(out.frames[0]) == pytest.approx(frame_level(15, 40), abs=6)
    assert dominant_hz(out.audio, 16000) == pytest.approx(tone_hz(1), abs=5)
    late = read_video_clip(clip, time=3.5, clip_seconds=0.8)
    assert dominant_hz(late.audio, 16000) == pytest.approx(tone_hz(3), abs=5)


def test_audio_window_is_the_files_samples(tmp_path):
    """PCM in Matroska: the window is exactly the stored samples around the time, at the file's own rate."""
    path = make_video(tmp_path / "pcm.mkv", seconds=3.0, rate=22050, acodec="pcm_s16le", container_format="matroska")
    out = read_video_clip(path, time=1.0, clip_seconds=1.0)
    reference = np.round(tone_samples(3.0, 22050) * 32767) / 32768
    assert out.sampling_rate == 22050 and out.audio.shape == (22050,)
    np.testing.assert_allclose(out.audio, reference[11025:33075], atol=1e-4)


def test_stereo_is_averaged_to_mono(tmp_path):
    path = make_video(tmp_path / "stereo.mp4", channels=2)
    out = read_video_clip(path, clip_seconds=1.0)
    assert probe_video(path).audio_channels == 2 and out.audio.ndim == 1


def test_window_near_the_ends_stays_inside_the_file(clip):
    out = read_video_clip(clip, time=0.0, clip_seconds=1.0)
    assert out.audio.shape == (16000,) and dominant_hz(out.audio, 16000) == pytest.approx(tone_hz(0), abs=5)
    assert grey(out.frames[0]) == pytest.approx(frame_level(0, 40), abs=6)
    end = read_video_clip(clip, time=4.0, clip_seconds=1.0)  # exactly the duration: the last frame
    assert grey(end.frames[0]) == pytest.approx(frame_level(39, 40), abs=6)


def test_several_frames_spread_around_the_time(clip):
    out = read_video_clip(clip, time=2.0, num_frames=3, frame_spacing=0.5)
    assert out.frame_times == pytest.approx([1.5, 2.0, 2.5], abs=0.051)
    assert [grey(f) for f in out.frames] == pytest.approx([frame_level(k, 40) for k in (15, 20, 25)], abs=6)
    edge = read_video_clip(clip, time=0.1, num_frames=3, frame_spacing=1.0)  # kept inside the video
    assert min(edge.frame_times) >= 0 and len(edge.frames) == 3


def test_variable_frame_rate_stores_the_frame_on_screen_at_the_audio_centre(tmp_path):
    """Frames at 0.75 s and 1.6 s: at 1.0 s (where the sound is centred) the 0.75 s frame is on screen, not the next
    one 0.6 s later."""
    times = [0.0, 0.05, 0.1, 0.7, 0.75, 1.6, 1.9]
    path = make_video(tmp_path / "vfr.mp4", seconds=2.0, frame_times=times)
    out = read_video_clip(path, time=1.0, clip_seconds=1.0)
    assert out.time == 1.0 and out.frame_times[0] == pytest.approx(0.75, abs=0.01)
    assert grey(out.frames[0]) == pytest.approx(frame_level(4, len(times)), abs=6)
    assert read_video_clip(path, time=1.6).frame_times[0] == pytest.approx(1.6, abs=0.01)  # a frame at the time
    spread = read_video_clip(path, time=1.0, num_frames=3, frame_spacing=0.5)  # 0.5, 1.0, 1.5 s
    assert spread.frame_times == pytest.approx([0.1, 0.75, 0.75], abs=0.01)


def test_rotation_from_the_display_matrix_is_applied(tmp_path):
    path = make_video(tmp_path / "rotated.mp4", size=(32, 24), rotation=90)
    assert probe_video(path).rotation == 90
    frame = np.asarray(read_video_clip(path, time=0.5).frames[0])
    assert frame.shape[:2] == (32, 24)  # portrait: turned a quarter counter-clockwise, as players show it
    assert frame[-2, 2, 0] > 200 and frame[-2, 2, 1] < 80  # the red top-left corner is now bottom-left
    assert frame[2, 2, 1] > 60  # and no longer top-left (grey there)


@pytest.mark.parametrize("degrees, corner", [(0, (0, 0)), (90, (-1, 0)), (180, (-1, -1)), (270, (0, -1))])
def test_apply_rotation(degrees, corner):
    import PIL.Image

    picture = np.zeros((4, 6, 3), np.uint8)
    picture[0, 0] = 255
    out = np.asarray(media.apply_rotation(PIL.Image.fromarray(picture), degrees))
    assert out[corner].tolist() == [255, 255, 255]


def test_odd_frame_size(tmp_path):
    path = make_video(tmp_path / "odd.mp4", size=(97, 61))
    out = read_video_clip(path)
    assert out.frames[0].size == (97, 61) and probe_video(path).width == 97


def test_no_audio_stream_gives_none(tmp_path):
    path = make_video(tmp_path / "silent.mp4", audio=False)
    out = read_video_clip(path)
    assert out.audio is None and out.sampling_rate is None and len(out.frames) == 1
    with pytest.raises(MediaError, match="no audio stream") as err:
        read_audio_window(path, seconds=1.0)
    assert err.value.reason == "no audio"


def test_audio_only_file(tmp_path):
    path = make_video(tmp_path / "sound.m4a", video=False, seconds=3.0)
    with pytest.raises(MediaError, match="no video stream") as err:
        read_video_clip(path)
    assert err.value.reason == "no video"
    samples, rate = read_audio_window(path, seconds=1.0)
    assert rate == 16000 and samples.shape == (16000,)
    assert dominant_hz(samples, rate) == pytest.approx(tone_hz(1), abs=5)


def test_wav_through_pyav(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, tone_samples(3.0, 8000), 8000)
    samples, rate = read_audio_window(path, seconds=1.0, centre=2.5)
    assert rate == 8000 and dominant_hz(samples, rate) == pytest.approx(tone_hz(2), abs=5)
    with pytest.raises(MediaError, match="limit is 2 s"):
        read_audio_window(path, seconds=1.0, max_duration=2.0)


def test_bytes_and_tar_members(clip, tmp_path):
    from_bytes = read_video_clip(clip.read_bytes(), name="clip.mp4")
    archive = tmp_path / "clips.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(clip, arcname="videos/clip.mp4")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("videos/clip.mp4")
        from_tar = read_video_clip(member)
    assert from_tar.time == from_bytes.time
    np.testing.assert_array_equal(np.asarray(from_tar.frames[0]), np.asarray(from_bytes.frames[0]))
    np.testing.assert_array_equal(from_tar.audio, from_bytes.audio)


def test_truncated_and_garbage_files(clip, tmp_path):
    data = clip.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name in ("cut.mp4", "noise.mp4", "empty.mp4"):
        with pytest.raises(MediaError, match=name):
            read_video_clip(tmp_path / name)
    with pytest.raises(MediaError, match="does not exist"):
        probe_video(tmp_path / "missing.mp4")


def _faststart(source, target):
    """Remux with the index (moov) first, as streaming MP4s are: a cut file then still opens."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return target


def test_a_cut_file_is_refused_not_read_short(clip, tmp_path):
    """A streaming MP4 cut in half opens; a time in the lost half is 'truncated', never an earlier frame or a short,
    tiled sound; a time in the kept half still reads."""
    data = _faststart(clip, tmp_path / "fast.mp4").read_bytes()
    cut = data[: len(data) // 2]
    assert read_video_clip(cut, time=0.5, clip_seconds=1.0).audio.shape == (16000,)
    for time in (1.8, 2.0, 3.0, 3.9):
        with pytest.raises(MediaError, match="truncated") as err:
            read_video_clip(cut, time=time, clip_seconds=1.0, name="cut.mp4")
        assert err.value.reason == "truncated media" and "cut.mp4" in str(err.value)
    with pytest.raises(MediaError, match="truncated"):
        read_audio_window(cut, seconds=1.0, centre=3.0)


def _secret_playlist(target) -> str:
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n"


@pytest.mark.parametrize("file_name", ["x.m3u8", "x.m3u", "playlist.mp4"])
def test_playlists_naming_a_server_file_are_refused(server_file, tmp_path, file_name):
    path = tmp_path / file_name
    path.write_text(_secret_playlist(server_file))
    with pytest.raises(MediaError, match=file_name.replace(".", r"\.")):
        read_video_clip(path)
    with pytest.raises(MediaError):
        read_audio_window(path, seconds=1.0)
    with open(path, "rb") as f, pytest.raises(MediaError):  # a file object named like a playlist: the same
        probe_video(f)


def test_nested_opens_are_refused_even_for_an_allowed_demuxer(server_file, monkeypatch, tmp_path):
    """The second lock: with the format allow-list widened to HLS, the playlist still cannot open the file."""
    monkeypatch.setattr(media, "ALLOWED_FORMATS", ALLOWED_FORMATS | {"hls", "applehttp", "mpegts"})
    path = tmp_path / "x.m3u8"
    path.write_text(_secret_playlist(server_file))
    with pytest.raises(MediaError, match="refers to other files") as err:
        read_video_clip(path)
    assert err.value.reason == "refused format"


@pytest.mark.parametrize("text", ["ffconcat version 1.0\nfile '{clip}'\n", "file '{clip}'\n"])
def test_concat_scripts_are_refused(clip, tmp_path, text):
    path = tmp_path / "concat.mp4"
    path.write_text(text.format(clip=clip))
    with pytest.raises(MediaError):
        read_video_clip(path)


@pytest.mark.parametrize("source", ["concat:{clip}|{clip}", "file:{clip}", "data:video/mp4;base64,AAAA",
                                    "subfile,,start,0,end,0,,:{clip}", "http://127.0.0.1:9/x.mp4"])
def test_protocol_urls_are_never_resolved(clip, source):
    with pytest.raises(MediaError, match="does not exist"):
        read_video_clip(source.format(clip=clip))


def test_formats_outside_the_allow_list_are_refused(tmp_path):
    path = make_video(tmp_path / "clip.flv", container_format="flv", audio=False, vcodec="flv")
    with pytest.raises(MediaError, match="not one of the allowed") as err:
        probe_video(path)
    assert err.value.reason == "refused format"


@pytest.mark.parametrize("time", [math.nan, math.inf, -0.5, 4.5, "soon"])
def test_bad_times_name_the_time(clip, time):
    with pytest.raises(MediaError, match="time=") as err:
        read_video_clip(clip, time=time)
    assert err.value.reason == "bad time" and "corrupt" not in str(err.value)


def test_absurd_headers_are_refused(clip, monkeypatch):
    monkeypatch.setattr(media, "MAX_FRAME_SIDE", 16)  # the clip's 32 px now stand for a 16k-px frame
    with pytest.raises(MediaError, match="32 x 24 px are refused"):
        probe_video(clip)


def test_absurd_audio_rate_refused(clip, monkeypatch):
    monkeypatch.setattr(media, "MAX_SAMPLE_RATE", 8000)
    with pytest.raises(MediaError, match="16000 Hz"):
        probe_video(clip)


def test_seeks_instead_of_decoding_from_the_start(tmp_path, monkeypatch):
    """A frame 50 s into a clip with a keyframe every 10 frames is reached within a 12-frame decode budget."""
    path = make_video(tmp_path / "long.mp4", seconds=60.0, fps=5, size=(16, 16), gop=10, audio=False)
    monkeypatch.setattr(media, "MAX_DECODE_FRAMES", 12)
    out = read_video_clip(path, time=50.0)
    assert out.frame_times[0] == pytest.approx(50.0, abs=0.21)
    no_keyframes = make_video(tmp_path / "one_key.mp4", seconds=60.0, fps=5, size=(16, 16), gop=1000, audio=False)
    with pytest.raises(MediaError, match="keyframe"):
        read_video_clip(no_keyframes, time=50.0)


def test_open_media_returns_a_container(clip):
    with open_media(io.BytesIO(clip.read_bytes()), name="upload.mp4") as container:
        assert container.streams.video and container.streams.audio


def test_media_error_pickles_with_its_reason():
    import pickle

    err = pickle.loads(pickle.dumps(MediaError("x", "bad time")))
    assert err.reason == "bad time" and str(err) == "x"
