"""Video ingestion by the converters (xpl_hf.data.convert): mp4 folders and .tar.gz archives, VGG-Sound naming,
Flickr-SoundNet videos, bad clips, resume, machine parts, K frames per clip, and parity with frames + wav.

Every video is generated here with PyAV (H.264 + AAC, 64 x 48 px, 10 fps, 2 s): frame i is a flat colour
(red 10 + 12 i, green 250 - 12 i), so the stored frame tells which one was taken; the sound is a 440 Hz sine.
"""

import io
import json
import os
import tarfile

import av
import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from media_samples import encode_audio

from xpl_hf.audio import resample
from xpl_hf.data import convert as cv
from xpl_hf.data.convert import writer as writer_module
from xpl_hf.data.loading import load_labeled
from xpl_hf.data.shards import split_shard_paths

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
FPS, SIZE, RATE, SECONDS = 10, (64, 48), 16000, 2.0
OPTIONS = cv.ClipOptions(clip_seconds=1.0)


def frame_colour(i: int) -> tuple[int, int]:
    return (10 + 12 * i) % 256, (250 - 12 * i) % 256


def make_video(path, *, video=True, audio=True, silent=False, seconds=SECONDS, container=None):
    """A small H.264/AAC clip (module docstring); ``video`` / ``audio`` False leave that stream out."""
    out = av.open(str(path), "w", format=container)
    vs = out.add_stream("libx264", rate=FPS) if video else None
    stream = out.add_stream("aac", rate=RATE, layout="mono") if audio else None
    if vs is not None:
        vs.width, vs.height, vs.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        vs.options = {"preset": "ultrafast", "g": "5"}
        for i in range(round(seconds * FPS)):
            pixels = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
            pixels[..., 0], pixels[..., 1] = frame_colour(i)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    if stream is not None:
        t = np.arange(round(seconds * RATE)) / RATE
        wave = (0.0 if silent else 0.5) * np.sin(2 * np.pi * 440 * t).astype(np.float32)
        encode_audio(out, stream, wave[None], RATE)
    out.close()


def video_folder(root, n=3, **entry):
    """``root/clips/c<i>.mp4`` and an annotations.json giving each a box (and ``entry``'s extra keys)."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_video(root / "clips" / f"c{i}.mp4")
    entries = [{"id": f"c{i}", "video": f"clips/c{i}.mp4", "boxes": [[0.1, 0.2, 0.5, 0.6]], **entry} for i in range(n)]
    (root / "annotations.json").write_text(json.dumps(entries))
    return root


def rows_by_id(out, split):
    return {r["id"]: r for r in load_labeled(str(out), split, require_boxes=False, decode_images=True)}


def decode_wav(row):
    wave, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    return wave, rate


# ------------------------------------------------------------------------------------------------------- folders


def test_folder_of_videos_converts_middle_frame_and_mono_audio(tmp_path):
    src = video_folder(tmp_path / "src")
    out = tmp_path / "out"
    report = cv.convert("folder", str(src), str(out), options=OPTIONS, progress=False)
    assert report.written == {"labeled": 3} and report.boxed == {"labeled": 3} and not report.skipped
    rows = rows_by_id(out, "labeled")
    image = rows["c0"]["image"]
    assert image.size == SIZE
    red, green, _ = image.getpixel((30, 20))
    assert abs(red - frame_colour(10)[0]) <= 4 and abs(green - frame_colour(10)[1]) <= 4  # t = 1.0 s: frame 10
    wave, rate = decode_wav(rows["c0"])
    assert rate == 22050 and wave.ndim == 1 and len(wave) == 22050  # 1 s, mono, resampled once
    assert 0.4 < np.abs(wave).max() < 0.6
    (raw,) = [r for r in load_labeled(str(out), "labeled") if r["id"] == "c0"]
    assert raw["audio"]["path"] == "c0.wav" and raw["image"]["path"] == "c0.jpg"  # names only, never local paths
    # the "time" key and --frame_time choose another frame
    (src / "annotations.json").write_text(json.dumps([{"id": "t", "video": "clips/c1.mp4", "time": 0.5,
                                                       "boxes": [[0, 0, 1, 1]]}]))
    cv.convert("folder", str(src), str(tmp_path / "t"), options=OPTIONS, progress=False)
    assert abs(rows_by_id(tmp_path / "t", "labeled")["t"]["image"].getpixel((30, 20))[0] - frame_colour(5)[0]) <= 4


def test_load_dataset_reads_a_video_converted_folder(tmp_path):
    src = video_folder(tmp_path / "src", n=2)
    out = tmp_path / "out"
    cv.convert("folder", str(src), str(out), options=OPTIONS, progress=False)
    ds = datasets.load_dataset(str(out))
    assert set(ds) == {"labeled"} and sorted(ds["labeled"]["id"]) == ["c0", "c1"]
    assert ds["labeled"][0]["image"].size == SIZE and ds["labeled"][0]["audio"]["bytes"][:4] == b"RIFF"


def test_tar_gz_of_the_folder_gives_the_same_rows(tmp_path):
    src = video_folder(tmp_path / "my_clips")
    archive = tmp_path / "my_clips.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="my_clips")
    cv.convert("folder", str(src), str(tmp_path / "a"), options=OPTIONS, progress=False)
    report = cv.convert("folder", str(archive), str(tmp_path / "b"), options=OPTIONS, progress=False)
    assert report.written == {"labeled": 3}
    a, b = rows_by_id(tmp_path / "a", "labeled"), rows_by_id(tmp_path / "b", "labeled")
    assert a.keys() == b.keys()
    for sid in a:
        assert a[sid]["audio"]["bytes"] == b[sid]["audio"]["bytes"]
        assert np.array_equal(np.asarray(a[sid]["image"]), np.asarray(b[sid]["image"]))
    # a path leaving the annotations' folder inside the archive is refused
    (src / "annotations.json").write_text(json.dumps([{"id": "x", "video": "../../etc/passwd"},
                                                      {"id": "ok", "video": "clips/c0.mp4"}]))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="my_clips")
    report = cv.convert("folder", str(archive), str(tmp_path / "c"), options=OPTIONS, progress=False)
    assert report.skipped == {"media outside input folder": ["x"]} and report.written == {"unlabeled": 1}


def test_same_clip_from_mp4_and_from_extracted_frame_and_wav(tmp_path):
    """Parity of the two input routes. Image: the mp4 route stores a JPEG (quality 95) of the frame the wav route
    stores losslessly (PNG): mean difference <= 1.5 grey levels, max <= 8. Audio: both routes decode the same AAC;
    the mp4 route keeps the 1 s window around the frame, resampled once 16 -> 22.05 kHz; resampling that window of
    the extracted wav the same way gives the same samples to 1e-4 (float32 and edge rounding)."""
    src = tmp_path / "src"
    (src / "clips").mkdir(parents=True)
    make_video(src / "clips" / "v.mp4")
    with av.open(str(src / "clips" / "v.mp4")) as container:  # extraction as a user's ffmpeg step would do it
        frame = next(f for f in container.decode(video=0) if f.time >= 1.0 - 1e-3)
        frame.to_image().save(src / "v.png")
    with av.open(str(src / "clips" / "v.mp4")) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    sf.write(src / "v.wav", np.concatenate(chunks), RATE, subtype="FLOAT")
    (src / "annotations.json").write_text(json.dumps([
        {"id": "mp4", "video": "clips/v.mp4", "boxes": [[0, 0, 1, 1]]},
        {"id": "files", "image": "v.png", "audio": "v.wav", "boxes": [[0, 0, 1, 1]]}]))
    out = tmp_path / "out"
    cv.convert("folder", str(src), str(out), options=OPTIONS, progress=False)
    rows = rows_by_id(out, "labeled")
    a = np.asarray(rows["mp4"]["image"], dtype=np.float32)
    b = np.asarray(rows["files"]["image"], dtype=np.float32)
    assert a.shape == b.shape and np.abs(a - b).mean() <= 1.5 and np.abs(a - b).max() <= 8
    stored, rate = decode_wav(rows["mp4"])
    full, full_rate = decode_wav(rows["files"])
    start = round(0.5 * full_rate)
    expected = resample(full[start:start + full_rate], full_rate, rate)
    assert len(stored) == len(expected) == rate
    assert np.abs(stored - expected).max() <= 1e-4


# --------------------------------------------------------------------------------------------------- bad clips


def test_bad_clips_are_reported_and_the_conversion_goes_on(tmp_path):
    src = tmp_path / "src"
    (src / "clips").mkdir(parents=True)
    make_video(src / "clips" / "good.mp4")
    make_video(src / "clips" / "mute.mp4", audio=False)
    make_video(src / "clips" / "sound.mp4", video=False)
    make_video(src / "clips" / "silent.mp4", silent=True)
    data = (src / "clips" / "good.mp4").read_bytes()
    (src / "clips" / "truncated.mp4").write_bytes(data[:len(data) // 3])
    (src / "clips" / "garbage.mp4").write_bytes(os.urandom(3000))
    (src / "clips" / "playlist.mp4").write_text("#EXTM3U\n#EXTINF:10,\n/etc/passwd\n")
    names = ["good", "mute", "sound", "silent", "truncated", "garbage", "playlist"]
    entries = [{"id": n, "video": f"clips/{n}.mp4", "boxes": [[0, 0, 1, 1]]} for n in names]
    entries += [{"id": "late", "video": "clips/good.mp4", "time": 60.0, "boxes": [[0, 0, 1, 1]]},
                {"id": "nan-time", "video": "clips/good.mp4", "time": "soon"}]
    (src / "annotations.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    report = cv.convert("folder", str(src), str(out), options=OPTIONS, progress=False)
    assert report.written == {"labeled": 2} and report.boxed == {"labeled": 2}
    skipped = {sid: reason for reason, ids in report.skipped.items() for sid in ids}
    assert skipped["mute"] == "no audio" and skipped["sound"] == "no video" and skipped["late"] == "bad time"
    assert skipped["nan-time"] == "bad time" and skipped["playlist"] in ("refused format", "unreadable media")
    assert {"truncated", "garbage"} <= skipped.keys()
    assert report.reported == {"silent audio": ["silent"]}
    saved = json.loads((out / cv.REPORT_NAME).read_text())
    details = {p["id"]: p["detail"] for p in saved["problems"]}
    assert "playlist.mp4" in details["playlist"] and "allowed format" in details["playlist"]
    assert "truncated.mp4" in details["truncated"]


# ---------------------------------------------------------------------------------------------- resume and parts


def test_a_killed_conversion_resumes_and_a_rerun_never_duplicates(tmp_path, monkeypatch):
    src = video_folder(tmp_path / "src", n=4)
    out = tmp_path / "out"
    real_write, calls = writer_module.write_shard, []

    def killed_after_two(path, rows, features):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the conversion is killed while shard 3 of 4 is being written
        calls.append(path)
        return real_write(path, rows, features)

    monkeypatch.setattr(writer_module, "write_shard", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        cv.convert("folder", str(src), str(out), options=OPTIONS, shards_per_split=4, progress=False)
    assert len(split_shard_paths(str(out), "labeled")) == 2 and not [n for n in os.listdir(out / "data")
                                                                      if n.endswith(".tmp")]
    (out / "data" / ".labeled-00002-of-00004.parquet.999.tmp").write_bytes(b"half a shard")  # a kill -9 leftover
    built = []
    real_build = writer_module.build_row
    monkeypatch.setattr(writer_module, "write_shard", real_write)
    monkeypatch.setattr(writer_module, "build_row", lambda c, *a: built.append(c.id) or real_build(c, *a))
    report = cv.convert("folder", str(src), str(out), options=OPTIONS, shards_per_split=4, progress=False)
    assert built == ["c2", "c3"] and report.written == {"labeled": 4}
    assert not [n for n in os.listdir(out / "data") if n.endswith(".tmp")]
    built.clear()
    report = cv.convert("folder", str(src), str(out), options=OPTIONS, shards_per_split=4, progress=False)
    assert built == [] and report.written == {"labeled": 4}
    ids = [r["id"] for r in load_labeled(str(out), "labeled")]
    assert sorted(ids) == ["c0", "c1", "c2", "c3"]
    # fewer shards on a rerun: the old shards go, no row is repeated
    cv.convert("folder", str(src), str(out), options=OPTIONS, shards_per_split=1, progress=False)
    assert len(split_shard_paths(str(out), "labeled")) == 1 and len(load_labeled(str(out), "labeled")) == 4


def test_machines_split_one_conversion_with_num_shards_and_shard_index(tmp_path):
    src = video_folder(tmp_path / "src", n=5)
    parts = [tmp_path / f"part{k}" for k in range(2)]
    for k, out in enumerate(parts):
        cv.convert("folder", str(src), str(out), options=OPTIONS, num_shards=2, shard_index=k, progress=False)
    names = [sorted(os.listdir(p / "data")) for p in parts]
    assert names == [["labeled-00000-of-00002.parquet"], ["labeled-00001-of-00002.parquet"]]
    merged = tmp_path / "merged" / "data"
    merged.mkdir(parents=True)
    for p, (name,) in zip(parts, names):
        (merged / name).write_bytes((p / "data" / name).read_bytes())
    assert sorted(r["id"] for r in load_labeled(str(merged.parent), "labeled")) == [f"c{i}" for i in range(5)]


# ------------------------------------------------------------------------------------------------ K frames


def test_frames_per_clip_and_the_collator_picks_one_per_visit(tmp_path):
    from xpl_hf.data.transforms import XPLSampleTransform

    src = video_folder(tmp_path / "src", n=1)
    out = tmp_path / "out"
    cv.convert("folder", str(src), str(out), options=cv.ClipOptions(clip_seconds=1.0, frames_per_clip=3),
               progress=False)
    (row,) = load_labeled(str(out), "labeled", decode_images=True)
    reds = [f.getpixel((30, 20))[0] for f in row["frames"]]
    assert len(reds) == 3 and len(set(reds)) == 3  # 3 different moments of the clip
    assert abs(row["image"].getpixel((30, 20))[0] - reds[1]) <= 4  # the middle one is the protocol's frame
    train = XPLSampleTransform.__new__(XPLSampleTransform)
    train.train = True
    torch.manual_seed(0)
    picks = [train._frame(row) for _ in range(30)]
    torch.manual_seed(0)
    assert [id(p) for p in picks] == [id(train._frame(row)) for _ in range(30)]  # seeded
    assert {id(p) for p in picks} == {id(f) for f in row["frames"]}
    train.train = False
    assert train._frame(row) is row["image"]  # evaluation: always the protocol's frame


# ---------------------------------------------------------------------------------------- VGG-Sound and Flickr


def test_vggsound_names_match_whatever_their_padding_extension_or_dashes():
    key = cv.vggsound_key
    assert key("zpWuikVorYg_000032") == key("zpWuikVorYg_32.mp4") == key("a/b/zpWuikVorYg_000032.mp4")
    assert key("zpWuikVorYg", "32") == "zpWuikVorYg_000032"  # vggsound.csv: id and start in two columns
    assert key("--cB2ZVjpnA_30") == "--cB2ZVjpnA_000030"  # leading dashes, start after the last "_"
    assert key("a_b_c_0") == "a_b_c_000000" and key("notaclip.mp4") is None and key("x", "start") is None


def test_vggss_from_a_hub_style_tar_gz_with_unpadded_names(tmp_path, monkeypatch):
    stage = tmp_path / "stage" / "scratch" / "VGGSound_final" / "video"
    stage.mkdir(parents=True)
    make_video(stage / "--dash_id_30.mp4")  # unpadded start, leading dashes
    make_video(stage / "abcdefghijk_000000.mp4")
    make_video(stage / "unlabeled1_000010.mp4")
    archive = tmp_path / "vggsound_00.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "stage" / "scratch", arcname="scratch")
    annotations = [{"file": "--dash_id_000030", "class": "dog", "bbox": [[0.1, 0.1, 0.6, 0.6]]},
                   {"file": "abcdefghijk_000000", "class": "cat", "bbox": [[0.2, 0.2, 0.4, 0.4]]},
                   {"file": "missing_000040", "class": "cow", "bbox": [[0.2, 0.2, 0.4, 0.4]]},
                   {"file": "bbox_is_a_number_000050", "bbox": 5}]
    (tmp_path / "vggss.json").write_text(json.dumps(annotations))
    (tmp_path / "vggsound.csv").write_text("unlabeled1,10,lion roaring,train\n--dash_id,30,dog,test\n")
    (tmp_path / "heard.csv").write_text("--dash_id_30\nmissing_000040\n")  # unpadded in a list too
    out = tmp_path / "out"
    built, real_build = [], writer_module.build_row
    monkeypatch.setattr(writer_module, "build_row", lambda c, *a: built.append(c.id) or real_build(c, *a))
    report = cv.convert("vggss", [str(archive)], str(out), annotations=str(tmp_path / "vggss.json"),
                        heard_list=str(tmp_path / "heard.csv"), unlabeled=True,
                        csv_path=str(tmp_path / "vggsound.csv"), options=OPTIONS, progress=False)
    assert report.written == {"test": 2, "unlabeled": 1, "heard_test": 1}
    assert report.boxed == {"test": 2, "unlabeled": 0, "heard_test": 1}
    assert report.skipped == {"missing media": ["missing_000040"], "bad annotation": ["<entry 3>"],
                              "no test row": ["missing_000040"]}
    assert sorted(built) == ["--dash_id_000030", "abcdefghijk_000000", "unlabeled1_000010"]  # heard: copied
    assert rows_by_id(out, "heard_test")["--dash_id_000030"]["audio"] == \
        rows_by_id(out, "test")["--dash_id_000030"]["audio"]
    test = rows_by_id(out, "test")
    assert set(test) == {"--dash_id_000030", "abcdefghijk_000000"} and test["--dash_id_000030"]["label"] == "dog"
    assert rows_by_id(out, "unlabeled")["unlabeled1_000010"]["label"] == "lion roaring"


def test_flickr_from_videos(tmp_path):
    src = tmp_path / "flickr"
    for d in ("videos", "Annotations"):
        (src / d).mkdir(parents=True)
    for sid in ("111", "222"):
        make_video(src / "videos" / f"{sid}.mp4")
    (src / "Annotations" / "111.xml").write_text("<annotation><bbox><xmin>10</xmin><ymin>20</ymin><xmax>130</xmax>"
                                                 "<ymax>140</ymax></bbox></annotation>")
    (src / "test.csv").write_text("111,0\n")
    out = tmp_path / "out"
    report = cv.convert("flickr", str(src), str(out), test_list=str(src / "test.csv"), unlabeled=True,
                        options=OPTIONS, progress=False)
    assert report.written == {"test": 1, "unlabeled": 1}
    (row,) = load_labeled(str(out), "test")
    np.testing.assert_allclose(row["boxes"], [[10 / 256, 20 / 256, 130 / 256, 140 / 256]], atol=1e-6)
    assert row["gt_rule"] == "flickr"
    # a validation split carved from the labeled list, reproducibly
    for sid in ("333", "444", "555"):
        make_video(src / "videos" / f"{sid}.mp4")
        (src / "Annotations" / f"{sid}.xml").write_text((src / "Annotations" / "111.xml").read_text())
    (src / "sup.txt").write_text("222\n333\n444\n555\n")
    (src / "Annotations" / "222.xml").write_text((src / "Annotations" / "111.xml").read_text())
    carved = []
    for k in range(2):
        report = cv.convert("flickr", str(src), str(tmp_path / f"v{k}"), test_list=str(src / "test.csv"),
                            labeled_list=str(src / "sup.txt"), validation_fraction=0.5, seed=3, options=OPTIONS,
                            progress=False)
        assert report.written == {"test": 1, "labeled": 2, "validation": 2}
        carved.append(sorted(r["id"] for r in load_labeled(str(tmp_path / f"v{k}"), "validation")))
    assert carved[0] == carved[1]


def test_parts_written_into_one_shared_folder_and_other_splits_are_kept(tmp_path):
    src = video_folder(tmp_path / "src", n=4)
    out = tmp_path / "shared"
    for k in range(2):  # two machines writing into one shared folder
        cv.convert("folder", str(src), str(out), options=OPTIONS, num_shards=2, shard_index=k, progress=False)
    assert sorted(r["id"] for r in load_labeled(str(out), "labeled")) == ["c0", "c1", "c2", "c3"]
    # another converter writing another split into the same folder leaves "labeled" alone
    other = video_folder(tmp_path / "other", n=1, split="extra")
    cv.convert("folder", str(other), str(out), options=OPTIONS, progress=False)
    assert len(load_labeled(str(out), "labeled")) == 4 and len(load_labeled(str(out), "extra")) == 1


def _odd_avi(path):
    """33 x 21 px MJPEG + 8 kHz PCM in AVI (sizes H.264 cannot hold)."""
    out = av.open(str(path), "w")
    vs = out.add_stream("mjpeg", rate=FPS)
    vs.width, vs.height, vs.pix_fmt = 33, 21, "yuvj444p"
    sound = out.add_stream("pcm_s16le", rate=8000, layout="mono")
    for i in range(20):
        pixels = np.zeros((21, 33, 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = frame_colour(i)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = i
        for packet in vs.encode(frame):
            out.mux(packet)
    for packet in vs.encode():
        out.mux(packet)
    wave = (16000 * np.sin(np.arange(16000) / 8000 * 2 * np.pi * 440)).astype(np.int16)
    for k in range(0, 16000, 800):
        frame = av.AudioFrame.from_ndarray(wave[None, k:k + 800], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, k
        for packet in sound.encode(frame):
            out.mux(packet)
    for packet in sound.encode():
        out.mux(packet)
    out.close()


def _vfr_mp4(path, times_ms):
    """H.264 frames at irregular times (variable frame rate) + 2 s of AAC."""
    from fractions import Fraction

    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=25)
    vs.width, vs.height, vs.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
    vs.time_base = Fraction(1, 1000)
    sound = out.add_stream("aac", rate=RATE, layout="mono")
    for i, t in enumerate(times_ms):
        pixels = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = frame_colour(i)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts, frame.time_base = t, vs.time_base
        for packet in vs.encode(frame):
            out.mux(packet)
    for packet in vs.encode():
        out.mux(packet)
    wave = (0.5 * np.sin(np.arange(2 * RATE) / RATE * 2 * np.pi * 440)).astype(np.float32)
    encode_audio(out, sound, wave[None], RATE)
    out.close()


def test_odd_sizes_other_containers_and_variable_frame_rate(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _odd_avi(src / "odd.avi")
    _vfr_mp4(src / "vfr.mp4", [0, 100, 150, 700, 900, 1000, 1050, 1400, 1900])
    (src / "annotations.json").write_text(json.dumps([{"id": "odd", "video": "odd.avi", "boxes": [[0, 0, 1, 1]]},
                                                      {"id": "vfr", "video": "vfr.mp4", "boxes": [[0, 0, 1, 1]]}]))
    out = tmp_path / "out"
    assert cv.convert("folder", str(src), str(out), options=OPTIONS, progress=False).written == {"labeled": 2}
    rows = rows_by_id(out, "labeled")
    assert rows["odd"]["image"].size == (33, 21)
    assert abs(rows["odd"]["image"].getpixel((16, 10))[0] - frame_colour(10)[0]) <= 6  # 1.0 s of 2 s: frame 10
    wave, rate = decode_wav(rows["odd"])
    assert rate == 22050 and len(wave) == 22050 and 0.4 < np.abs(wave).max() < 0.6
    with av.open(str(src / "vfr.mp4")) as container:  # the frame on screen at the middle, where the sound is centred
        middle = float(container.duration) / av.time_base / 2
        reds = [(f.time, f.to_ndarray(format="rgb24")[20, 30, 0]) for f in container.decode(video=0)]
    expected = [red for t, red in reds if t <= middle + 1e-3][-1]
    assert abs(int(rows["vfr"]["image"].getpixel((30, 20))[0]) - int(expected)) <= 4


def test_flickr_from_a_tar_gz_reads_annotations_in_one_pass(tmp_path, monkeypatch):
    from xpl_hf.data.convert import archive as archive_module

    src = tmp_path / "Flickr-SoundNet"
    for d in ("videos", "Annotations"):
        (src / d).mkdir(parents=True)
    xml = ("<annotation><bbox><xmin>10</xmin><ymin>20</ymin><xmax>130</xmax><ymax>140</ymax></bbox>"
           "</annotation>")
    for sid in ("111", "222", "333"):
        make_video(src / "videos" / f"{sid}.mp4")
        (src / "Annotations" / f"{sid}.xml").write_text(xml)
    (tmp_path / "test.csv").write_text("333\n111\n222\n")
    archive = tmp_path / "flickr.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="Flickr-SoundNet")
    opened = []
    real_open = archive_module._compressed
    monkeypatch.setattr(archive_module, "_compressed", lambda path: opened.append(path) or real_open(path))
    report = cv.convert("flickr", str(archive), str(tmp_path / "out"), test_list=str(tmp_path / "test.csv"),
                        options=OPTIONS, progress=False)
    assert report.written == {"test": 3}
    assert len(opened) == 3  # index once, annotations in one pass, videos in one pass
