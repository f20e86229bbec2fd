"""Does XPL pay? The CPU decision protocol: the method rows x paired seeds on a frozen-trunk feature cache.

    python -m bench.reproduce                # 6 rows + 4 ablations x 5 seeds, test split (results/README.md)
    python -m bench.reproduce --quick        # 5 main rows x 3 seeds
    python -m bench.reproduce --split validation --rows xpl --seeds 2   # exploring: validation only
    python -m bench.reproduce --report_only  # rewrite tables from <out>/raw/

Data: the package's synthetic benchmark (seed 0) at 224 px (7 x 7 maps) with 3 s clips: a labelled pool of 300
scenes (each seed draws `--num_labeled` 30 of them, 3 per class: ~1.8% of the training data, as in the paper), 1,600
unlabelled scenes (53x the labels; 48 per step over 900 stage-2 steps of 1,200, so each is visited ~27 times), 500
validation and 2,000 test scenes. Each training scene has 4 cached colour-augmented views; at every visit each
branch draws its own (`--clean_view`: the one clean view of version 0.3.0). Frozen pretrained trunks
(EfficientNet-Lite0 images, SoundNet-8 for B, VGGish for A: random offline) run once per view
(bench/feature_cache.py); the image features are reduced to their 256 principal directions (a linear map that folds
into the 1x1 projection; see bench/cached_protocol.py). The audio trunks' top stages train with the heads
(`--audio_top_a 1`: VGGish's fc3 on cached fc2 outputs; `--audio_top_b 1`: SoundNet-8's conv7, from its pretrained
weights, on cached conv6 outputs; 0 and 0: only the heads train, the protocol of version 0.4.0). The image trunk's
top stage stays frozen: on 2 cores it would cost ~3x a step (results/README.md). Each run trains with the package's
training step (`xpl_hf.trainer.TrainingStep`: eq. 9, PL-EMA bank, curriculum, clipping, AdamW, cosine schedule); a seed
fixes the labelled draw, the initialisation and the data order, and every row uses the same seeds, so differences are
paired. Model selection: the last step, for every row.

Writes <out>/raw/<row>/seed<k>.json (summaries; per scene each map's cIoU, object selection and confidence with the
true and the swapped sound, and the ground-truth areas; training log), tables.md and summary.json. Besides cIoU, AUC
and object selection, the tables give the extended protocol of every row (`xpl_hf.metrics.extended`: AP and max-F1 at
cIoU 0.5 and 0.75 with the swapped sound as negatives, and cIoU by box size). Rerunning skips finished runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

from .protocol import ROWS, load_records, raw_path, row_method, run_extended, run_sizes, write_record

MAIN_ROWS = ["sup_only", "sup_contrastive", "hard_pl", "xpl", "xpl-T0.3", "full_supervision"]
ABLATION_ROWS = ["xpl-no_pl_ema", "xpl-no_cross_refine", "xpl-no_sharpening", "xpl-no_data_selection"]  # Table 2(b)
QUICK_ROWS = [r for r in MAIN_ROWS if r != "xpl-T0.3"]
CACHE_SIZES = dict(num_pool=300, num_unlabeled=1600, num_validation=500, num_test=2000)
METRICS = ("select", "ciou", "auc")
EXTENDED_METRICS = {"ap50": "AP@0.5", "max_f1_50": "max-F1@0.5", "ap75": "AP@0.75", "max_f1_75": "max-F1@0.75",
                    "roc_auc": "ROC AUC"}  # extended_protocol's keys (%) in the report, with their column names
PAIRED_METRICS = ("select", "ciou", "ap50", "max_f1_50")


# ------------------------------------------------------------------------------------------------------ running

def _run_one(job: tuple) -> str:
    cache_path, row, seed, settings, split, out, threads, method_settings = job
    import torch

    from .cached_protocol import StudySettings, train_run

    torch.set_num_threads(threads)
    cache = _load_cache(cache_path)
    method = row_method(row, settings["steps"], settings["warmup_steps"], **method_settings)
    result = train_run(cache, method, seed, StudySettings(**settings), eval_splits=(split,))
    result.pop("state_dict")
    result.update(row=row, split=split, settings=settings, method_settings=method.to_dict())
    write_record(raw_path(out, row, seed), result)
    summary, extended = result[split]["true"]["fused"], run_extended(result)["fused"]
    return (f"{row} seed {seed}: {split} fused select {summary['select']:.1f} CIoU {summary['ciou']:.1f} "
            f"(swapped sound: {result[split]['swapped']['fused']['ciou']:.1f}) AP@0.5 {extended['ap50']:.1f} "
            f"max-F1@0.5 {extended['max_f1_50']:.1f} in {result['train_s']:.0f} s")


_CACHE: dict = {}


def _load_cache(path: str) -> dict:
    if path not in _CACHE:
        import torch

        _CACHE[path] = torch.load(path, weights_only=True)  # tensors and plain containers only
    return _CACHE[path]


def ensure_cache(path: Path, threads: int, views: bool = False, audio_stems: bool = False) -> Path:
    """The PCA-reduced feature cache at `path`, built on first use (bench/feature_cache.py); with `views`, with 4
    colour-augmented views of every training scene (`feature_cache.add_views`, added on first use); with
    `audio_stems`, with the audio trunks' stems below their top stages (`feature_cache.add_audio_stems`, idem)."""
    import torch

    from .cached_protocol import reduce_image_features
    from .feature_cache import add_audio_stems, add_views, build_cache

    torch.set_num_threads(threads)
    if not path.is_file():
        full = path.with_name(path.stem + "-full.pt")
        cache = torch.load(full, weights_only=True) if full.is_file() else build_cache(
            full, {"labeled": CACHE_SIZES["num_pool"], "unlabeled": CACHE_SIZES["num_unlabeled"],
                   "validation": CACHE_SIZES["num_validation"], "test": CACHE_SIZES["num_test"]})
        reduce_image_features(cache)
        torch.save(cache, path)
    if not (views or audio_stems):
        return path
    cache = torch.load(path, weights_only=True, mmap=True)  # memory-mapped: checking the keys reads no tensor
    missing_views = views and "image_views" not in cache["splits"]["labeled"]
    missing_stems = audio_stems and "audio_a_top1" not in cache["splits"]["labeled"]
    if missing_views or missing_stems:
        cache = torch.load(path, weights_only=True)  # in memory: the additions are written back
    if missing_views:
        add_views(cache)
    if missing_stems:
        add_audio_stems(cache)
    if missing_views or missing_stems:
        tmp = path.with_suffix(".tmp")
        torch.save(cache, tmp)
        tmp.replace(path)
    return path


# -------------------------------------------------------------------------------------------------- statistics

def t_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, std, and the two-sided `level` Student-t interval of paired differences; p-value of mean = 0."""
    from scipy import stats

    n = len(diffs)
    mean, std = float(np.mean(diffs)), float(np.std(diffs, ddof=1)) if n > 1 else float("nan")
    if n < 2 or std == 0:
        return mean, std, mean, mean
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def paired_p(diffs: np.ndarray) -> float:
    from scipy import stats

    if len(diffs) < 2:
        return float("nan")  # one seed: no test
    if np.std(diffs) == 0:
        return 0.0 if np.mean(diffs) != 0 else 1.0
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (family = the keys)."""
    order = sorted(pvalues, key=pvalues.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[key]))
        adjusted[key] = running
    return adjusted


def gap_closed(lower: np.ndarray, method: np.ndarray, ceiling: np.ndarray, draws: int = 10_000,
               seed: int = 0) -> tuple[float, float, float]:
    """Share of the ceiling - lower gap that `method` closes, (mean(method) - mean(lower)) / (mean(ceiling) -
    mean(lower)), with a 95% seed-level bootstrap interval (seeds resampled with replacement, pairs kept)."""
    def share(idx):
        gap = ceiling[idx].mean() - lower[idx].mean()
        return (method[idx].mean() - lower[idx].mean()) / gap if gap > 0 else float("nan")

    rng = np.random.default_rng(seed)
    n = len(lower)
    boots = np.array([share(rng.integers(0, n, n)) for _ in range(draws)])
    boots = boots[np.isfinite(boots)]
    lo, hi = (np.percentile(boots, [2.5, 97.5]) if len(boots) else (float("nan"), float("nan")))
    return float(share(np.arange(n))), float(lo), float(hi)


def _value(rec: dict, metric: str, variant: str = "true", branch: str = "fused") -> float:
    """One run's summary `metric` of a map; an extended-protocol metric (:data:`EXTENDED_METRICS`: true sound as
    positives, swapped as negatives) from the record's "extended" entry (:func:`attach_extended`)."""
    if metric in EXTENDED_METRICS:
        return rec["extended"][branch][metric]
    return rec[rec["split"]][variant][branch][metric]


def _has(rec: dict, metric: str) -> bool:
    """Whether a run's record can give `metric` (records without confidences have no extended protocol)."""
    return metric not in EXTENDED_METRICS or rec.get("extended") is not None


def _mean_std(values) -> str:
    """"mean ± std" over seeds (std 0 for one seed), one decimal; "-" for no value."""
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}" if len(v) else "-"


def attach_extended(records: dict[str, dict[int, dict]]) -> None:
    """Give every loaded record its extended protocol in memory: rec["extended"] = `bench.protocol.run_extended`
    ({branch: {metric: %}}, None without confidences)."""
    for by_seed in records.values():
        for rec in by_seed.values():
            rec["extended"] = run_extended(rec)


def write_report(out: Path, command: str, compare_with: Path | None = None) -> dict:
    records = load_records(out)
    if not records:
        raise SystemExit(f"no runs under {out / 'raw'}")
    attach_extended(records)
    split = next(iter(next(iter(records.values())).values()))["split"]
    lines = [f"# CPU protocol ({split} split)", "", f"Command: `{command}`", "",
             "Fused map; mean ± std over seeds; object selection chance = mean 1/#objects. Swapped: every clip's "
             "sound replaced by a clip of another class.", "",
             "| row | n | select % | CIoU | AUC | swapped: select % | swapped: CIoU | A select | B select |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary: dict = {"split": split, "rows": {}}
    for row in [r for r in ROWS if r in records]:
        recs = list(records[row].values())

        def ms(metric, variant="true", branch="fused", recs=recs):
            v = np.array([_value(r, metric, variant, branch) for r in recs])
            return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}", float(v.mean())
        cells = [ms("select"), ms("ciou"), ms("auc"), ms("select", "swapped"), ms("ciou", "swapped"),
                 ms("select", "true", "a"), ms("select", "true", "b")]
        lines.append(f"| {row} | {len(recs)} | " + " | ".join(c[0] for c in cells) + " |")
        summary["rows"][row] = {"n": len(recs), "select": cells[0][1], "ciou": cells[1][1], "auc": cells[2][1],
                                "swapped_select": cells[3][1], "swapped_ciou": cells[4][1]}
    chance = _chance(records)
    if chance is not None:
        lines += ["", f"Chance level of object selection (any map that ignores the sound): {chance:.1f} %."]
        summary["chance_select"] = chance
    lines += extended_report(records, summary) + size_report(records, summary)

    lines += ["", "## Paired differences (per seed, fused)", "",
              "| comparison | metric | n | mean | std | 95% t-interval | positive seeds | p | Holm p |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ablations = {"xpl": [("xpl", r) for r in ROWS if r.startswith("xpl-") and not r.startswith("xpl-T0.3")],
                 "xpl-T0.3": [("xpl-T0.3", r) for r in ROWS if r.startswith("xpl-T0.3-")]}
    comparisons = [("full_supervision", "sup_only"), ("xpl", "sup_only"), ("xpl", "hard_pl"),
                   ("xpl", "sup_contrastive"), ("sup_contrastive", "sup_only"), ("hard_pl", "sup_only"),
                   *ablations["xpl"], ("xpl", "xpl-T0.3"), *ablations["xpl-T0.3"]]
    comparisons += [("xpl-T0.3", r) for r in ("sup_only", "hard_pl", "sup_contrastive")]
    summary["paired"] = {}
    for metric in PAIRED_METRICS:
        family = {}
        for a, b in comparisons:
            d, seeds = paired_diffs(records, a, b, metric)
            if len(seeds):
                family[f"{a} - {b}"] = (d, paired_p(d))
        adjusted = {}
        for row in ("xpl", "xpl-T0.3"):  # Holm over each XPL row's two claims (vs sup_only, vs hard_pl)
            claims = (f"{row} - sup_only", f"{row} - hard_pl")
            adjusted.update(holm({k: v[1] for k, v in family.items() if k in claims}))
        for key, (d, p) in family.items():
            mean, std, lo, hi = t_interval(d)
            holm_p = f"{adjusted[key]:.3g}" if key in adjusted else ""
            lines.append(f"| {key} | {metric} | {len(d)} | {mean:+.2f} | {std:.2f} | [{lo:+.2f}, {hi:+.2f}] | "
                         f"{int((d > 0).sum())}/{len(d)} | {p:.3g} | {holm_p} |")
            summary["paired"][f"{key} ({metric})"] = {"mean": mean, "std": std, "ci95": [lo, hi], "p": p,
                                                      "holm_p": adjusted.get(key), "per_seed": d.tolist()}
    summary["gap_closed"] = {}
    for row in [r for r in ("xpl", "xpl-T0.3") if r in records]:
        seeds = sorted(set(records.get("sup_only", {})) & set(records.get("full_supervision", {})) & set(records[row]))
        if not seeds:
            continue
        lines += ["", f"## Share of the ceiling gap closed by {row} (seed-level bootstrap, 95%)", ""]
        for metric in ("select", "ciou"):
            vals = {r: np.array([_value(records[r][s], metric) for s in seeds])
                    for r in ("sup_only", row, "full_supervision")}
            share, lo, hi = gap_closed(vals["sup_only"], vals[row], vals["full_supervision"])
            gap = float(np.mean(vals["full_supervision"] - vals["sup_only"]))
            lines.append(f"- {metric}: gap (ceiling - sup_only) {gap:+.2f}; {row} closes {100 * share:.0f}% "
                         f"[{100 * lo:.0f}%, {100 * hi:.0f}%] (n = {len(seeds)} seeds)")
            summary["gap_closed"][metric if row == "xpl" else f"{row} {metric}"] = {"gap": gap, "share": share,
                                                                                    "ci95": [lo, hi]}
    lines += branch_report(records, ablations["xpl"] + ablations["xpl-T0.3"], summary)
    if compare_with is not None:
        lines += comparison_report(records, load_records(compare_with), compare_with, summary)
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def extended_report(records: dict, summary: dict) -> list[str]:
    """The extended protocol of every row (each scene's own sound: a positive; its swapped sound: a negative), per
    seed and mean ± std over seeds; "-" for a row whose records hold no confidences."""
    lines = ["", "## Extended protocol (true sound: positives; swapped sound: negatives)", "",
             "Confidence of a map: the mean of the top quarter of a branch's probability map; fused: the mean of A's "
             "and B's. AP / max-F1 at cIoU >= 0.5 and 0.75 (%), ROC AUC of the confidence alone; fused map, mean ± "
             "std over the seeds whose records hold confidences (n); '-': none do.", "",
             "| row | n | " + " | ".join(EXTENDED_METRICS.values()) + " | A AP@0.5 | B AP@0.5 | AP@0.5 per seed |",
             "|" + " --- |" * (len(EXTENDED_METRICS) + 5)]
    summary["extended"] = {}
    for row in [r for r in ROWS if r in records]:
        seeds = [s for s, rec in records[row].items() if rec["extended"] is not None]
        if not seeds:
            lines.append(f"| {row} | 0 | " + " | ".join(["-"] * (len(EXTENDED_METRICS) + 3)) + " |")
            continue
        runs = [records[row][s]["extended"] for s in seeds]
        per_seed = {b: {m: [run[b][m] for run in runs] for m in EXTENDED_METRICS} for b in ("a", "b", "fused")}
        cells = [_mean_std(per_seed["fused"][m]) for m in EXTENDED_METRICS]
        cells += [_mean_std(per_seed["a"]["ap50"]), _mean_std(per_seed["b"]["ap50"]),
                  ", ".join(f"{v:.1f}" for v in per_seed["fused"]["ap50"])]
        lines.append(f"| {row} | {len(seeds)} | " + " | ".join(cells) + " |")
        summary["extended"][row] = {"seeds": seeds, **{
            b: {m: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                    "per_seed": v} for m, v in by_metric.items()} for b, by_metric in per_seed.items()}}
        summary["rows"][row].update({m: float(np.mean(per_seed["fused"][m])) for m in EXTENDED_METRICS})
    return lines


def size_report(records: dict, summary: dict) -> list[str]:
    """cIoU (%) of the fused map with the true sound per box-size subset, mean ± std over seeds; left out when no
    record holds the ground-truth areas."""
    sizes = {row: {s: run_sizes(rec) for s, rec in by_seed.items()} for row, by_seed in records.items()}
    counts = next((run for by_seed in sizes.values() for run in by_seed.values() if run is not None), None)
    if counts is None:
        return []
    names = list(counts)
    lines = ["", "## cIoU by box size (fused map, true sound; ground-truth area at 224 px)", "",
             "small < 32², medium < 96², large < 144², huge >= 144²; mean ± std over seeds; '-': no scene of that "
             "size, or no record with the areas.", "",
             "| row | n | " + " | ".join(f"{k} ({counts[k]['num_samples']} scenes)" for k in names) + " |",
             "|" + " --- |" * (len(names) + 2)]
    summary["ciou_by_size"] = {}
    for row in [r for r in ROWS if r in records]:
        runs = [run for run in sizes[row].values() if run is not None]
        values = {k: [run[k]["ciou"] for run in runs if "ciou" in run[k]] for k in names}
        lines.append(f"| {row} | {len(runs)} | " + " | ".join(_mean_std(values[k]) for k in names) + " |")
        if runs:
            summary["ciou_by_size"][row] = {k: {"mean": float(np.mean(v)), "per_seed": v, "num_samples":
                                                runs[0][k]["num_samples"]} for k, v in values.items() if v}
    return lines


def paired_diffs(records: dict, row_a: str, row_b: str, metric: str,
                 branch: str = "fused") -> tuple[np.ndarray, list[int]]:
    """Per-seed differences row_a - row_b of `metric` (true sound; an extended metric: :func:`_value`) over the seeds
    both rows have (with confidences, for an extended metric), and those seeds."""
    seeds = sorted(s for s in set(records.get(row_a, {})) & set(records.get(row_b, {}))
                   if _has(records[row_a][s], metric) and _has(records[row_b][s], metric))
    a = np.array([_value(records[row_a][s], metric, "true", branch) for s in seeds])
    b = np.array([_value(records[row_b][s], metric, "true", branch) for s in seeds])
    return a - b, seeds


def error_agreement(rec: dict) -> tuple[float, float]:
    """How alike the two branches' mistakes are on one run: φ, the correlation over scenes of A's and B's
    object-selection errors (1 - selected), and the share (%) of scenes both get wrong."""
    per = rec[rec["split"] + "_per_scene"]["true"]
    err_a, err_b = 1 - np.asarray(per["a"]["selected"]), 1 - np.asarray(per["b"]["selected"])
    phi = float(np.corrcoef(err_a, err_b)[0, 1]) if err_a.std() > 0 and err_b.std() > 0 else float("nan")
    return phi, 100.0 * float(np.mean(err_a * err_b))


def branch_report(records: dict, ablations: list[tuple[str, str]], summary: dict) -> list[str]:
    """The ablations per branch (a component can help each branch and still cost the fused map, by making the
    branches' mistakes alike) and each row's branch diversity."""
    lines = ["", "## Ablations per branch (XPL - row, paired seeds, mean [95% t-interval])", "",
             "| comparison | metric | n | A | B | fused |", "| --- | --- | --- | --- | --- | --- |"]
    summary["ablations_per_branch"] = {}
    for a, b in ablations:
        seeds = paired_diffs(records, a, b, "select")[1]
        if not seeds:
            continue
        for metric in ("select", "ciou"):
            cells = []
            for branch in ("a", "b", "fused"):
                mean, _, lo, hi = t_interval(paired_diffs(records, a, b, metric, branch)[0])
                cells.append(f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]")
                summary["ablations_per_branch"][f"{a} - {b} ({metric}, {branch})"] = {"mean": mean, "ci95": [lo, hi]}
            lines.append(f"| {a} - {b} | {metric} | {len(seeds)} | " + " | ".join(cells) + " |")
    lines += ["", "## Branch diversity (mean over seeds)", "",
              "φ: correlation over scenes of branch A's and B's object-selection errors; the fused map gains most "
              "over its branches when they err on different scenes.", "",
              "| row | n | A wrong % | B wrong % | both wrong % | φ |", "| --- | --- | --- | --- | --- | --- |"]
    summary["branch_diversity"] = {}
    for row in [r for r in ROWS if r in records]:
        recs = [r for r in records[row].values() if r["split"] + "_per_scene" in r]
        if not recs:
            continue
        phi, both = np.nanmean([error_agreement(r) for r in recs], axis=0)
        wrong = {br: 100 - np.mean([_value(r, "select", "true", br) for r in recs]) for br in ("a", "b")}
        lines.append(f"| {row} | {len(recs)} | {wrong['a']:.1f} | {wrong['b']:.1f} | {both:.1f} | {phi:.2f} |")
        summary["branch_diversity"][row] = {"phi": float(phi), "both_wrong": float(both)}
    return lines + pseudo_label_report(records, summary)


def comparison_report(records: dict, other: dict, other_out: Path, summary: dict) -> list[str]:
    """This protocol against another one's runs (`--compare_with`, e.g. the heads-only protocol), paired by row and
    seed: each row's change, and XPL's gaps to sup_contrastive and sup_only and its pseudo-labels in each."""
    lines = ["", f"## Against {other_out} (paired by row and seed, fused; 95% t-intervals)", "",
             "| comparison | metric | n | this protocol | there | this - there |",
             "| --- | --- | --- | --- | --- | --- |"]
    summary["comparison"] = {"with": str(other_out)}

    def value(recs: dict, rows: tuple[str, ...], seed: int, metric: str) -> float:
        """A row's `metric`, or the difference of two rows'."""
        values = [_value(recs[r][seed], metric) for r in rows]
        return values[0] if len(values) == 1 else values[0] - values[1]

    comparisons = [(r,) for r in ROWS if r in records and r in other]
    comparisons += [("xpl", "sup_contrastive"), ("xpl", "sup_only"), ("xpl-T0.3", "sup_contrastive")]
    for rows in comparisons:
        if not all(r in records and r in other for r in rows):
            continue
        for metric in ("select", "ciou", "ap50"):
            seeds = sorted(s for s in set.intersection(*(set(records[r]) & set(other[r]) for r in rows))
                           if all(_has(records[r][s], metric) and _has(other[r][s], metric) for r in rows))
            if not seeds:
                continue
            here = np.array([value(records, rows, s, metric) for s in seeds])
            there = np.array([value(other, rows, s, metric) for s in seeds])
            mean, _, lo, hi = t_interval(here - there)
            name = " - ".join(rows)
            fmt = "+.1f" if len(rows) > 1 else ".1f"
            lines.append(f"| {name} | {metric} | {len(seeds)} | {here.mean():{fmt}} | {there.mean():{fmt}} | "
                         f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}] |")
            summary["comparison"][f"{name} ({metric})"] = {"here": float(here.mean()), "there": float(there.mean()),
                                                          "diff": mean, "ci95": [lo, hi], "seeds": seeds}
    other_pl: dict = {}
    pseudo_label_report(other, other_pl)
    for row, there in other_pl.get("pseudo_labels", {}).items():
        here = summary.get("pseudo_labels", {}).get(row)
        if here:
            lines += ["", f"Pseudo-labels of {row} in stage 2, this protocol / there: " + "; ".join(
                f"{k} {here[k]:.3f} / {there[k]:.3f}" for k in DYNAMICS)]
    return lines


DYNAMICS = ("pl_ciou_a", "pl_ciou_b", "pl_error_a", "pl_error_b", "pl_ema_shift_a", "pl_ema_shift_b", "pl_teacher_gap")


def pseudo_label_report(records: dict, summary: dict) -> list[str]:
    """Each soft-label row's pseudo-labels over stage 2, from the training logs (diagnostics against the true boxes of
    the unlabelled clips, never in a loss): their quality, and how far PL-EMA and cross-refinement move a target."""
    lines = ["", "## Pseudo-labels in stage 2 (training logs: mean over seeds and the logging steps after stage 2's "
             "first)", "",
             "PL CIoU: the pseudo-labels' CIoU (%) against the true boxes; error: mean |Y - G| at the map's size; "
             "EMA shift: mean |Y_t - Ŷ_t| (what PL-EMA changes in a target); teacher gap: mean |Y_A - Y_B| (what "
             "cross-refinement changes).", "",
             "| row | n | PL CIoU A / B | error A / B | EMA shift A / B | teacher gap |",
             "| --- | --- | --- | --- | --- | --- |"]
    summary["pseudo_labels"] = {}
    for row in [r for r in ROWS if r in records]:
        per_seed = []
        for rec in records[row].values():
            first = rec.get("settings", {}).get("warmup_steps", -1)  # stage 2's first step: every clip's first visit
            steps = [h for h in rec.get("history", []) if all(k in h for k in DYNAMICS) and h["step"] > first]
            if steps:
                per_seed.append([np.mean([h[k] for h in steps]) for k in DYNAMICS])
        if not per_seed:
            continue
        v = dict(zip(DYNAMICS, np.mean(per_seed, axis=0)))
        lines.append(f"| {row} | {len(per_seed)} | {v['pl_ciou_a']:.1f} / {v['pl_ciou_b']:.1f} | "
                     f"{v['pl_error_a']:.3f} / {v['pl_error_b']:.3f} | "
                     f"{v['pl_ema_shift_a']:.3f} / {v['pl_ema_shift_b']:.3f} | {v['pl_teacher_gap']:.3f} |")
        summary["pseudo_labels"][row] = {"n": len(per_seed), **{k: float(x) for k, x in v.items()}}
    return lines


def _chance(records) -> float | None:
    for row in records.values():
        for rec in row.values():
            return rec.get("chance_select")
    return None


# --------------------------------------------------------------------------------------------------------- main

def parse_method_settings(items: list[str]) -> dict:
    """``NAME=VALUE`` strings -> XPLMethod settings, each value read as its field's type (int, float, bool, str)."""
    from xpl_hf.method import XPLMethod

    fields = {f.name: f for f in dataclasses.fields(XPLMethod)}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in fields or not _:
            raise SystemExit(f"--method_setting {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        default = fields[name].default
        if isinstance(default, bool):
            out[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[name] = int(value)
        elif isinstance(default, float) or default is None:
            out[name] = float(value)
        else:
            out[name] = value
    return out


def refuse_other_settings(out: Path, plan: list[tuple[str, int]], settings: dict) -> None:
    """Stop before any work when `out` already holds a planned run made with other settings (a rerun skips finished
    runs, so mixing them would report one protocol's runs as another's); a setting a record lacks counts as its
    default (`StudySettings`)."""
    from .cached_protocol import StudySettings

    defaults = {f.name: f.default for f in dataclasses.fields(StudySettings)}
    for row, seed in plan:
        path = raw_path(out, row, seed)
        if path.is_file():
            had = {**defaults, **json.loads(path.read_text()).get("settings", {})}
            differ = {k: (had.get(k), v) for k, v in settings.items() if had.get(k) != v}
            if differ:
                changes = ", ".join(f"{k}: {then!r} there, {now!r} now" for k, (then, now) in differ.items())
                raise SystemExit(f"{path} was made with other settings ({changes}); choose another --out, or remove "
                                 "its runs")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"rows {QUICK_ROWS} x 3 seeds")
    p.add_argument("--rows", default=None, help=f"comma-separated, from {list(ROWS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5; 3 with --quick)")
    p.add_argument("--ablation_seeds", type=int, default=3, help="seeds of the ablation rows (default rows only)")
    p.add_argument("--steps", type=int, default=1200, help="training steps per run")
    p.add_argument("--unlabeled_batch", type=int, default=48, help="unlabelled samples per stage-2 step")
    p.add_argument("--learning_rate", type=float, default=3e-3,
                   help="peak learning rate (AdamW, cosine; pretrained top stages at 0.1x); chosen on validation")
    p.add_argument("--split", default="test", choices=["validation", "test"],
                   help="scored split: explore on validation; the protocol scores test once")
    p.add_argument("--cache", type=Path, default=Path("data/xpl-study/cache.pt"))
    p.add_argument("--out", type=Path, default=None, help="default results/cpu_protocol[_quick]")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (1 thread each)")
    p.add_argument("--avc_weight", type=float, default=None, help="λ for every row (default: XPLMethod's)")
    p.add_argument("--method_setting", action="append", default=[], metavar="NAME=VALUE",
                   help="any other XPLMethod setting for every row, e.g. curriculum_r0=0.5 (repeatable)")
    p.add_argument("--clean_view", action="store_true",
                   help="train on the one clean view of every scene (the protocol before 0.3.1) instead of each "
                        "branch drawing its own of 4 colour-augmented views per visit")
    p.add_argument("--feature_dropout", type=float, default=0.0,
                   help="probe (validation): dropout on the training image features, drawn per visit and branch")
    p.add_argument("--audio_top_a", type=int, default=1,
                   help="top stages of branch A's VGGish that train (1: fc3; 0: frozen, only the heads train)")
    p.add_argument("--audio_top_b", type=int, default=1,
                   help="top stages of branch B's SoundNet-8 that train (1: conv7, 2: conv6-7; 0: frozen)")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--compare_with", type=Path, default=None,
                   help="another protocol's folder (e.g. results/cpu_protocol_heads_only_quick): a paired comparison")
    args = p.parse_args(argv)
    out = args.out or Path("results") / ("cpu_protocol_quick" if args.quick else "cpu_protocol")
    command = "python -m bench.reproduce " + " ".join(sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        rows = args.rows.split(",") if args.rows else (QUICK_ROWS if args.quick else MAIN_ROWS)
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
        seeds = range(args.seeds or (3 if args.quick else 5))
        ablations = [] if args.rows or args.quick else ABLATION_ROWS
        steps = args.steps
        settings = {"steps": steps, "warmup_steps": steps // 4, "views": not args.clean_view,
                    "unlabeled_batch": args.unlabeled_batch, "learning_rate": args.learning_rate,
                    "feature_dropout": args.feature_dropout,
                    "audio_top_a": args.audio_top_a, "audio_top_b": args.audio_top_b}
        plan = [(row, seed) for seed in seeds for row in rows]  # main rows first, seed by seed
        plan += [(row, seed) for seed in range(args.ablation_seeds) for row in ablations]
        refuse_other_settings(out, plan, settings)
        cache = ensure_cache(args.cache, threads=2, views=not args.clean_view,
                             audio_stems=bool(args.audio_top_a or args.audio_top_b))
        method_settings = parse_method_settings(args.method_setting)
        if args.avc_weight is not None:
            method_settings["avc_weight"] = args.avc_weight
        jobs = [(str(cache), row, seed, settings, args.split, out, 1, method_settings) for row, seed in plan
                if not raw_path(out, row, seed).is_file()]
        print(f"{len(jobs)} runs to do ({len(rows)} rows x {len(seeds)} seeds, {len(ablations)} ablations x "
              f"{args.ablation_seeds} seeds, {steps} steps), {args.jobs} at a time")
        start = time.time()
        ctx = mp.get_context("spawn")
        with ctx.Pool(args.jobs, maxtasksperchild=8) as pool:
            for line in pool.imap_unordered(_run_one, jobs):
                print(f"[{time.time() - start:6.0f} s] {line}", flush=True)
    tables = out / "tables.md"
    if args.report_only and tables.is_file():  # keep the command that made the runs, beside this one
        made = next((line for line in tables.read_text().splitlines() if line.startswith("Command:")), "")
        runs = made.removeprefix("Command: ").split("; report: ")[0]
        command = f"{runs.strip('`')}`; report: `{command}" if runs else command
    summary = write_report(out, command, args.compare_with)
    print((out / "tables.md").read_text())
    return summary


if __name__ == "__main__":
    main()
