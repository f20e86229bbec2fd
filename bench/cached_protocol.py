"""The CPU study protocol: XPL's method rows trained on a frozen-trunk feature cache (bench/feature_cache.py).

With frozen trunks only the heads learn (`AVSLBranch.forward_features`: 1x1 visual projection, audio projection,
the map's scale and bias), so one cache serves thousands of head steps per run on 2 CPU cores. Every loss, the
PL-EMA bank and the curriculum are the package's own (`xpl_hf.objective.compute_losses`); only the data path differs
from `train_xpl.py` (cached trunk outputs instead of decoded media; colour augmentation as 4 cached views per
training scene, of which each branch draws its own per visit).

A seed fixes the labelled draw (`num_labeled` scenes from the labelled pool, stratified by class), the heads'
initialisation and the data order. Model selection: the last step, for every row (no validation-based choice,
so no selection noise and one rule for all rows). Validation scores are for choosing the protocol's settings; the
test split is scored once per protocol run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch

from xpl_hf import XPLConfig, XPLModel
from xpl_hf.losses import downsample_gt
from xpl_hf.maps import minmax_normalize
from xpl_hf.method import XPLMethod
from xpl_hf.metrics.listening import select_objects
from xpl_hf.metrics.protocol import binarize_maps, ciou_scores, normalize_maps, summarize_ciou, upsample_maps
from xpl_hf.modeling_xpl import XPLModelOutput
from xpl_hf.objective import compute_losses

BRANCHES = ("a", "b", "fused")


@dataclasses.dataclass
class StudySettings:
    """One run's settings (everything but the method)."""

    num_labeled: int = 30
    steps: int = 2000
    warmup_steps: int = 500
    labeled_batch: int = 16
    unlabeled_batch: int = 48
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    embed_dim: int = 512
    eval_every: int = 0  # 0: evaluate validation at the end only
    views: bool = False  # each branch draws its own colour-augmented view per visit (cache["splits"][s]["image_views"])
    feature_dropout: float = 0.0  # probe: per-visit, per-branch dropout on the training image features (0: off)


def draw_labeled(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` pool indices, stratified by class (as even as possible), for `seed`."""
    g = torch.Generator().manual_seed(10_000 + seed)
    classes = labels.unique()
    per_class = {int(c): (labels == c).nonzero().flatten() for c in classes}
    order = [per_class[int(c)][torch.randperm(len(per_class[int(c)]), generator=g)] for c in classes]
    picked, k = [], 0
    while len(picked) < n:
        for rows in order:
            if k < len(rows) and len(picked) < n:
                picked.append(int(rows[k]))
        k += 1
    return torch.tensor(sorted(picked))


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


class HeadModel(torch.nn.Module):
    """XPLModel's trainable part on cached trunk outputs; returns an `XPLModelOutput` like the full model."""

    def __init__(self, config: XPLConfig, image_channels: int | None = None):
        super().__init__()
        full = XPLModel(config)
        for branch in (full.branch_a, full.branch_b):  # the trunks are frozen and cached: drop them
            del branch.image_encoder, branch.audio_encoder
            if image_channels is not None:  # PCA-reduced image features (reduce_image_features)
                proj = torch.nn.Conv2d(image_channels, config.embed_dim, kernel_size=1)
                full._init_weights(proj)
                branch.visual_proj = proj
        self.branch_a, self.branch_b = full.branch_a, full.branch_b

    def forward(self, image: torch.Tensor, audio_a: torch.Tensor, audio_b: torch.Tensor,
                image_b: torch.Tensor | None = None) -> XPLModelOutput:
        """image: cached image features (B, C, h, w) of branch A's view (and B's when `image_b` is None)."""
        out_a = self.branch_a.forward_features(image, audio_a)
        out_b = self.branch_b.forward_features(image if image_b is None else image_b, audio_b)
        return XPLModelOutput(
            maps=0.5 * (minmax_normalize(out_a.maps) + minmax_normalize(out_b.maps)),
            maps_a=out_a.maps, maps_b=out_b.maps, similarity_a=out_a.similarity, similarity_b=out_b.similarity,
            visual_features_a=out_a.visual_features, visual_features_b=out_b.visual_features,
            audio_embeds_a=out_a.audio_embeds, audio_embeds_b=out_b.audio_embeds)


def _epochs(n: int, batch: int, g: torch.Generator):
    """Endless batches of indices in [0, n), a fresh permutation per epoch."""
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            yield perm[i:i + batch]


@torch.no_grad()
def predict(model: HeadModel, split: dict, audio_order: torch.Tensor | None = None,
            audio_override: dict | None = None, chunk: int = 500) -> dict[str, torch.Tensor]:
    """Maps (N, h, w) of branches a, b and fused; `audio_order` permutes the sounds, `audio_override` gives
    one audio feature per branch for every scene (silence, noise)."""
    model.eval()
    n = len(split["image"])
    outs = {k: [] for k in BRANCHES}
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk))
        arows = rows if audio_order is None else audio_order[rows]
        if audio_override is None:
            aa, ab = split["audio_a"][arows], split["audio_b"][arows]
        else:
            aa = audio_override["a"].expand(len(rows), -1)
            ab = audio_override["b"].expand(len(rows), -1)
        out = model(split["image"][rows].float(), aa, ab)
        outs["a"].append(out.maps_a)
        outs["b"].append(out.maps_b)
        outs["fused"].append(out.maps)
    model.train()
    return {k: torch.cat(v) for k, v in outs.items()}


def score(maps: torch.Tensor, gt: torch.Tensor, objects: list[list[dict]]) -> dict[str, Any]:
    """Protocol cIoU per scene + object selection (`xpl_hf.metrics.listening.select_objects`: the sounding object's
    box has the highest mean map value; a k-way tie scores s / k)."""
    ciou = ciou_scores(binarize_maps(normalize_maps(upsample_maps(maps))), gt).numpy()
    return {"ciou": ciou, "selected": select_objects(maps, objects)["score"]}


def summarize(scores: dict[str, Any]) -> dict[str, float]:
    s = summarize_ciou(scores["ciou"])
    return {"ciou": s["ciou"], "auc": s["auc"], "select": 100.0 * float(np.mean(scores["selected"]))}


def swap_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """For each scene, another scene whose sounding class differs (seeded)."""
    g = torch.Generator().manual_seed(777 + seed)
    n = len(labels)
    order = torch.randperm(n, generator=g)
    for _ in range(20):
        bad = (labels[order] == labels).nonzero().flatten()
        if len(bad) == 0:
            break
        order[bad] = order[bad[torch.randperm(len(bad), generator=g)]]
        still = bad[labels[order[bad]] == labels[bad]]
        if len(still):
            order[still] = torch.randint(0, n, (len(still),), generator=g)
    return order


def train_run(cache: dict, method: XPLMethod, seed: int, settings: StudySettings, *,
              eval_splits: tuple[str, ...] = ("validation",), log=print) -> dict[str, Any]:
    """Train the heads with `method` for `seed`; score `eval_splits` at the end (true and swapped sound)."""
    torch.manual_seed(seed)
    cfg = cache["config"]
    config = XPLConfig(**{**cfg, "embed_dim": settings.embed_dim, "vggish_fc_dim": 8})
    channels = cache["splits"]["labeled"]["image"].shape[1] if "pca" in cache else None
    model = HeadModel(config, image_channels=channels)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    def lr_factor(s: int) -> float:  # 100 linear warm-up steps, cosine decay to 0 over the run
        return min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, settings.steps) / settings.steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    pool, unl = cache["splits"]["labeled"], cache["splits"]["unlabeled"]
    for split in (pool, unl):  # L_sup's target at the map's size, once (downsample_gt is then a no-op)
        if "gt_map" not in split:
            split["gt_map"] = downsample_gt(split["gt"], config.map_size)
    lab_idx = draw_labeled(pool["labels"], settings.num_labeled, seed)
    g = torch.Generator().manual_seed(seed)
    lab_iter = _epochs(len(lab_idx), min(settings.labeled_batch, len(lab_idx)), g)
    unl_iter = _epochs(len(unl["image"]), settings.unlabeled_batch, g)
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

    bank = method.make_bank(config.map_size) if method.pseudo_labels == "soft" else None
    selector = method.make_selector() if method.pseudo_labels is not None else None
    t0 = time.time()
    history = []
    for step in range(settings.steps):
        li = lab_idx[next(lab_iter)]
        stage2 = method.uses_unlabeled and step >= settings.warmup_steps
        ui = next(unl_iter) if stage2 else torch.empty(0, dtype=torch.long)
        (lab_a, lab_b), (unl_a, unl_b) = images(pool, li), images(unl, ui)
        image = torch.cat([lab_a, unl_a])
        image_b = None if lab_b is None else torch.cat([lab_b, unl_b])
        audio_a = torch.cat([pool["audio_a"][li], unl["audio_a"][ui]])
        audio_b = torch.cat([pool["audio_b"][li], unl["audio_b"][ui]])
        gt = torch.cat([pool["gt_map"][li], unl["gt_map"][ui]])
        is_labeled = torch.cat([torch.ones(len(li), dtype=torch.bool), torch.zeros(len(ui), dtype=torch.bool)])
        ids = [pool["ids"][i] for i in li.tolist()] + [unl["ids"][i] for i in ui.tolist()]
        if method.oracle_labels:
            is_labeled = torch.ones_like(is_labeled)
        batch = {"is_labeled": is_labeled, "gt_maps": gt, "ids": ids}
        logging = step % 250 == 0 or step == settings.steps - 1
        if logging:  # diagnostics only (pseudo-label quality against the true boxes): never in a loss
            batch["true_gt_maps"] = torch.cat([pool["gt"][li], unl["gt"][ui]]).float()
        out = model(image, audio_a, audio_b, image_b)
        loss, logs = compute_losses(out, batch, method, bank=bank, selector=selector,
                                    pl_step=max(0, step - settings.warmup_steps), diagnostics=logging)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if logging:
            entry = {"step": step, "loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}}
            history.append(entry)
    result: dict[str, Any] = {"method": method.name, "seed": seed, "train_s": time.time() - t0, "history": history,
                              "labeled_ids": [pool["ids"][i] for i in lab_idx.tolist()]}
    for name in eval_splits:
        split = cache["splits"][name]
        true_maps = predict(model, split)
        swapped = predict(model, split, audio_order=swap_order(split["labels"], 0))
        per = {"true": {b: score(true_maps[b], split["gt"], split["objects"]) for b in BRANCHES},
               "swapped": {b: score(swapped[b], split["gt"], split["objects"]) for b in BRANCHES}}
        result[name] = {v: {b: summarize(s) for b, s in d.items()} for v, d in per.items()}
        result["chance_select"] = 100.0 * float(np.mean([1.0 / len(o) for o in split["objects"]]))
        result[name + "_per_scene"] = {v: {b: {"ciou": s["ciou"].tolist(), "selected": s["selected"].tolist()}
                                           for b, s in d.items()} for v, d in per.items()}
    result["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return result
