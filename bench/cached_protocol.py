"""The CPU study protocol: XPL's method rows trained on a frozen-trunk feature cache (bench/feature_cache.py).

With frozen trunks only the heads learn (1x1 visual projection, audio projection, the map's scale and bias), and
with `audio_top_a` / `audio_top_b` also the audio trunks' top stages (VGGish's fc3, SoundNet-8's conv7) on cached
stems, so one cache serves thousands of steps per run on 2 CPU cores. A run is the recipe's cached-feature path: an
`XPLModel` with its trunks frozen but those top stages (`xpl_hf.optimization.freeze_backbones`), run on the cache by
`xpl_hf.modeling_xpl.XPLFromTrunkFeatures`, and trained by `xpl_hf.trainer.TrainingStep` (stage switch, the
full-supervision ceiling's labels, eq. 9, gradient clipping at 1.0, AdamW with `xpl_hf.optimization.parameter_groups`
and transformers' cosine schedule, the PL-EMA bank and curriculum of `XPLMethod.make_bank` / `make_selector`). Only
the data differ from `train_xpl.py`: the PCA-reduced cache of bench/feature_cache.py, and colour augmentation as 4
cached views per training scene, of which each branch draws its own per visit.

A seed fixes the labelled draw (`num_labeled` scenes from the labelled pool, stratified by class), the heads'
initialisation and the data order. Model selection: the last step, for every row (no validation-based choice,
so no selection noise and one rule for all rows). Validation scores are for choosing the protocol's settings; the
test split is scored once per protocol run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import transformers

from xpl_hf import XPLConfig, XPLModel
from xpl_hf.data.streams import LabeledBatches, sample_seed
from xpl_hf.losses import downsample_gt
from xpl_hf.method import XPLMethod
from xpl_hf.modeling_xpl import TopStages, XPLFromTrunkFeatures
from xpl_hf.optimization import freeze_backbones, parameter_groups
from xpl_hf.pretrained import load_pretrained_backbones
from xpl_hf.trainer import TrainingStep

from .protocol import (
    BRANCHES,
    RANDOM_ALLOWED,
    chance_select,
    confidences,
    draw_labeled,
    gt_areas,
    lr_warmup_steps,
    per_scene,
    score,
    summarize,
    swapped_sound_order,
)


@dataclasses.dataclass
class StudySettings:
    """One run's settings (everything but the method)."""

    num_labeled: int = 30
    steps: int = 2000
    warmup_steps: int = 500
    labeled_batch: int = 16
    unlabeled_batch: int = 48
    learning_rate: float = 1e-3  # the rate of records that lack it; bench.reproduce's default is 3e-3 since 0.4.1
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0  # the recipe's gradient clipping
    embed_dim: int = 512
    eval_every: int = 0  # 0: evaluate validation at the end only
    views: bool = False  # each branch draws its own colour-augmented view per visit (cache["splits"][s]["image_views"])
    feature_dropout: float = 0.0  # probe: per-visit, per-branch dropout on the training image features (0: off)
    audio_top_a: int = 0  # top stages of branch A's VGGish that train (1: fc3), on the cache's audio_a_top<k> stems
    audio_top_b: int = 0  # top stages of branch B's SoundNet-8 that train (1: conv7, 2: conv6-7), pretrained start
    backbone_scale: float = 0.1  # learning-rate factor of a pretrained trunk's top stages (the recipe's default)

    def audio_key(self, branch: str) -> str:
        """The cache entry a branch's audio input comes from: the trunk's output, or its stem below the top stages
        that train (bench/feature_cache.py add_audio_stems)."""
        top = getattr(self, f"audio_top_{branch}")
        return f"audio_{branch}" if top == 0 else f"audio_{branch}_top{top}"


@torch.no_grad()
def reduce_image_features(cache: dict, k: int = 256, sample_positions: int = 40_000) -> dict:
    """Project every split's cached image features (N, 1280, h, w) on the top-`k` principal directions of the
    unlabelled split's per-position features: z = U^T (x - mu) (N, k, h, w).

    The 1x1 visual projection is linear, so a projection learnt on z folds exactly into one on x
    (`fold_visual_projection`); the proxy restricts it to the k-dim principal subspace (k = 256 keeps most of the
    variance: the fraction is stored as `cache["pca"]["explained"]`) and makes a head step ~5x cheaper.
    """
    x = cache["splits"]["unlabeled"]["image"].float()
    pos = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    g = torch.Generator().manual_seed(0)
    pos = pos[torch.randperm(len(pos), generator=g)[:sample_positions]]
    mean = pos.mean(0)
    cov = torch.cov((pos - mean).T)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    basis = eigvecs[:, -k:].flip(1)  # (1280, k), largest first
    explained = float(eigvals[-k:].sum() / eigvals.sum())
    for split in cache["splits"].values():
        feats = split["image"].float()
        split["image"] = torch.einsum("nchw,ck->nkhw", feats - mean[None, :, None, None], basis).half()
    cache["pca"] = {"basis": basis, "mean": mean, "explained": explained}
    return cache


def study_model(cache: dict, settings: StudySettings) -> tuple[XPLFromTrunkFeatures, list[torch.nn.Module], dict]:
    """The cache's `XPLModel` (embedding size from `settings`) with every trunk frozen but the audio top stages that
    `settings` name, run on cached trunk outputs or stems (`XPLFromTrunkFeatures`); its frozen trunks; and what
    loaded each trunk (`load_pretrained_backbones`' report: SoundNet-8's top stages start pretrained). On a
    PCA-reduced cache (`reduce_image_features`) each branch's 1x1 visual projection reads the k principal components."""
    fc_dim = 4096 if settings.audio_top_a else 8  # VGGish's FC layers exist only when fc3 trains on fc2's output
    config = XPLConfig(**{**cache["config"], "embed_dim": settings.embed_dim, "vggish_fc_dim": fc_dim})
    model = XPLModel(config)
    report: dict = {}
    if settings.audio_top_b:  # the top stages start from the trunk whose stems are cached
        report = load_pretrained_backbones(model, skip=("efficientnet_lite0", "resnet18", "vggish"),
                                           allow_random=RANDOM_ALLOWED)
    if "pca" in cache:
        channels = cache["splits"]["labeled"]["image"].shape[1]
        for branch in (model.branch_a, model.branch_b):
            proj = torch.nn.Conv2d(channels, config.embed_dim, kernel_size=1)
            torch.nn.init.kaiming_normal_(proj.weight, mode="fan_out", nonlinearity="relu")  # XPLModel's conv init
            torch.nn.init.zeros_(proj.bias)
            branch.visual_proj = proj
    top = TopStages(audio_a=settings.audio_top_a, audio_b=settings.audio_top_b)  # 0, 0: only the heads train
    frozen = freeze_backbones(model, "all", top)
    return XPLFromTrunkFeatures(model, top), frozen, report


@torch.no_grad()
def predict(model: XPLFromTrunkFeatures, split: dict, audio_order: torch.Tensor | None = None, chunk: int = 500,
            audio_keys: tuple[str, str] = ("audio_a", "audio_b")) -> dict[str, torch.Tensor]:
    """Maps (N, h, w) of branches a, b and fused; `audio_order` permutes the sounds; `audio_keys`: the cache entries
    of the two branches' audio inputs (trunk outputs, or stems below the audio top stages)."""
    model.eval()
    n = len(split["image"])
    outs = {k: [] for k in BRANCHES}
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk))
        arows = rows if audio_order is None else audio_order[rows]
        aa, ab = split[audio_keys[0]][arows].float(), split[audio_keys[1]][arows].float()
        out = model(image_features=split["image"][rows].float(), audio_features_a=aa, audio_features_b=ab)
        outs["a"].append(out.maps_a)
        outs["b"].append(out.maps_b)
        outs["fused"].append(out.maps)
    model.train()
    return {k: torch.cat(v) for k, v in outs.items()}


def train_run(cache: dict, method: XPLMethod, seed: int, settings: StudySettings, *,
              eval_splits: tuple[str, ...] = ("validation",), log=print) -> dict[str, Any]:
    """Train the heads with `method` for `seed` (`TrainingStep`, as train_xpl.py); score `eval_splits` at the end
    (true and swapped sound): summaries, and per scene each map's cIoU, object selection and confidence
    (`<split>_per_scene`, for the extended protocol) and the ground-truth areas (`<split>_gt_area`)."""
    torch.manual_seed(seed)
    model, frozen, weights_report = study_model(cache, settings)
    map_size = model.model.config.map_size
    audio_keys = (settings.audio_key("a"), settings.audio_key("b"))
    optimizer = torch.optim.AdamW(parameter_groups(model.model, settings.learning_rate, settings.backbone_scale,
                                                   weights_report),
                                  weight_decay=settings.weight_decay)
    scheduler = transformers.get_scheduler("cosine", optimizer, num_warmup_steps=lr_warmup_steps(settings.steps),
                                           num_training_steps=settings.steps)
    step_fn = TrainingStep(model, optimizer, method, bank=method.make_bank(map_size), selector=method.make_selector(),
                           warmup_stage_steps=settings.warmup_steps, scheduler=scheduler,
                           max_grad_norm=settings.max_grad_norm, frozen=frozen)
    pool, unl = cache["splits"]["labeled"], cache["splits"]["unlabeled"]
    for split in (pool, unl):  # L_sup's target at the map's size, once (downsample_gt is then a no-op)
        if "gt_map" not in split:
            split["gt_map"] = downsample_gt(split["gt"], map_size)
    lab_idx = draw_labeled(pool["labels"], settings.num_labeled, seed)
    lab_iter = iter(LabeledBatches(len(lab_idx), min(settings.labeled_batch, len(lab_idx)), seed))
    unl_iter = iter(LabeledBatches(len(unl["image"]), settings.unlabeled_batch, sample_seed(seed, "unlabeled")))
    if settings.views and "image_views" not in pool:
        raise ValueError("settings.views needs a cache with image_views (bench/feature_cache.py add_views)")
    view_gen = torch.Generator().manual_seed(50_000 + seed)  # its own stream: the data order stays the same
    drop_gen = torch.Generator().manual_seed(60_000 + seed)

    def dropout(x: torch.Tensor) -> torch.Tensor:
        """The probe's per-visit feature noise (a stand-in for a fresh augmentation per visit); identity at 0."""
        p = settings.feature_dropout
        if p == 0:
            return x
        return x * (torch.rand(x.shape, generator=drop_gen) >= p) / (1 - p)

    def images(split: dict, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Branch A's and B's image features for `rows`: independent augmented views, or the one clean view."""
        if not settings.views:
            clean = split["image"][rows].float()
            return (dropout(clean), dropout(clean)) if settings.feature_dropout else (clean, None)
        k = split["image_views"].shape[1]
        va, vb = torch.randint(k, (2, len(rows)), generator=view_gen)
        return dropout(split["image_views"][rows, va].float()), dropout(split["image_views"][rows, vb].float())

    def batch_of(split: dict, rows: torch.Tensor, labeled: bool, full_maps: bool) -> dict:
        """One labelled or unlabelled batch for `TrainingStep.assemble`: each branch's image features, both audio
        features, gt_maps (zeros for unlabelled rows, whose truth travels as true_gt_maps: the full-supervision
        ceiling and the diagnostics only), at the map's size, or at 224 x 224 on diagnostics steps."""
        image_a, image_b = images(split, rows)
        gt = split["gt" if full_maps else "gt_map"][rows].float()
        batch = {"image_features": image_a, "audio_features_a": split[audio_keys[0]][rows].float(),
                 "audio_features_b": split[audio_keys[1]][rows].float(),
                 "gt_maps": gt if labeled else torch.zeros_like(gt),
                 "is_labeled": torch.full((len(rows),), labeled), "ids": [split["ids"][i] for i in rows.tolist()]}
        if image_b is not None:
            batch["image_features_b"] = image_b
        if not labeled and (full_maps or method.oracle_labels):
            batch["true_gt_maps"] = gt
        return batch

    t0 = time.time()
    history = []
    for step in range(settings.steps):
        logging = step % 250 == 0 or step == settings.steps - 1  # diagnostics (never in a loss) on these steps
        labeled = batch_of(pool, lab_idx[next(lab_iter)], True, logging)
        unlabeled = (batch_of(unl, torch.tensor(next(unl_iter)), False, logging) if step_fn.in_stage2(step)
                     else None)
        out = step_fn(step_fn.assemble(labeled, unlabeled), step, log_diagnostics=logging, check_finite=logging)
        if logging:
            step_fn.running.pop()  # the history keeps this step's own values
            history.append({"step": step, "loss": float(out.loss.detach()),
                            **{k: float(v) for k, v in out.logs.items()}})
    result: dict[str, Any] = {"method": method.name, "seed": seed, "train_s": time.time() - t0, "history": history,
                              "labeled_ids": [pool["ids"][i] for i in lab_idx.tolist()], "weights": weights_report}
    for name in eval_splits:
        split = cache["splits"][name]
        true_maps = predict(model, split, audio_keys=audio_keys)
        swapped = predict(model, split, audio_order=swapped_sound_order(split["labels"]), audio_keys=audio_keys)
        maps = {"true": true_maps, "swapped": swapped}
        per = {v: {b: score(m[b], split["gt"], split["objects"]) for b in BRANCHES} for v, m in maps.items()}
        conf = {v: confidences(m) for v, m in maps.items()}
        result[name] = {v: {b: summarize(s) for b, s in d.items()} for v, d in per.items()}
        result["chance_select"] = chance_select(split["objects"])
        result[name + "_per_scene"] = {v: {b: per_scene(s, conf[v][b]) for b, s in d.items()}
                                       for v, d in per.items()}
        result[name + "_gt_area"] = gt_areas(split["gt"]).tolist()
    result["state_dict"] = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    return result
