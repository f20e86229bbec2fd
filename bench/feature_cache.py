"""Frozen-trunk feature cache for the CPU study protocol (bench/reproduce.py).

The main command trains XPL with frozen pretrained trunks (`--freeze_backbones all`): only the projections and the
map heads learn. Then a trunk's output for a given input never changes, so the trunks can run ONCE per scene and the
heads can train for thousands of steps on 2 CPU cores. This module builds that cache from the package's own
benchmark generator, processor and trunks:

    image trunk (EfficientNet-Lite0, ImageNet)  -> (N, 1280, 7, 7) fp16, one clean view per scene
    branch A audio trunk (VGGish; random offline) -> (N, 128)
    branch B audio trunk (SoundNet-8, pretrained)  -> (N, 1024)
    ground truth (224 x 224 bool, the protocol's rule), every object's box, class and sounding flag

    python -m bench.feature_cache --out /tmp/xpl-study/cache.pt --num_pool 300 --num_unlabeled 3000 \
        --num_validation 500 --num_test 2000

What differs from end-to-end training: the trunks never update, and colour augmentation is a fixed set of views:
`add_views` caches `K` colour-augmented views (the recipe's `ColorRandAugment`, seeded per scene) of every training
scene, from which each branch draws its own view at every visit, as the two models of the recipe see independent
augmentations. Evaluation splits keep one clean view.

For a protocol whose audio top stages train, `add_audio_stems` caches each audio trunk below its last stage(s) as
well (VGGish's fc2 output (N, 3, 4096); SoundNet-8's conv6 output (N, 512, 5) and conv5's (N, 256, 8)).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import soundfile as sf
import torch
from PIL import Image
from tqdm.auto import tqdm

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.data.synthetic import CLASS_NAMES, SyntheticConfig, generate_sample
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.pretrained import load_pretrained_backbones

from .protocol import RANDOM_ALLOWED

SPLITS = ("labeled", "unlabeled", "validation", "test")


def study_model_config(image_size: int = 224, clip_seconds: float = 3.0) -> XPLConfig:
    return XPLConfig(image_backbone_a="efficientnet_lite0", image_backbone_b="efficientnet_lite0",
                     image_size=image_size, clip_seconds=clip_seconds)


@torch.inference_mode()
def build_cache(out: Path, sizes: dict[str, int], seed: int = 0, image_size: int = 224, clip_seconds: float = 3.0,
                batch_size: int = 32, only: tuple[str, int, int] | None = None) -> dict:
    """Cache every split of `sizes`; `only=(split, start, end)` caches rows [start, end) of one split (a part that
    `merge_parts` joins, so that several processes can share the work)."""
    syn = SyntheticConfig(image_size=image_size, clip_seconds=clip_seconds, seed=seed,
                          **{f"num_{k}": v for k, v in sizes.items()})
    config = study_model_config(image_size, clip_seconds)
    torch.manual_seed(seed)  # the same random VGGish (offline) in every process that builds a part
    model = XPLModel(config).eval()
    report = load_pretrained_backbones(model, allow_random=RANDOM_ALLOWED)
    processor = XPLProcessor.from_config(config)
    cache: dict = {"config": config.to_dict(), "pretrained": report, "synthetic": syn.to_json(), "splits": {}}
    jobs = [only] if only else [(split, 0, n) for split, n in sizes.items()]
    for split, first, end in jobs:
        feats, aud_a, aud_b, gts, objects, labels, ids = [], [], [], [], [], [], []
        for start in tqdm(range(first, end, batch_size), desc=f"cache {split}"):
            rows = [generate_sample(syn, split, i) for i in range(start, min(end, start + batch_size))]
            images = [Image.open(io.BytesIO(r["image"]["bytes"])) for r in rows]
            audio = [sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")[0] for r in rows]
            inputs = processor(images=images, audio=audio, sampling_rate=syn.sample_rate)
            feats.append(model.branch_a.image_encoder(inputs["pixel_values"]).half())
            aud_a.append(model.branch_a.audio_encoder(inputs["audio_log_mel"]))
            aud_b.append(model.branch_b.audio_encoder(inputs["audio_waveform"]))
            for r in rows:
                box = (r["true_boxes"] or r["boxes"])[0]
                gts.append(torch.from_numpy(ground_truth_map([box], "union") > 0))
                objects.append(r["objects"])
                labels.append(CLASS_NAMES.index(r["label"]))
                ids.append(r["id"])
        cache["splits"][split] = dict(
            image=torch.cat(feats), audio_a=torch.cat(aud_a), audio_b=torch.cat(aud_b), gt=torch.stack(gts),
            labels=torch.tensor(labels), objects=objects, ids=ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cache, out)
    return cache


def cached_benchmark(cache: dict) -> SyntheticConfig:
    """The benchmark settings a cache was built from (``cache["synthetic"]``, stored as JSON: lists for tuples)."""
    return SyntheticConfig(**{k: (tuple(v) if k == "snr_db" else v) for k, v in cache["synthetic"].items()})


@torch.inference_mode()
def recompute_vggish(cache: dict, seed: int = 0, batch_size: int = 64) -> None:
    """Recompute branch A's audio features of every split with the VGGish of `seed` (in place)."""
    syn = cached_benchmark(cache)
    config = study_model_config(syn.image_size, syn.clip_seconds)
    torch.manual_seed(seed)
    model = XPLModel(config).eval()
    load_pretrained_backbones(model, allow_random=RANDOM_ALLOWED)
    processor = XPLProcessor.from_config(config)
    for split, data in cache["splits"].items():
        feats = []
        for start in tqdm(range(0, len(data["ids"]), batch_size), desc=f"vggish {split}"):
            ids = data["ids"][start:start + batch_size]
            rows = [generate_sample(syn, split, int(i.rsplit("-", 1)[1])) for i in ids]
            assert [r["id"] for r in rows] == ids, "cache ids do not match the generator"
            audio = [sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")[0] for r in rows]
            inputs = processor(images=[Image.open(io.BytesIO(r["image"]["bytes"])) for r in rows], audio=audio,
                               sampling_rate=syn.sample_rate)
            feats.append(model.branch_a.audio_encoder(inputs["audio_log_mel"]))
        data["audio_a"] = torch.cat(feats)


@torch.inference_mode()
def add_views(cache: dict, views: int = 4, splits: tuple[str, ...] = ("labeled", "unlabeled"), seed: int = 0,
              batch_size: int = 32) -> None:
    """Add ``image_views`` (N, views, C, h, w) fp16 to each of `splits`: the image trunk's output on `views`
    colour-augmented copies of every scene (`ColorRandAugment(num_ops=2, magnitude=9)`, the recipe's), each scene's
    draws seeded by (seed, split, index). When the cache is PCA-reduced (``cache["pca"]``) the views are projected
    on the same basis."""
    from xpl_hf.data.augment import ColorRandAugment

    syn = cached_benchmark(cache)
    config = study_model_config(syn.image_size, syn.clip_seconds)
    model = XPLModel(config).eval()
    load_pretrained_backbones(model, allow_random=RANDOM_ALLOWED)
    processor = XPLProcessor.from_config(config)
    augment = ColorRandAugment(num_ops=2, magnitude=9)
    pca = cache.get("pca")
    for s_index, split in enumerate(splits):
        data = cache["splits"][split]
        out = []
        for start in tqdm(range(0, len(data["ids"]), batch_size), desc=f"views {split}"):
            ids = data["ids"][start:start + batch_size]
            pixels = []
            for sample_id in ids:
                index = int(sample_id.rsplit("-", 1)[1])
                row = generate_sample(syn, split, index)
                assert row["id"] == sample_id, "cache ids do not match the generator"
                image = processor.load_image(row["image"]["bytes"], target_size=syn.image_size)
                torch.manual_seed(1_000_003 * seed + 10_007 * s_index + index)
                pixels += [processor.image_to_tensor(augment(image)) for _ in range(views)]
            feats = model.branch_a.image_encoder(torch.stack(pixels)).float()
            if pca is not None:
                feats = torch.einsum("nchw,ck->nkhw", feats - pca["mean"][None, :, None, None], pca["basis"])
            out.append(feats.half().unflatten(0, (len(ids), views)))
        data["image_views"] = torch.cat(out)


@torch.inference_mode()
def add_audio_stems(cache: dict, tops: dict[str, tuple[int, ...]] | None = None, seed: int = 0,
                    batch_size: int = 50, check_rows: int = 8) -> None:
    """Add each audio trunk's stem below its last ``top`` stages (`xpl_hf.backbones.Trunk.forward_stem`) to every
    split, as ``audio_a_top<k>`` / ``audio_b_top<k>`` (fp16), for a protocol whose audio top stages train.

    The trunks are the cache's own (VGGish random with the cache's seed, SoundNet-8 pretrained), so that
    ``forward_top(stem, k)`` gives back the cached ``audio_a`` / ``audio_b``: checked on the first `check_rows`
    scenes of every split (a mismatch raises instead of caching stems of another trunk).
    """
    tops = tops or {"a": (1,), "b": (1, 2)}
    syn = cached_benchmark(cache)
    config = XPLConfig(**cache["config"])
    torch.manual_seed(seed)  # build_cache's random VGGish
    model = XPLModel(config).eval()
    load_pretrained_backbones(model, allow_random=RANDOM_ALLOWED)
    processor = XPLProcessor.from_config(config)
    trunks = {"a": (model.branch_a.audio_encoder, "audio_log_mel"), "b": (model.branch_b.audio_encoder,
                                                                         "audio_waveform")}
    for split, data in cache["splits"].items():
        stems: dict[str, list[torch.Tensor]] = {f"audio_{b}_top{k}": [] for b, ks in tops.items() for k in ks}
        for start in tqdm(range(0, len(data["ids"]), batch_size), desc=f"audio stems {split}"):
            ids = data["ids"][start:start + batch_size]
            rows = [generate_sample(syn, split, int(i.rsplit("-", 1)[1])) for i in ids]
            if [r["id"] for r in rows] != ids:
                raise ValueError("cache ids do not match the generator")
            audio = [sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")[0] for r in rows]
            inputs = processor(audio=audio, sampling_rate=syn.sample_rate)
            for branch, ks in tops.items():
                trunk, key = trunks[branch]
                for k in ks:
                    stem = trunk.forward_stem(inputs[key], k)
                    if start == 0:
                        got = trunk.forward_top(stem[:check_rows].half().float(), k)
                        want = data[f"audio_{branch}"][:check_rows].float()
                        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
                        if err > 2e-2:
                            raise ValueError(f"{split}: audio_{branch} stem (top {k}) does not give back the cached "
                                             f"features (relative error {err:.3g}): another trunk than the cache's")
                    stems[f"audio_{branch}_top{k}"].append(stem.half())
        data.update({name: torch.cat(parts) for name, parts in stems.items()})


def merge_parts(parts: list[Path], out: Path) -> dict:
    """Join caches of parts (same config) split by split, in the order given."""
    caches = [torch.load(p, weights_only=True) for p in parts]
    merged = {k: v for k, v in caches[0].items() if k != "splits"}
    merged["splits"] = {}
    for cache in caches:
        for split, data in cache["splits"].items():
            if split not in merged["splits"]:
                merged["splits"][split] = data
                continue
            into = merged["splits"][split]
            for key, value in data.items():
                into[key] = torch.cat([into[key], value]) if torch.is_tensor(value) else into[key] + value
    torch.save(merged, out)
    return merged


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--num_pool", type=int, default=300, help="labelled pool; each seed draws its labels from it")
    p.add_argument("--num_unlabeled", type=int, default=3000)
    p.add_argument("--num_validation", type=int, default=500)
    p.add_argument("--num_test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="benchmark seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs=3, metavar=("SPLIT", "START", "END"), help="cache rows [START, END) of one split")
    p.add_argument("--merge", type=Path, nargs="+", help="join these part caches into --out instead")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t = time.time()
    if args.merge:
        merge_parts(args.merge, args.out)
    else:
        only = (args.only[0], int(args.only[1]), int(args.only[2])) if args.only else None
        build_cache(args.out, {"labeled": args.num_pool, "unlabeled": args.num_unlabeled,
                               "validation": args.num_validation, "test": args.num_test}, seed=args.seed, only=only)
    print(f"cache written to {args.out} in {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
