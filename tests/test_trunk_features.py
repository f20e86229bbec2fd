"""Frozen trunks computed once: trunk stages, the feature cache (reuse and invalidation), and the cached path's
equality with the full model."""

import logging

import pytest
import torch

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.backbones import EfficientNetLite0Encoder, ResNet18Encoder, SoundNet8, VGGish
from xpl_hf.data import load_labeled
from xpl_hf.data.transforms import XPLSampleTransform
from xpl_hf.modeling_xpl import TopStages, XPLFromTrunkFeatures
from xpl_hf.trunk_features import FeatureBatches, compute_trunk_features, evaluate_features


@pytest.mark.parametrize("trunk, inputs", [
    (ResNet18Encoder, (2, 3, 64, 64)), (EfficientNetLite0Encoder, (2, 3, 64, 64)), (VGGish, (2, 2, 96, 64)),
    (SoundNet8, (2, 33075))])
def test_every_split_of_a_trunk_computes_the_whole_trunk(trunk, inputs):
    torch.manual_seed(0)
    build = (lambda: trunk(64)) if trunk is VGGish else trunk
    encoder = build().eval()
    x = torch.randn(inputs)
    whole = encoder(x)
    for top in range(encoder.num_stages):
        assert torch.allclose(encoder.forward_top(encoder.forward_stem(x, top), top), whole, atol=1e-5), top
    with pytest.raises(ValueError, match="top stages"):
        encoder.forward_stem(x, encoder.num_stages)
    encoder.stages()  # stages reference the trunk's modules and are never registered: checkpoint names stay
    assert list(encoder.state_dict()) == list(build().state_dict())
    top_params = {id(p) for p in encoder.top_stages(1).parameters()}
    assert top_params and top_params <= {id(p) for p in encoder.parameters()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from xpl_hf.data.synthetic import SIZES, generate_benchmark

    root = tmp_path_factory.mktemp("data") / "tiny"
    generate_benchmark(root, seed=0, **SIZES["tiny"])
    config = XPLConfig(image_backbone_a="efficientnet_lite0", image_backbone_b="efficientnet_lite0", image_size=64,
                       embed_dim=16, vggish_fc_dim=64, clip_seconds=1.5)
    torch.manual_seed(0)
    model = XPLModel(config).eval()
    model.branch_b.image_encoder.load_state_dict(model.branch_a.image_encoder.state_dict())  # one shared stem
    return root, model, XPLProcessor.from_config(config)


def test_the_cache_is_reused_and_invalidated(tiny, tmp_path, caplog):
    root, model, processor = tiny
    labeled = load_labeled(str(root), "labeled")
    top = TopStages(image=1, audio_a=1, audio_b=1)

    def cache(**kwargs):
        settings = dict(top=top, role="labeled", views=2, seed=0, cache_dir=tmp_path)
        return compute_trunk_features(model, processor, kwargs.pop("data", labeled), **{**settings, **kwargs})

    with caplog.at_level(logging.INFO, logger="xpl_hf.trunk_features"):
        first = cache()
        again = cache()
    assert first.cache_files == again.cache_files
    assert any("Reusing the cached trunk features" in r.getMessage() for r in caplog.records)
    assert "image_b" not in first.column_names  # both branches' image stems are the same function: stored once
    assert first[0]["image"].shape == (2, 320, 2, 2)  # (views, C, h, w) below the head stage
    changed = [cache(views=3), cache(seed=1), cache(top=TopStages(image=2, audio_a=1, audio_b=1)),
               cache(data=labeled.select(range(8))), cache(role="unlabeled")]
    with torch.no_grad():
        model.branch_a.audio_encoder.features[0].bias += 1.0  # stem weights change
    changed.append(cache())
    with torch.no_grad():
        model.branch_a.audio_encoder.features[0].bias -= 1.0
    files = {first.cache_files[0]["filename"]} | {c.cache_files[0]["filename"] for c in changed}
    assert len(files) == 1 + len(changed)
    before = {p.name for p in tmp_path.iterdir()}
    with torch.no_grad():  # a top stage's weights are not part of the stem: the cache stays valid while it trains
        model.branch_a.audio_encoder.embeddings[4].weight += 1.0
    cache()
    with torch.no_grad():
        model.branch_a.audio_encoder.embeddings[4].weight -= 1.0
    assert {p.name for p in tmp_path.iterdir()} == before


def test_cached_path_equals_the_full_model_and_trains_only_the_top(tiny, tmp_path):
    root, model, processor = tiny
    validation = load_labeled(str(root), "validation")
    top = TopStages(image=2, audio_a=1, audio_b=2)
    features = compute_trunk_features(model, processor, validation, top=top, role="evaluation", cache_dir=tmp_path)
    wrapped = XPLFromTrunkFeatures(model, top)
    batch = FeatureBatches(features)(range(4), train=False)
    sample = [XPLSampleTransform(processor, train=False)(validation[i]) for i in range(4)]
    inputs = {k: torch.stack([s[k] for s in sample]) for k in ("pixel_values", "audio_log_mel", "audio_waveform")}
    with torch.no_grad():
        full, cached = model(**inputs), wrapped(**batch)
    for key in ("maps", "maps_a", "maps_b"):
        assert torch.allclose(getattr(full, key), getattr(cached, key), atol=1e-4), key
    summary = evaluate_features(wrapped, features)
    assert set(summary) == {f"{b}/{m}" for b in ("a", "b", "fused") for m in ("ciou", "auc")}
    model.zero_grad()
    wrapped(**batch).maps_a.sum().backward()
    trained = {id(p) for stage in top.trainable(model) for p in stage.parameters()}
    for name, param in model.named_parameters():
        in_top = id(param) in trained
        head = "proj" in name or "map_" in name
        if not (in_top or head) and name.startswith("branch_a"):
            assert param.grad is None, f"{name} is below the top stages but got a gradient"
    assert any(param.grad is not None for param in top.trainable(model)[0].parameters())


def test_training_batches_draw_views_per_branch_and_step(tiny, tmp_path):
    root, model, processor = tiny
    labeled = load_labeled(str(root), "labeled")
    features = compute_trunk_features(model, processor, labeled, top=TopStages(), role="labeled", views=4,
                                      cache_dir=tmp_path)
    batches = FeatureBatches(features, seed=0)
    first, same, other = batches(range(8), key=3), batches(range(8), key=3), batches(range(8), key=4)
    assert torch.equal(first["image_features"], same["image_features"])  # a resumed run draws the same views
    assert not torch.equal(first["image_features"], first["image_features_b"])  # each branch its own view
    assert not torch.equal(first["image_features"], other["image_features"])
    assert first["is_labeled"].all() and first["gt_maps"].shape == (8, 224, 224)
