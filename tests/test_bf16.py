"""bf16 mixed precision end to end: eq. 9 under bf16 autocast is finite and close to fp32 (BCE, consensus and the
PL-EMA arithmetic in fp32, the bank stored in fp16), and the recipe trains with --mixed_precision bf16."""

import copy
import json
import os

import pytest
import torch
from accelerate.state import AcceleratorState

import train_xpl
from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.data import load_labeled, load_unlabeled_stream
from xpl_hf.data.streams import concat_batches
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.maps import pearson_consensus
from xpl_hf.method import XPLMethod
from xpl_hf.trainer import TrainingStep

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def stage2_batch(tiny_benchmark):
    torch.manual_seed(0)
    collate = XPLCollator(XPLProcessor(image_size=64, clip_seconds=1.0), train=True)
    labeled = load_labeled(tiny_benchmark, "labeled")
    unlabeled = list(load_unlabeled_stream(tiny_benchmark, "unlabeled", shuffle_buffer=0).take(4))
    return concat_batches(collate([labeled[i] for i in range(4)]), collate(unlabeled))


def _train(model, batch, dtype, steps=3):
    """`steps` calls of the trainer's TrainingStep with the forward and the losses under `dtype` autocast (None:
    fp32), as Accelerate's mixed precision runs them."""
    method = XPLMethod(curriculum_rampup_steps=10)
    bank = method.make_bank(2)
    train_step = TrainingStep(model, torch.optim.AdamW(model.parameters(), lr=1e-4), method, bank=bank,
                              selector=method.make_selector())
    history = []
    for step in range(steps):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            output = train_step(batch, step, log_diagnostics=True)
            out, loss, logs = output.outputs, output.loss, output.logs
            consensus = pearson_consensus(out.maps_a, out.maps_b)
        assert loss.dtype == torch.float32 and consensus.dtype == torch.float32
        assert all(v.dtype == torch.float32 for k, v in logs.items() if k.startswith("loss_")), logs
        history.append({"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items()}})
    assert bank.labels.dtype == torch.float16 and torch.isfinite(bank.labels.float()).all() and len(bank) == 4
    return out, history


def test_losses_under_bf16_autocast_are_finite_and_close_to_fp32(stage2_batch):
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0))
    out16, bf16 = _train(copy.deepcopy(model), stage2_batch, torch.bfloat16)
    _, fp32 = _train(model, stage2_batch, None)
    assert out16.similarity_a.dtype == torch.bfloat16  # the autocast really ran in bf16 ...
    assert out16.maps_a.dtype == torch.float32  # ... and the maps P, where the BCE terms live, are fp32
    for step, (low, full) in enumerate(zip(bf16, fp32)):
        assert all(torch.isfinite(torch.tensor(v)) for v in low.values()), (step, low)
        if step == 0:  # same weights: the terms agree to bf16 precision
            for name in ("loss", "loss_sup_a", "loss_sup_b", "loss_avc_a", "loss_avc_b", "loss_cross_a",
                         "loss_cross_b", "consensus_mean"):
                assert low[name] == pytest.approx(full[name], rel=0.05, abs=0.01), name
    # a few steps later the two runs still follow each other
    assert bf16[-1]["loss"] == pytest.approx(fp32[-1]["loss"], rel=0.1)


def test_recipe_trains_with_mixed_precision_bf16(tiny_benchmark, tmp_path):
    argv = ["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), "--image_size", "64", "--embed_dim", "32",
            "--vggish_fc_dim", "64", "--clip_seconds", "1.0", "--pretrained_backbones", "false",
            "--train_batch_size", "4", "--unlabeled_batch_size", "4", "--eval_batch_size", "8", "--report_to", "none",
            "--lr_warmup_steps", "0", "--logging_steps", "1", "--mixed_precision", "bf16", "--max_train_steps", "2",
            "--warmup_stage_steps", "1", "--eval_steps", "2", "--checkpointing_steps", "2"]
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        results = train_xpl.main(argv)
        assert AcceleratorState().mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    log = json.loads((tmp_path / "training_log.json").read_text())
    train = [e for e in log if "train/loss" in e]
    assert [e["step"] for e in train] == [1, 2] and train[-1]["train/stage"] == 2
    # every loss and statistic is finite (the curriculum threshold is +inf while no score passes ρ_min)
    assert all(torch.isfinite(torch.tensor(v)) for e in train for k, v in e.items()
               if k.startswith("train/") and k != "train/curriculum_threshold")
    assert "train/loss_cross_a" in train[-1]  # stage 2 ran: pseudo-labels, bank, curriculum under bf16
    assert all(0 <= results[b]["ciou"] <= 100 for b in ("a", "b", "fused"))
