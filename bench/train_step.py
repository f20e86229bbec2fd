"""Overhead of XPL's machinery over the two models' plain forward/backward, and the PL-EMA bank's size.

    python -m bench.train_step [--image_size 224] [--batch_size 16] [--repeats 10] [--device cpu|cuda]

Both timings use the same model, the same batches (half labeled, half unlabeled) and the same optimiser step:
- plain: forward of both branches + a per-pixel BCE of each map against the batch's maps + backward + AdamW step;
- XPL:   forward + eq. 9 (L_sup, λ·L_avc, L_cross with sharpening, PL-EMA bank update, Pearson consensus,
         curriculum selection) + backward + AdamW step.
The two are interleaved (plain, XPL, plain, XPL, ...) so machine noise hits both alike; medians and their ratio are
printed (target <= 1.05). The XPL step is the trainer's own `xpl_hf.trainer.TrainingStep` (its running logs and
non-finite watch included): `is_labeled` stays on the host, the bank and the curriculum window live on the device,
and nothing reads device data on the host (tests/test_no_sync.py). Then the bank's bytes for 144,000 unlabeled ids at
the 7 x 7 map (target <= 64 MB).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xpl_hf import XPLConfig, XPLModel
from xpl_hf.losses import pixel_bce
from xpl_hf.method import XPLMethod
from xpl_hf.objective import compute_losses
from xpl_hf.pseudo_labels import PseudoLabelBank
from xpl_hf.trainer import TrainingStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--image_backbone", default="resnet18", choices=["resnet18", "efficientnet_lite0"])
    parser.add_argument("--batch_size", type=int, default=16, help="labeled + unlabeled samples per step")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bank_ids", type=int, default=144_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    config = XPLConfig(image_size=args.image_size, image_backbone_a=args.image_backbone,
                       image_backbone_b=args.image_backbone)
    model = XPLModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, s = args.batch_size, args.image_size
    half = b // 2
    batch = {
        "pixel_values": torch.randn(b, 3, s, s, device=device),
        "pixel_values_b": torch.randn(b, 3, s, s, device=device),
        "audio_log_mel": torch.randn(b, 3, 96, 64, device=device),
        "audio_waveform": torch.randn(b, 66150, device=device) * 30,
        "gt_maps": (torch.rand(b, 224, 224, device=device) > 0.7).float(),
        "is_labeled": torch.arange(b) < half,  # batch metadata: stays on the host, as in train_xpl.py
    }
    method = XPLMethod(curriculum_rampup_steps=1000)
    train_step = TrainingStep(model, optimizer, method, bank=method.make_bank(config.map_size).to(device),
                              selector=method.make_selector())
    step_counter = {"n": 0}

    def forward():
        return model(**batch)

    def plain_loss(out):
        target = torch.rand_like(out.maps_a)
        return pixel_bce(out.maps_a, target).mean() + pixel_bce(out.maps_b, target).mean()

    def plain_step():
        loss = plain_loss(forward())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def xpl_step():
        n = step_counter["n"] = step_counter["n"] + 1
        batch["ids"] = [f"sample-{(n * b + i) % 5000}" for i in range(b)]  # new and revisited ids
        train_step(batch, n)  # forward, eq. 9 (bank, consensus, curriculum), bookkeeping, backward, AdamW


    for fn in (plain_step, xpl_step):  # warm-up
        fn()
        sync()
    plain, xpl = [], []
    for _ in range(args.repeats):
        for fn, times in ((plain_step, plain), (xpl_step, xpl)):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    p, x = statistics.median(plain), statistics.median(xpl)
    print(f"device={device} threads={torch.get_num_threads()} image={s}px backbone={args.image_backbone} "
          f"batch={b} ({half} labeled + {b - half} unlabeled), {args.repeats} interleaved repeats")
    print(f"plain forward/backward/step: median {p * 1000:.0f} ms")
    print(f"XPL step (all losses, bank, consensus, curriculum): median {x * 1000:.0f} ms")
    print(f"overhead ratio XPL / plain: {x / p:.3f} (target <= 1.05); fastest repeats {min(xpl) / min(plain):.3f}; "
          f"per-repeat ratios {[round(xi / pi, 2) for pi, xi in zip(plain, xpl)]}")
    if device.type == "cpu":  # synchronous: the loss section's own time, free of step-to-step noise
        with torch.no_grad():
            out = forward()
        probe = {"bank": method.make_bank(config.map_size), "selector": method.make_selector()}
        section = {"plain": [], "xpl": []}
        for n in range(args.repeats):
            for name in ("plain", "xpl"):
                start = time.perf_counter()
                if name == "plain":
                    plain_loss(out)
                else:
                    compute_losses(out, batch, method, pl_step=n, **probe)
                section[name].append(time.perf_counter() - start)
        extra = statistics.median(section["xpl"]) - statistics.median(section["plain"])
        print(f"XPL's losses and state (compute_losses) vs the plain loss: +{extra * 1000:.1f} ms per step = "
              f"{extra / p:.2%} of the plain step (the backward of the extra terms is in the ratio above)")

    big = PseudoLabelBank(7, alpha=0.7)
    for start in range(0, args.bank_ids, 4096):
        ids = [f"flickr-{i}" for i in range(start, min(start + 4096, args.bank_ids))]
        big.update(ids, {"a": torch.rand(len(ids), 7, 7), "b": torch.rand(len(ids), 7, 7)})
    print(f"PL-EMA bank for {len(big):,} ids x 2 models x 7x7 fp16: {big.nbytes() / 1e6:.1f} MB (target <= 64 MB)")


if __name__ == "__main__":
    main()
