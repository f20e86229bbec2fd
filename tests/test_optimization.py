"""xpl_hf.optimization: which trunks freeze, the optimiser's parameter groups and the curriculum's default ramp, the
rules train_xpl.py and the study protocols of bench/ share."""

import pytest

from xpl_hf import XPLConfig, XPLModel
from xpl_hf.modeling_xpl import TopStages
from xpl_hf.optimization import default_rampup_steps, freeze_backbones, parameter_groups


@pytest.fixture(scope="module")
def config():
    return XPLConfig(image_backbone_a="efficientnet_lite0", image_backbone_b="efficientnet_lite0", image_size=64,
                     vggish_fc_dim=8, embed_dim=16)


def trainable_parts(model):
    return {".".join(n.split(".")[:2]) for n, p in model.named_parameters() if p.requires_grad}


def test_freezing_keeps_the_named_trunks_and_their_top_stages(config):
    model = XPLModel(config)
    assert freeze_backbones(model, "none", TopStages()) == [] and all(p.requires_grad for p in model.parameters())
    frozen = freeze_backbones(model, "all", TopStages())
    assert len(frozen) == 4 and not any(p.requires_grad for m in frozen for p in m.parameters())
    assert trainable_parts(model) == {"branch_a.visual_proj", "branch_a.audio_proj", "branch_a.map_log_scale",
                                      "branch_a.map_bias", "branch_b.visual_proj", "branch_b.audio_proj",
                                      "branch_b.map_log_scale", "branch_b.map_bias"}

    model = XPLModel(config)
    frozen = freeze_backbones(model, "image", TopStages(image=1))
    assert len(frozen) == 2  # both image trunks; the audio trunks train
    last = model.branch_a.image_encoder.top_stages(1)[0]
    assert all(p.requires_grad for p in last.parameters())  # the top stage trains although its trunk is frozen
    assert not all(p.requires_grad for p in model.branch_a.image_encoder.parameters())
    assert all(p.requires_grad for p in model.branch_b.audio_encoder.parameters())
    with pytest.raises(ValueError, match="freeze_backbones 'some'"):
        freeze_backbones(model, "some", TopStages())


def test_pretrained_trunks_train_slower(config):
    model = XPLModel(config)
    report = {"branch_a.image_encoder": "EfficientNet-Lite0", "branch_b.image_encoder": "EfficientNet-Lite0",
              "branch_a.audio_encoder": "random (vggish_fc_dim != 4096)", "branch_b.audio_encoder": "SoundNet-8"}
    fast, slow = parameter_groups(model, 1e-3, 0.1, report)
    assert fast["lr"] == 1e-3 and slow["lr"] == pytest.approx(1e-4)
    named = {id(p): n for n, p in model.named_parameters()}
    slow_parts = {".".join(named[id(p)].split(".")[:2]) for p in slow["params"]}
    assert slow_parts == {"branch_a.image_encoder", "branch_b.image_encoder", "branch_b.audio_encoder"}
    assert len(fast["params"]) + len(slow["params"]) == len(list(model.parameters()))

    everything = parameter_groups(model, 1e-3, 0.1, {"all": "from some/folder"})  # a from_pretrained model
    assert {".".join(named[id(p)].split(".")[1:2]) for p in everything[1]["params"]} == {"image_encoder",
                                                                                       "audio_encoder"}
    freeze_backbones(model, "all", TopStages())
    (heads,) = parameter_groups(model, 1e-3, 0.1, report)  # frozen parameters are left out, and the empty group
    assert heads["lr"] == 1e-3 and all(p.requires_grad for p in heads["params"])


def test_the_curriculum_ramps_over_half_of_stage_two():
    assert default_rampup_steps(600, 150) == 225
    assert default_rampup_steps(1200, 300) == 450
    assert default_rampup_steps(10, 9) == 0 and default_rampup_steps(10, 20) == 0  # no stage 2 to ramp over
