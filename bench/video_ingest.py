"""Video ingestion speed: generated 10 s 360p H.264/AAC clips -> xpl-hf parquet shards, in clips per CPU-second.

    python -m bench.video_ingest [--clips 32] [--num_workers 1] [--gop 50]

Clips: 640 x 360, 25 fps, H.264 (libx264, a keyframe every ``--gop`` frames: 2 s by default, as web video), AAC
44.1 kHz stereo, a moving pattern and a chirp; generation is not timed. The conversion is
``python -m xpl_hf.data.convert folder`` with its defaults (middle frame, 3 s of audio mixed to mono and resampled
once to 22.05 kHz, JPEG 95 + 16-bit WAV). CPU time is the process's and its workers' user + system time, so the
figure does not depend on how loaded the machine is (wall time is printed too). Target: >= 10 clips per
CPU-second (VGG-Sound's ~200k clips in under 6 hours on 16 cores).

Where the time goes: a second, single-process pass with timers around the stages (open = opening and probing the
file from its headers; seek; decode = the frames up to the middle one and the audio window; resample; encode = JPEG
and WAV; write = parquet), seek being measured apart on the same clips.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import resource
import tempfile
import time

import av
import numpy as np

from xpl_hf import media
from xpl_hf.data.convert import ClipOptions, convert
from xpl_hf.data.convert import video as video_module
from xpl_hf.data.convert import writer as writer_module


def make_clip(path: str, seconds: float = 10.0, size=(640, 360), fps: int = 25, rate: int = 44100, gop: int = 50,
              seed: int = 0) -> None:
    """A 360p H.264 / AAC stereo clip with a moving pattern and a chirp."""
    rng = np.random.default_rng(seed)
    out = av.open(path, "w")
    vs = out.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
    vs.options = {"preset": "veryfast", "g": str(gop), "crf": "23"}
    aus = out.add_stream("aac", rate=rate, layout="stereo")
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    pattern = np.stack([(rng.integers(0, 255) + 40 * np.sin(xx / (13 + 5 * c)) + 30 * np.cos(yy / 17)) % 256
                        for c in range(3)], axis=-1).astype(np.uint8)
    for i in range(round(seconds * fps)):
        pixels = np.roll(pattern, (3 * i, 7 * i), axis=(0, 1))  # the pattern moves: every frame differs
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        frame.pts = i
        for packet in vs.encode(frame):
            out.mux(packet)
    for packet in vs.encode():
        out.mux(packet)
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (200 + 80 * t) * t) + 0.05 * rng.standard_normal(len(t))
    stereo = np.stack([wave, 0.8 * wave]).astype(np.float32)
    for k in range(0, stereo.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, k:k + 1024]), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts = rate, k
        for packet in aus.encode(frame):
            out.mux(packet)
    for packet in aus.encode():
        out.mux(packet)
    out.close()


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(table: dict, stage: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            table[stage] += time.process_time() - start
    return wrapper


def stage_breakdown(src: str, out: str, clips: list[str]) -> dict[str, float]:
    """CPU seconds per stage of a single-process conversion (module docstring)."""
    table: dict[str, float] = collections.defaultdict(float)
    patches = [(media, "open_media", "open"), (media, "_info", "open"),
               (media, "_decode_frames_at", "seek + decode video"),
               (media, "_decode_audio_window", "seek + decode audio"), (video_module, "resample", "resample"),
               (video_module, "encode_jpeg", "encode"), (video_module, "encode_audio", "encode"),
               (writer_module, "write_shard", "write")]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, stage in patches:
        setattr(module, name, _timed(table, stage, getattr(module, name)))
    try:
        start = time.process_time()
        convert("folder", src, out, num_workers=1, progress=False)
        table["total"] = time.process_time() - start
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)
    seek = 0.0
    for path in clips:  # seeking to the middle, alone (video and audio each seek once per clip)
        with media.open_media(path) as container:
            middle = float(container.duration) / av.time_base / 2
            start = time.process_time()
            container.seek(int(middle * av.time_base), backward=True, any_frame=False)
            seek += 2 * (time.process_time() - start)
    table["seek (measured apart)"] = seek
    return dict(table)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--gop", type=int, default=50, help="frames between keyframes (25 fps)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "clips")
        os.makedirs(os.path.join(src, "videos"))
        clips = []
        for i in range(args.clips):
            clips.append(os.path.join(src, "videos", f"clip{i:04d}.mp4"))
            make_clip(clips[-1], gop=args.gop, seed=i)
        with open(os.path.join(src, "annotations.json"), "w") as f:
            json.dump([{"id": f"clip{i:04d}", "video": f"videos/clip{i:04d}.mp4", "boxes": [[0.2, 0.2, 0.6, 0.8]]}
                       for i in range(args.clips)], f)
        size = sum(os.path.getsize(c) for c in clips) / len(clips)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        report = convert("folder", src, os.path.join(tmp, "out"), num_workers=args.num_workers, progress=False)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        assert report.written == {"labeled": args.clips}, report.summary()
        stages = stage_breakdown(src, os.path.join(tmp, "out2"), clips)
    result = {"clips": args.clips, "mean_clip_bytes": round(size), "num_workers": args.num_workers,
              "gop_frames": args.gop, "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
              "clips_per_cpu_second": round(args.clips / cpu, 2),
              "clips_per_wall_second": round(args.clips / wall, 2),
              "cpu_ms_per_clip_by_stage": {k: round(1000 * v / args.clips, 2) for k, v in stages.items()},
              "options": repr(ClipOptions())}
    print(f"{args.clips} clips (10 s, 640x360 H.264 GOP {args.gop} + AAC 44.1 kHz stereo, {size / 1e6:.2f} MB each), "
          f"{args.num_workers} worker(s)")
    print(f"  {result['clips_per_cpu_second']} clips per CPU-second ({cpu:.2f} CPU-s; wall {wall:.2f} s, "
          f"{result['clips_per_wall_second']} clips/s); target >= 10")
    print("  CPU ms per clip, single-process pass with timers:")
    for stage, ms in result["cpu_ms_per_clip_by_stage"].items():
        print(f"    {stage:<24} {ms:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
