"""What a trainable top stage costs per training step of the CPU protocol (bench/reproduce.py), on one thread.

    python -m bench.top_stage_cost [--steps 20] [--threads 1]

The protocol's step (16 labelled + 48 unlabelled clips in stage 2, EfficientNet-Lite0 images at 224 px: 7 x 7 maps,
3 s clips) through the package's `TrainingStep` on `XPLFromTrunkFeatures`, with random cached inputs of the shapes
each setting caches, for:

- heads only on the protocol's 256 principal components of the image features (the protocol before 0.4.1);
- the audio trunks' top stages (VGGish fc3; SoundNet-8 conv7, or conv6-7), the protocol's choice since 0.4.1;
- the image trunk's top stage as well (EfficientNet-Lite0's 1x1 head, 320 -> 1280 channels, in both branches; the
  visual projection then reads all 1,280 channels).

Prints the median step time of each and its ratio to heads only (the settings are interleaved, so machine noise hits
them alike); the ratios are what decides which top stages the protocol can afford on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xpl_hf import XPLConfig, XPLModel
from xpl_hf.method import XPLMethod
from xpl_hf.modeling_xpl import TopStages, XPLFromTrunkFeatures
from xpl_hf.optimization import freeze_backbones, parameter_groups
from xpl_hf.trainer import TrainingStep

SETTINGS = {  # name -> (TopStages, image channels cached, VGGish stem, SoundNet-8 stem)
    "heads only (PCA 256)": (TopStages(), 256, (128,), (1024,)),
    "audio tops: VGGish fc3 + SoundNet-8 conv7": (TopStages(audio_a=1, audio_b=1), 256, (3, 4096), (512, 5)),
    "audio tops: VGGish fc3 + SoundNet-8 conv6-7": (TopStages(audio_a=1, audio_b=2), 256, (3, 4096), (256, 8)),
    "audio tops + image head (both branches)": (TopStages(image=1, audio_a=1, audio_b=1), 320, (3, 4096), (512, 5)),
}


def make_step(top: TopStages, channels: int, labeled: int, unlabeled: int):
    config = XPLConfig(image_backbone_a="efficientnet_lite0", image_backbone_b="efficientnet_lite0", image_size=224,
                       clip_seconds=3.0, vggish_fc_dim=4096 if top.audio_a else 8)
    model = XPLModel(config)
    if top.image == 0 and channels != model.branch_a.image_encoder.out_channels:  # the protocol's PCA projection
        for branch in (model.branch_a, model.branch_b):
            branch.visual_proj = torch.nn.Conv2d(channels, config.embed_dim, kernel_size=1)
    frozen = freeze_backbones(model, "all", top)
    wrapped = XPLFromTrunkFeatures(model, top)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 1.0, {}), weight_decay=1e-4)
    method = XPLMethod(curriculum_rampup_steps=100)
    step = TrainingStep(wrapped, optimizer, method, bank=method.make_bank(config.map_size),
                        selector=method.make_selector(), warmup_stage_steps=0, max_grad_norm=1.0, frozen=frozen)
    return step, labeled + unlabeled


def batch_of(n: int, labeled: int, channels: int, audio_a: tuple, audio_b: tuple, step: int) -> dict:
    return {"image_features": torch.randn(n, channels, 7, 7), "image_features_b": torch.randn(n, channels, 7, 7),
            "audio_features_a": torch.rand(n, *audio_a), "audio_features_b": torch.rand(n, *audio_b),
            "gt_maps": (torch.rand(n, 7, 7) > 0.7).float(), "is_labeled": torch.arange(n) < labeled,
            "ids": [f"clip-{(step * n + i) % 1600}" for i in range(n)]}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1, help="the protocol runs one thread per run")
    parser.add_argument("--labeled", type=int, default=16)
    parser.add_argument("--unlabeled", type=int, default=48)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = {name: make_step(top, ch, args.labeled, args.unlabeled) for name, (top, ch, _, _) in SETTINGS.items()}
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for i in range(args.steps + 2):
        for name, (step, n) in steps.items():
            _, channels, audio_a, audio_b = SETTINGS[name]
            batch = batch_of(n, args.labeled, channels, audio_a, audio_b, i)
            start = time.perf_counter()
            step(batch, i)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["heads only (PCA 256)"]
    print(f"threads={torch.get_num_threads()} batch={args.labeled}+{args.unlabeled} steps={args.steps} (interleaved)")
    for name, median in medians.items():
        print(f"{name:48s} median {median * 1000:6.0f} ms per step  x{median / base:.2f}")
    return medians


if __name__ == "__main__":
    main()
