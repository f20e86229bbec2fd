"""bench/reproduce.py (the CPU decision protocol): head training on a feature cache with the package's losses,
object selection, the statistics and the report. A random in-memory cache stands in for the real one."""


import numpy as np
import pytest
import torch
from bench_modules import load


def box(x0, y0, x1, y1):
    return [x0, y0, x1, y1]


def fake_split(n, seed, channels=16):
    g = torch.Generator().manual_seed(seed)
    objects, gts = [], []
    for i in range(n):
        objs = [{"box": box(0.0, 0.0, 0.5, 0.5), "label": "x", "sounding": i % 2 == 0},
                {"box": box(0.5, 0.5, 1.0, 1.0), "label": "y", "sounding": i % 2 == 1}]
        objects.append(objs)
        gt = torch.zeros(224, 224, dtype=torch.bool)
        if i % 2 == 0:
            gt[:112, :112] = True
        else:
            gt[112:, 112:] = True
        gts.append(gt)
    labels = torch.tensor([i % 2 for i in range(n)])
    return {"image": torch.randn(n, channels, 7, 7, generator=g).half(), "audio_a": torch.randn(n, 128, generator=g),
            "audio_b": torch.randn(n, 1024, generator=g), "gt": torch.stack(gts), "labels": labels,
            "objects": objects, "ids": [f"s{seed}-{i}" for i in range(n)]}


@pytest.fixture
def cache():
    from xpl_hf import XPLConfig

    config = XPLConfig(image_backbone_a="efficientnet_lite0", image_backbone_b="efficientnet_lite0", image_size=224)
    splits = {"labeled": fake_split(20, 0), "unlabeled": fake_split(24, 1), "validation": fake_split(10, 2)}
    return {"config": config.to_dict(), "splits": splits, "pca": {"explained": 1.0}}


def test_object_selection_follows_the_map():
    cp = load("protocol")
    objects = [[{"box": box(0, 0, 0.5, 0.5), "sounding": True}, {"box": box(0.5, 0.5, 1, 1), "sounding": False}]] * 3
    maps = torch.zeros(3, 7, 7)
    maps[0, :3, :3] = 1.0  # on the sounding object
    maps[1, 4:, 4:] = 1.0  # on the other one
    gt = torch.zeros(3, 224, 224, dtype=torch.bool)
    gt[:, :112, :112] = True
    s = cp.score(maps, gt, objects)
    assert s["selected"][0] == 1.0 and s["selected"][1] == 0.0
    assert s["selected"][2] == 0.5  # a flat map ties both objects: half the credit (the chance level)


def test_labelled_draw_is_stratified_and_seeded():
    cp = load("protocol")
    labels = torch.arange(100) % 10
    a, b, c = cp.draw_labeled(labels, 30, 0), cp.draw_labeled(labels, 30, 0), cp.draw_labeled(labels, 30, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(labels[a], minlength=10).tolist() == [3] * 10


def test_swapped_sound_is_the_packages_rule():
    """Every scene gets the sound of a scene of another class, every sound is used once, and the donors are those of
    `xpl_hf.metrics.listening.swap_permutation` (the listening checks' rule) on the class names."""
    from xpl_hf.metrics.listening import swap_permutation

    protocol = load("protocol")
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 1, 2, 3, 4, 0, 1] * 4)
    order = protocol.swapped_sound_order(labels)
    assert (labels[order] != labels).all()
    assert sorted(order.tolist()) == list(range(len(labels)))
    donors, _ = swap_permutation([f"class {c}" for c in labels.tolist()], 0)
    assert order.tolist() == donors.tolist()


@pytest.mark.parametrize("method", ["xpl", "sup_only", "full_supervision"])
def test_train_run_is_the_packages_training_step(cache, method, monkeypatch):
    """Every step is `TrainingStep`'s (the recipe's: clipping at 1.0, the stage switch, the ceiling's labels)."""
    cp = load("cached_protocol")
    from xpl_hf.method import XPLMethod
    from xpl_hf.trainer import TrainingStep

    calls, norms, rows = [], [], []
    step, clip = TrainingStep.__call__, torch.nn.utils.clip_grad_norm_

    def counted(self, batch, index, **kwargs):
        calls.append(index)
        rows.append((int(batch["is_labeled"].sum()), len(batch["ids"])))  # (labelled rows, rows)
        return step(self, batch, index, **kwargs)

    def clipped(params, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(TrainingStep, "__call__", counted)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clipped)
    settings = cp.StudySettings(num_labeled=4, steps=6, warmup_steps=2, labeled_batch=4, unlabeled_batch=8,
                                embed_dim=16)
    result = cp.train_run(cache, XPLMethod.from_name(method), 0, settings)
    assert calls == list(range(6)) and norms == [1.0] * 6
    stage2 = {"xpl": (4, 12), "sup_only": (4, 4), "full_supervision": (12, 12)}[method]  # the ceiling: boxes as labels
    assert rows == [(4, 4)] * 2 + [stage2] * 4
    last = result["history"][-1]
    assert ("loss_cross_a" in last) == (method == "xpl")
    per_scene = result["validation_per_scene"]["true"]["fused"]
    assert len(per_scene["ciou"]) == len(per_scene["selected"]) == 10
    assert set(result["validation"]) == {"true", "swapped"}
    assert len(result["labeled_ids"]) == 4


def test_train_run_records_the_confidences_and_the_report_scores_them(cache, tmp_path):
    """Each scene's confidence per map, true and swapped sound (`xpl_hf.maps.branch_confidences`: fused = the mean of
    A's and B's), and the ground-truth areas; the report's extended protocol reads them."""
    cp, rp = load("cached_protocol"), load("reproduce")
    from xpl_hf.method import XPLMethod

    settings = cp.StudySettings(num_labeled=4, steps=3, warmup_steps=1, labeled_batch=4, unlabeled_batch=8,
                                embed_dim=16)
    result = cp.train_run(cache, XPLMethod.from_name("xpl"), 0, settings)
    per = result["validation_per_scene"]
    for variant in ("true", "swapped"):
        conf = {b: np.array(per[variant][b]["confidence"]) for b in ("a", "b", "fused")}
        assert all(len(c) == 10 and ((c > 0) & (c < 1)).all() for c in conf.values())
        np.testing.assert_allclose(conf["fused"], (conf["a"] + conf["b"]) / 2)
    assert per["true"]["a"]["confidence"] != per["swapped"]["a"]["confidence"]  # the sound moves the confidence
    assert result["validation_gt_area"] == [112.0 * 112.0] * 10
    result.pop("state_dict")
    result.update(row="xpl", split="validation")
    write_record(rp, tmp_path, result)
    summary = rp.write_report(tmp_path, "test")
    row = section((tmp_path / "tables.md").read_text(), "## Extended protocol")["xpl"]
    assert row[0] == "1" and "-" not in row
    expected = load("protocol").run_extended(result)["fused"]
    assert summary["extended"]["xpl"]["fused"]["ap50"]["per_seed"] == [expected["ap50"]]
    assert 0 <= summary["rows"]["xpl"]["ap50"] <= 100 and "max_f1_50" in summary["rows"]["xpl"]


def test_pca_folds_into_the_projection():
    cp = load("cached_protocol")
    splits = {s: fake_split(12, i, channels=32) for i, s in enumerate(("labeled", "unlabeled"))}
    original = splits["labeled"]["image"].float().clone()
    cache = cp.reduce_image_features({"splits": splits}, k=32)  # k = all channels: exact
    basis, mean = cache["pca"]["basis"], cache["pca"]["mean"]
    back = torch.einsum("nkhw,ck->nchw", splits["labeled"]["image"].float(), basis) + mean[None, :, None, None]
    assert torch.allclose(back, original, atol=2e-2)


def test_statistics():
    rp = load("reproduce")
    mean, std, lo, hi = rp.t_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert mean == 3.0 and lo < 3.0 < hi and round(hi - 3.0, 3) == round(3.0 - lo, 3)
    assert rp.holm({"x": 0.01, "y": 0.04}) == {"x": 0.02, "y": 0.04}
    assert rp.holm({"x": 0.03, "y": 0.02})["x"] == 0.04
    share, lo, hi = rp.gap_closed(np.zeros(5), np.full(5, 5.0), np.full(5, 10.0))
    assert share == 0.5 and lo == hi == 0.5


def write_record(rp, out, rec):
    """One finished run's record where the report reads it (<out>/raw/<row>/seed<k>.json)."""
    load("protocol").write_record(load("protocol").raw_path(out, rec["row"], rec["seed"]), rec)


def test_report_from_records(tmp_path):
    rp = load("reproduce")
    for row, base in (("sup_only", 60.0), ("xpl", 70.0), ("full_supervision", 80.0), ("hard_pl", 62.0)):
        for seed in range(3):
            summary = {"select": base + seed, "ciou": base / 2 + seed, "auc": 40.0}
            write_record(rp, tmp_path, {"row": row, "seed": seed, "split": "test", "chance_select": 42.0, "test": {
                v: {b: summary for b in ("a", "b", "fused")} for v in ("true", "swapped")}})
    summary = rp.write_report(tmp_path, "test")
    assert summary["gap_closed"]["select"]["share"] == pytest.approx(0.5)
    assert summary["paired"]["xpl - sup_only (select)"]["mean"] == pytest.approx(10.0)
    table = (tmp_path / "tables.md").read_text()
    assert "| xpl | 3 |" in table and "Holm" in table and "42.0 %" in table
    # records without per-scene confidences (or areas) still report: "-" in the extended protocol, no size table
    assert section(table, "## Extended protocol")["xpl"][:3] == ["0", "-", "-"]
    assert summary["extended"] == {} and "ap50" not in summary["rows"]["xpl"]
    assert "## cIoU by box size" not in table and not any("(ap50)" in k for k in summary["paired"])


def section(table: str, heading: str) -> dict[str, list[str]]:
    """The cells after the row name of each row of the markdown table under `heading` in tables.md."""
    text = table.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows[2:]}  # after the header and its --- line


def scene_record(row, seed, conf_true, conf_swapped, ciou):
    """A run's record with per-scene cIoU / confidences (same for every map) and 12,544 px boxes (large)."""
    n = len(ciou)
    per = {v: {b: {"ciou": ciou, "selected": [1.0, 0.0] * (n // 2), "confidence": conf}
               for b in ("a", "b", "fused")} for v, conf in (("true", conf_true), ("swapped", conf_swapped))}
    test = {v: {b: {"select": 50.0, "ciou": 50.0, "auc": 40.0} for b in ("a", "b", "fused")}
            for v in ("true", "swapped")}
    return {"row": row, "seed": seed, "split": "test", "test": test, "test_per_scene": per,
            "test_gt_area": [112.0 * 112.0] * n}


def test_report_gives_the_extended_protocol_per_row_and_seed(tmp_path):
    """AP / max-F1 with the swapped sound as negatives: a row whose true-sound confidences all exceed the swapped
    ones, every cIoU >= 0.75, scores AP 100; one whose swapped sounds all rank first reaches precision 1/2 at recall 1
    (AP 50, max-F1 2/3). A row of old records (no confidences) prints "-"; paired differences skip it."""
    rp = load("reproduce")
    ciou = [0.8, 0.9, 1.0, 0.8]
    for seed in range(2):
        write_record(rp, tmp_path, scene_record("xpl", seed, [0.9, 0.8, 0.7, 0.6 + seed / 100], [0.1] * 4, ciou))
        write_record(rp, tmp_path, scene_record("sup_only", seed, [0.2] * 4, [0.8] * 4, ciou))
        old = scene_record("hard_pl", seed, [0.2] * 4, [0.8] * 4, ciou)
        for variant in old["test_per_scene"].values():
            for branch in variant.values():
                branch.pop("confidence")
        del old["test_gt_area"]
        write_record(rp, tmp_path, old)
    summary = rp.write_report(tmp_path, "test")
    table = (tmp_path / "tables.md").read_text()
    extended = section(table, "## Extended protocol")
    assert extended["xpl"][:5] == ["2", "100.0 ± 0.0", "100.0 ± 0.0", "100.0 ± 0.0", "100.0 ± 0.0"]
    assert extended["sup_only"][:3] == ["2", "50.0 ± 0.0", "66.7 ± 0.0"] and extended["sup_only"][-1] == "50.0, 50.0"
    assert extended["hard_pl"][0] == "0" and set(extended["hard_pl"][1:]) == {"-"}
    assert summary["extended"]["sup_only"]["fused"]["ap50"]["per_seed"] == [50.0, 50.0]
    assert summary["rows"]["xpl"]["max_f1_50"] == pytest.approx(100.0) and "ap50" not in summary["rows"]["hard_pl"]
    paired = summary["paired"]["xpl - sup_only (ap50)"]
    assert paired["per_seed"] == pytest.approx([50.0, 50.0])
    assert "xpl - hard_pl (ap50)" not in summary["paired"] and "xpl - hard_pl (select)" in summary["paired"]
    sizes = section(table, "## cIoU by box size")
    assert sizes["xpl"] == ["2", "-", "-", "100.0 ± 0.0", "-"] and sizes["hard_pl"][0] == "0"
    assert summary["ciou_by_size"]["xpl"]["large"]["num_samples"] == 4


def test_branch_report_per_branch_ablation_and_error_agreement(tmp_path):
    """A component can help each branch and cost the fused map: the report shows the ablation per branch, and φ,
    the correlation of the branches' object-selection errors over scenes."""
    rp = load("reproduce")
    same = [1, 0, 1, 0, 1, 1, 0, 1]  # B errs where A errs: φ = 1
    flipped = [1 - x for x in same[:4]] + same[4:]  # half the scenes disagree
    for row, sel_a, per_b in (("xpl", 80.0, same), ("xpl-no_cross_refine", 78.0, flipped)):
        for seed in range(3):
            per = {"a": {"ciou": [0.5] * 8, "selected": same}, "b": {"ciou": [0.5] * 8, "selected": per_b},
                   "fused": {"ciou": [0.5] * 8, "selected": same}}
            test = {v: {b: {"select": sel_a + seed if b == "a" else 70.0, "ciou": 30.0, "auc": 40.0}
                        for b in ("a", "b", "fused")} for v in ("true", "swapped")}
            logs = {"pl_ciou_a": 40.0, "pl_ciou_b": 44.0, "pl_error_a": 0.3, "pl_error_b": 0.2, "pl_ema_shift_a": 0.01,
                    "pl_ema_shift_b": 0.03, "pl_teacher_gap": 0.1 + seed / 10}
            history = [{"step": 0, "loss": 1.0}, {"step": 750, "loss": 1.0, **logs}]  # stage 1 logs lack them
            write_record(rp, tmp_path, {"row": row, "seed": seed, "split": "test", "test": test,
                                        "test_per_scene": {"true": per}, "history": history})
    summary = rp.write_report(tmp_path, "test")
    assert summary["ablations_per_branch"]["xpl - xpl-no_cross_refine (select, a)"]["mean"] == pytest.approx(2.0)
    assert summary["ablations_per_branch"]["xpl - xpl-no_cross_refine (select, b)"]["mean"] == pytest.approx(0.0)
    assert summary["branch_diversity"]["xpl"]["phi"] == pytest.approx(1.0)
    phi = np.corrcoef(1 - np.array(same), 1 - np.array(flipped))[0, 1]
    assert summary["branch_diversity"]["xpl-no_cross_refine"]["phi"] == pytest.approx(phi)
    assert summary["branch_diversity"]["xpl"]["both_wrong"] == pytest.approx(100 * 3 / 8)
    assert "## Branch diversity" in (tmp_path / "tables.md").read_text()
    dynamics = summary["pseudo_labels"]["xpl"]
    assert dynamics["n"] == 3 and dynamics["pl_ema_shift_b"] == pytest.approx(0.03)
    assert dynamics["pl_teacher_gap"] == pytest.approx(0.2)  # the mean over seeds 0.1, 0.2, 0.3


def test_each_branch_draws_its_own_augmented_view(cache, monkeypatch):
    cp = load("cached_protocol")
    from xpl_hf.method import XPLMethod

    settings = cp.StudySettings(num_labeled=4, steps=3, warmup_steps=1, labeled_batch=4, unlabeled_batch=8,
                                embed_dim=16, views=True)
    with pytest.raises(ValueError, match="image_views"):
        cp.train_run(cache, XPLMethod.from_name("xpl"), 0, settings)
    for split in ("labeled", "unlabeled"):  # 3 views: the clean features + 0.5, + 1.0 (told apart by their offset)
        image = cache["splits"][split]["image"]
        cache["splits"][split]["image_views"] = torch.stack([image, image + 0.5, image + 1.0], dim=1)
    seen = []
    forward = cp.XPLFromTrunkFeatures.forward

    def spy(self, image_features, audio_features_a, audio_features_b, image_features_b=None, **kwargs):
        if self.training:
            seen.append((image_features.clone(), image_features_b.clone()))
        return forward(self, image_features, audio_features_a, audio_features_b, image_features_b, **kwargs)

    monkeypatch.setattr(cp.XPLFromTrunkFeatures, "forward", spy)
    cp.train_run(cache, XPLMethod.from_name("xpl"), 0, settings)
    image_a, image_b = seen[-1]  # a stage-2 batch: 4 labelled + 8 unlabelled rows
    assert image_a.shape == image_b.shape == (12, 16, 7, 7)
    unl = cache["splits"]["unlabeled"]
    offsets = []
    for img in (image_a, image_b):  # every row is one of the cached views of some unlabelled scene
        rows = img[4:]
        diff = (rows[:, None, None] - unl["image_views"].float()[None]).abs().amax(dim=(3, 4, 5))  # (8, N, 3)
        assert (diff.amin(dim=(1, 2)) < 1e-6).all()
        offsets.append(diff.amin(dim=1).argmin(dim=1))
    assert not torch.equal(offsets[0], offsets[1])  # the branches' views are drawn independently


def test_feature_dropout_probe_drops_features_per_branch_and_visit(cache, monkeypatch):
    """--feature_dropout p: each branch's training features are the clean ones with a fresh ~p share zeroed and the
    rest scaled by 1 / (1 - p); p = 0 leaves them untouched (one shared clean view)."""
    cp = load("cached_protocol")
    from xpl_hf.method import XPLMethod

    seen = []
    forward = cp.XPLFromTrunkFeatures.forward

    def spy(self, image_features, audio_features_a, audio_features_b, image_features_b=None, **kwargs):
        if self.training:
            seen.append((image_features.clone(), None if image_features_b is None else image_features_b.clone()))
        return forward(self, image_features, audio_features_a, audio_features_b, image_features_b, **kwargs)

    monkeypatch.setattr(cp.XPLFromTrunkFeatures, "forward", spy)
    base = dict(num_labeled=4, steps=2, warmup_steps=1, labeled_batch=4, unlabeled_batch=8, embed_dim=16)
    cp.train_run(cache, XPLMethod.from_name("xpl"), 0, cp.StudySettings(**base))
    clean, none = seen[-1]
    assert none is None  # p = 0: the one clean view, shared
    seen.clear()
    cp.train_run(cache, XPLMethod.from_name("xpl"), 0, cp.StudySettings(**base, feature_dropout=0.5))
    image_a, image_b = seen[-1]
    kept_a, kept_b = image_a != 0, image_b != 0
    torch.testing.assert_close(image_a[kept_a], 2.0 * clean[kept_a])  # the same rows, scaled by 1 / (1 - p)
    torch.testing.assert_close(image_b[kept_b], 2.0 * clean[kept_b])
    assert 0.4 < 1 - kept_a.float().mean() < 0.6 and not torch.equal(kept_a, kept_b)  # ~p dropped, per branch


def test_method_settings_keep_their_types():
    rp = load("reproduce")
    parsed = rp.parse_method_settings(["curriculum_rampup_steps=1500", "curriculum_r0=0.5", "data_selection=false",
                                       "cross_normalization=admitted"])
    assert parsed == {"curriculum_rampup_steps": 1500, "curriculum_r0": 0.5, "data_selection": False,
                      "cross_normalization": "admitted"}
    assert type(parsed["curriculum_rampup_steps"]) is int
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        rp.parse_method_settings(["no_such_setting=1"])


def test_audio_top_stages_train_on_cached_stems(cache, monkeypatch):
    """With `audio_top_a/b`, branch A's VGGish fc3 and branch B's SoundNet-8 conv7 train on the cache's stems (fc2's
    and conv6's outputs), conv7 starting from the pretrained weights; every lower stage stays as it was."""
    cp = load("cached_protocol")
    from xpl_hf.method import XPLMethod

    for split in cache["splits"].values():
        n = len(split["ids"])
        split["audio_a_top1"] = torch.rand(n, 3, 4096).half()
        split["audio_b_top1"] = torch.rand(n, 512, 5).half()
    loaded = {}

    def fake_weights(model, skip=(), allow_random=()):  # SoundNet-8's weights, as the real loader would put them
        conv7 = model.branch_b.audio_encoder.conv7[0]
        with torch.no_grad():
            conv7.weight.fill_(0.01)
        loaded["skip"] = skip
        loaded["start"] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"branch_b.audio_encoder": "SoundNet-8 (test)"}

    monkeypatch.setattr(cp, "load_pretrained_backbones", fake_weights)
    settings = cp.StudySettings(num_labeled=4, steps=4, warmup_steps=1, labeled_batch=4, unlabeled_batch=8,
                                embed_dim=16, audio_top_a=1, audio_top_b=1)
    assert settings.audio_key("a") == "audio_a_top1" and cp.StudySettings().audio_key("b") == "audio_b"
    result = cp.train_run(cache, XPLMethod.from_name("xpl"), 0, settings)
    assert "vggish" in loaded["skip"] and "soundnet8" not in loaded["skip"]
    start, end = loaded["start"], result["state_dict"]
    moved = {k for k in start if not torch.equal(start[k], end[k]) and "running" not in k and "batches" not in k}
    assert "branch_a.audio_encoder.embeddings.4.weight" in moved  # VGGish fc3
    assert "branch_b.audio_encoder.conv7.0.weight" in moved  # SoundNet-8 conv7, from its pretrained start
    assert not any(k.startswith(("branch_a.audio_encoder.embeddings.2", "branch_b.audio_encoder.conv6",
                                 "branch_a.image_encoder", "branch_b.image_encoder")) for k in moved)
    assert torch.equal(end["branch_b.audio_encoder.conv7.1.running_mean"],
                       start["branch_b.audio_encoder.conv7.1.running_mean"])  # frozen trunk: eval-mode BatchNorm
    assert result["weights"] == {"branch_b.audio_encoder": "SoundNet-8 (test)"}


def test_audio_stems_give_back_the_cached_features(monkeypatch):
    """`add_audio_stems` caches each audio trunk below its top stages; the trunk's top on a stem gives back the cached
    output, and a cache made with another trunk (here: another random VGGish) is refused."""
    fc = load("feature_cache")
    from xpl_hf import XPLModel, XPLProcessor
    from xpl_hf.data.synthetic import SyntheticConfig, generate_sample

    monkeypatch.setattr(fc, "load_pretrained_backbones", lambda model, **kwargs: {})  # random SoundNet-8: offline
    syn = SyntheticConfig(num_labeled=2, num_unlabeled=0, num_validation=0, num_test=0, image_size=224,
                          clip_seconds=3.0, seed=0)
    config = fc.study_model_config(224, 3.0)
    rows = [generate_sample(syn, "labeled", i) for i in range(2)]
    audio = [fc.sf.read(fc.io.BytesIO(r["audio"]["bytes"]), dtype="float32")[0] for r in rows]
    inputs = XPLProcessor.from_config(config)(audio=audio, sampling_rate=syn.sample_rate)

    def cache_of(vggish_seed):
        torch.manual_seed(vggish_seed)
        model = XPLModel(config).eval()
        with torch.no_grad():
            split = {"ids": [r["id"] for r in rows], "audio_a": model.branch_a.audio_encoder(inputs["audio_log_mel"]),
                     "audio_b": model.branch_b.audio_encoder(inputs["audio_waveform"])}
        return {"config": config.to_dict(), "synthetic": syn.to_json(), "splits": {"labeled": split}}

    cache = cache_of(0)
    fc.add_audio_stems(cache, {"a": (1,), "b": (1, 2)})
    split = cache["splits"]["labeled"]
    assert split["audio_a_top1"].shape == (2, 3, 4096) and split["audio_b_top1"].shape[:2] == (2, 512)
    assert split["audio_b_top2"].shape[:2] == (2, 256)
    with pytest.raises(ValueError, match="does not give back the cached features"):
        fc.add_audio_stems(cache_of(1), {"a": (1,)})


def test_a_rerun_refuses_runs_made_with_other_settings(tmp_path):
    """Rerunning skips finished runs, so a folder holding runs of another protocol (here: heads only) is refused
    before any work instead of being reported as this one's."""
    rp = load("reproduce")
    cp = load("cached_protocol")
    settings = {"steps": 1200, "warmup_steps": 300, "views": True, "unlabeled_batch": 48, "feature_dropout": 0.0,
                "audio_top_a": 1, "audio_top_b": 1}
    old = {k: v for k, v in settings.items() if not k.startswith("audio_top")}  # a record from before the option
    write_record(rp, tmp_path, {"row": "xpl", "seed": 0, "settings": old})
    with pytest.raises(SystemExit, match="audio_top_a: 0 there, 1 now"):
        rp.refuse_other_settings(tmp_path, [("xpl", 0)], settings)
    rp.refuse_other_settings(tmp_path, [("xpl", 0)], {**old, "audio_top_a": 0, "audio_top_b": 0})  # the same: fine
    rp.refuse_other_settings(tmp_path, [("xpl", 1)], settings)  # no record yet: fine
    with pytest.raises(SystemExit, match="other settings"):
        rp.main(["--out", str(tmp_path), "--rows", "xpl", "--seeds", "1", "--cache", str(tmp_path / "none.pt")])
    assert cp.StudySettings().audio_top_a == 0


def test_report_compares_with_another_protocol_by_row_and_seed(tmp_path):
    """`--compare_with`: each row's change against another protocol's runs of the same seeds, and XPL's gap to
    sup_contrastive in each (here: +2 per row in this protocol, and the gap moves from -3 to +1)."""
    rp = load("reproduce")
    here, there = tmp_path / "here", tmp_path / "there"
    for out, offset in ((here, 0.0), (there, -2.0)):
        for row, base in (("sup_only", 60.0), ("sup_contrastive", 70.0), ("xpl", 67.0)):
            for seed in range(3):
                value = base + offset + seed + (4.0 if row == "xpl" and out is here else 0.0)
                summary = {"select": value, "ciou": value / 2, "auc": 40.0}
                write_record(rp, out, {"row": row, "seed": seed, "split": "test", "test": {
                    v: {b: summary for b in ("a", "b", "fused")} for v in ("true", "swapped")}})
    summary = rp.write_report(here, "test", compare_with=there)["comparison"]
    assert summary["sup_only (select)"]["diff"] == pytest.approx(2.0)
    assert summary["xpl - sup_contrastive (select)"]["here"] == pytest.approx(1.0)
    assert summary["xpl - sup_contrastive (select)"]["there"] == pytest.approx(-3.0)
    assert summary["xpl - sup_contrastive (select)"]["seeds"] == [0, 1, 2]
    assert "## Against" in (here / "tables.md").read_text()


def test_the_learning_rate_setting_reaches_the_optimizer(cache, monkeypatch):
    """`--learning_rate` (the protocol's choice on validation) is the peak rate of the heads' AdamW groups."""
    cp = load("cached_protocol")
    peaks = []
    groups = cp.parameter_groups

    def recorded(model, learning_rate, *args, **kwargs):
        out = groups(model, learning_rate, *args, **kwargs)
        peaks.append(sorted({group["lr"] for group in out}))
        return out

    monkeypatch.setattr(cp, "parameter_groups", recorded)
    from xpl_hf.method import XPLMethod

    settings = cp.StudySettings(num_labeled=4, steps=2, warmup_steps=1, labeled_batch=4, unlabeled_batch=8,
                                embed_dim=16, learning_rate=3e-3)
    cp.train_run(cache, XPLMethod.from_name("sup_only"), 0, settings)
    assert peaks == [[3e-3]]


def test_the_learning_rate_option_is_a_setting_of_the_runs(tmp_path):
    """The CLI's `--learning_rate` is recorded with the runs (a record without it was made at 1e-3, the protocol's rate
    before the choice), and a rerun at another rate is refused."""
    rp = load("reproduce")
    write_record(rp, tmp_path, {"row": "xpl", "seed": 0, "settings": {"steps": 1200, "warmup_steps": 300}})
    argv = ["--out", str(tmp_path), "--rows", "xpl", "--seeds", "1", "--cache", str(tmp_path / "none.pt")]
    with pytest.raises(SystemExit, match="learning_rate: 0.001 there, 0.003 now"):
        rp.main(argv)  # the default: 3e-3
    with pytest.raises(SystemExit, match="learning_rate: 0.001 there, 0.005 now"):
        rp.main([*argv, "--learning_rate", "5e-3"])
