"""Inference latency of both XPL branches on one (image, audio) pair, and throughput at batch 32.

    python -m bench.inference [--image_size 224] [--threads 2] [--repeats 30] [--device cpu|cuda]

Prints the median / p90 latency of one pair through both branches (the model's forward, inputs already
preprocessed), the same with preprocessing included (JPEG bytes + 3 s WAV at 44.1 kHz -> processor -> model), and
pairs per second at batch 32. The target is <= 100 ms median for one pair at 224 px on a 2-core CPU. Random
weights: latency does not depend on the values.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from xpl_hf import XPLConfig, XPLModel, XPLProcessor


def timed(fn, repeats: int, sync) -> list[float]:
    fn()
    fn()  # warm-up (allocator, oneDNN primitive cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--image_backbone", default="resnet18", choices=["resnet18", "efficientnet_lite0"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    config = XPLConfig(image_size=args.image_size, image_backbone_a=args.image_backbone,
                       image_backbone_b=args.image_backbone)
    model = XPLModel(config).eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    processor = XPLProcessor.from_config(config)

    rng = np.random.default_rng(0)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    wav = io.BytesIO()
    sf.write(wav, (rng.standard_normal(44100 * 3) * 0.1).astype(np.float32), 44100, format="WAV")
    image, audio = Image.open(io.BytesIO(jpeg.getvalue())), wav.getvalue()

    def inputs(n):
        batch = processor(images=[image] * n, audio=[audio] * n)
        return {k: v.to(device) for k, v in batch.items()}

    one = inputs(1)
    many = inputs(args.batch_size)
    if args.channels_last:
        one["pixel_values"] = one["pixel_values"].contiguous(memory_format=torch.channels_last)
        many["pixel_values"] = many["pixel_values"].contiguous(memory_format=torch.channels_last)

    with torch.inference_mode():
        model_only = timed(lambda: model(**one), args.repeats, sync)
        end_to_end = timed(lambda: model(**{k: v.to(device) for k, v in processor(
            images=Image.open(io.BytesIO(jpeg.getvalue())), audio=audio).items()}), args.repeats, sync)
        batch_times = timed(lambda: model(**many), max(3, args.repeats // 5), sync)

    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    p90 = lambda xs: 1000 * sorted(xs)[int(0.9 * (len(xs) - 1))]  # noqa: E731
    print(f"device={device} threads={torch.get_num_threads()} image={args.image_size}px backbone={args.image_backbone} "
          f"channels_last={args.channels_last}")
    print(f"one pair, model forward (A+B+fused): median {ms(model_only):.1f} ms, p90 {p90(model_only):.1f} ms "
          f"(target <= 100 ms median)")
    print(f"one pair, JPEG+WAV -> processor -> model: median {ms(end_to_end):.1f} ms, p90 {p90(end_to_end):.1f} ms")
    print(f"batch {args.batch_size}: {args.batch_size / statistics.median(batch_times):.1f} pairs/s")


if __name__ == "__main__":
    main()
