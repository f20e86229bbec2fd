"""The XPL trainer: every method and ablation, exact resume after SIGKILL, 2-process DDP, bad runs fail early."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.curriculum import CurriculumSelector
from xpl_hf.data import load_labeled, load_unlabeled_stream
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.pseudo_labels import PseudoLabelBank
from xpl_hf.training import (
    COMPLETE_MARKER,
    LabeledBatches,
    UnlabeledStream,
    XPLTrainingArguments,
    compute_losses,
    list_checkpoints,
    method_spec,
    model_kwargs_from_args,
    resolve_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image_size", "64", "--embed_dim", "32", "--vggish_fc_dim", "64", "--clip_seconds", "1.0",
        "--image_backbone_a", "resnet18", "--image_backbone_b", "resnet18", "--pretrained_backbones", "false",
        "--train_batch_size", "4", "--unlabeled_batch_size", "4", "--eval_batch_size", "8", "--report_to", "none",
        "--lr_warmup_steps", "0", "--logging_steps", "1"]
VARIANTS = {
    "xpl": {},
    "sup_only": {"method": "sup_only"},
    "hard_pl": {"method": "hard_pl"},
    "sup_contrastive": {"method": "sup_contrastive"},
    "self_supervised": {"method": "self_supervised"},
    "xpl-no_pl_ema": {"no_pl_ema": True},
    "xpl-no_cross_refine": {"no_cross_refine": True},
    "xpl-no_sharpening": {"no_sharpening": True},
    "xpl-no_data_selection": {"no_data_selection": True},
    "xpl-alpha0.3": {"pl_ema_alpha": 0.3},
}


def run_main(argv):
    import train_xpl

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return train_xpl.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def mixed_batch(tiny_benchmark):
    """4 labeled + 4 unlabeled samples, collated like a stage-2 training batch."""
    import train_xpl

    processor = XPLProcessor(image_size=64, clip_seconds=1.0)
    collate = XPLCollator(processor, train=True)
    labeled = load_labeled(tiny_benchmark, "labeled")
    unlabeled = list(load_unlabeled_stream(tiny_benchmark, "unlabeled", shuffle_buffer=0).take(4))
    return train_xpl.concat_batches(collate([labeled[i] for i in range(4)]), collate(unlabeled))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_method_and_ablation_trains(variant, mixed_batch):
    """Two optimiser steps of each method on a stage-2 batch: finite loss, the right terms, parameters move."""
    args = XPLTrainingArguments(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0,
                                curriculum_rampup_steps=10, **VARIANTS[variant])
    spec = method_spec(args)
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(**model_kwargs_from_args(args)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bank = PseudoLabelBank(2, alpha=spec.pl_ema_alpha)
    selector = CurriculumSelector(window=64, r0=0.2, rampup_steps=10, enabled=spec.data_selection)
    before = model.branch_a.visual_proj.weight.detach().clone()
    for step in range(2):
        out = model(pixel_values=mixed_batch["pixel_values_a"], pixel_values_b=mixed_batch["pixel_values_b"],
                    audio_log_mel=mixed_batch["audio_log_mel"], audio_waveform=mixed_batch["audio_waveform"])
        loss, logs = compute_losses(out, mixed_batch, spec, bank=bank, selector=selector, pl_step=step)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(before, model.branch_a.visual_proj.weight)
    assert ("loss_sup_a" in logs) == (spec.supervised)
    assert ("loss_cross_a" in logs) == (spec.pseudo_labels is not None)
    assert "loss_avc_b" in logs
    if spec.pseudo_labels == "soft":
        assert len(bank) == 4  # the 4 unlabeled ids, one row each (both models)
        assert 0.0 <= logs["admitted_fraction"] <= 1.0
        assert "pl_ciou_a" in logs  # diagnostics against the true boxes of the unlabeled split
    else:
        assert len(bank) == 0
    if variant == "xpl-no_data_selection" or variant == "hard_pl":
        assert logs["admitted_fraction"] == 1.0
    if variant == "xpl":
        assert logs["admitted_fraction"] < 1.0  # r(0) = 0.2 of the window


def test_methods_table_matches_design():
    spec = lambda **kw: method_spec(XPLTrainingArguments(**kw))  # noqa: E731
    assert spec().cross_refine and spec().pseudo_labels == "soft" and spec().pl_ema_alpha == 0.7
    assert spec(no_pl_ema=True).pl_ema_alpha == 0.0
    assert spec(no_sharpening=True).sharpen_temperature is None
    assert not spec(no_cross_refine=True).cross_refine
    assert not spec(no_data_selection=True).data_selection
    assert not spec(method="sup_only").uses_unlabeled
    hard = spec(method="hard_pl")
    assert (hard.pseudo_labels, hard.cross_refine) == ("hard", False)
    assert (hard.pl_ema_alpha, hard.data_selection) == (0.0, False)
    assert not spec(method="self_supervised").supervised


def _train_cmd(dataset, output_dir, *extra):
    return [sys.executable, str(ROOT / "train_xpl.py"), "--dataset", dataset, "--output_dir", str(output_dir), *TINY,
            "--max_train_steps", "4", "--warmup_stage_steps", "1", "--checkpointing_steps", "2",
            "--checkpoints_total_limit", "5", "--eval_steps", "100", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_sigkill_and_resume_is_exact(tiny_benchmark, tmp_path):
    """A run killed (SIGKILL) after checkpoint-2 resumes to the same bank, window and per-step losses."""
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(tiny_benchmark, reference), check=True, env=_env(), capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_benchmark, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list_checkpoints(str(killed)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    found = list_checkpoints(str(killed))
    assert [p.name for p in found] == ["checkpoint-2"], "the run must be killed between checkpoints 2 and 4"
    subprocess.run(_train_cmd(tiny_benchmark, killed, "--resume_from_checkpoint", "latest"), check=True, env=_env(),
                   capture_output=True)

    def losses(folder):
        log = json.loads((folder / "checkpoints" / "checkpoint-4" / COMPLETE_MARKER).read_text())["log_history"]
        return {e["step"]: e["train/loss"] for e in log if "train/loss" in e}

    assert losses(killed)[3] == losses(reference)[3] and losses(killed)[4] == losses(reference)[4]
    for index in (0, 1):  # custom_checkpoint_0 = bank, _1 = curriculum window
        a = torch.load(reference / "checkpoints/checkpoint-4" / f"custom_checkpoint_{index}.pkl", weights_only=True)
        b = torch.load(killed / "checkpoints/checkpoint-4" / f"custom_checkpoint_{index}.pkl", weights_only=True)
        for key in a:
            assert (torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]), key
    # the final folder is a loadable model with processor, card and curves
    model = XPLModel.from_pretrained(killed)
    assert model.config.image_size == 64
    for name in ("preprocessor_config.json", "README.md", "training_curves.png", "eval_results.json"):
        assert (killed / name).is_file(), name
    assert "model-index" in (killed / "README.md").read_text()


def test_two_cpu_processes_with_accelerate_launch(tiny_benchmark, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           *_train_cmd(tiny_benchmark, tmp_path / "ddp")[1:], "--max_train_steps", "3"]
    result = subprocess.run(cmd, env={**_env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "ddp/checkpoints/checkpoint-3" / COMPLETE_MARKER).read_text())
    assert len(state["unlabeled"]) == 2  # one stream position per process
    assert all(pos["consumed"] == 4 * 2 for pos in state["unlabeled"])  # 2 stage-2 steps x 4 rows, per rank
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


def test_config_file_and_cli_override(tmp_path):
    import train_xpl

    (tmp_path / "recipe.yaml").write_text("method: hard_pl\nlearning_rate: 0.01\nmax_train_steps: 7\n")
    args = train_xpl.parse_args(["--config", str(tmp_path / "recipe.yaml"), "--learning_rate", "0.5"])
    assert (args.method, args.learning_rate, args.max_train_steps) == ("hard_pl", 0.5, 7)
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.01\n")
    with pytest.raises(ValueError, match="unknown option 'learning_rat'"):
        train_xpl.parse_args(["--config", str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize("argv, error, message", [
    (["--dataset", "/no/such/folder"], FileNotFoundError, "does not exist"),
    (["--method", "sup_only", "--no_pl_ema", "true"], ValueError, "ablation of --method xpl"),
    (["--method", "mean_teacher"], ValueError, "unknown"),
    (["--push_to_hub", "true"], ValueError, "--hub_model_id"),
])
def test_bad_runs_fail_early(argv, error, message, tiny_benchmark, tmp_path):
    argv = ["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, *argv]
    with pytest.raises(error, match=message):
        run_main(argv)


def test_unlabeled_split_as_labeled_is_refused(tiny_benchmark, tmp_path):
    with pytest.raises(ValueError, match="no sample has a box|boxes"):
        run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--labeled_split", "unlabeled"])


def test_resume_with_other_method_is_refused(tiny_benchmark, tmp_path):
    run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "1",
              "--warmup_stage_steps", "1", "--checkpointing_steps", "1", "--eval_steps", "1"])
    with pytest.raises(ValueError, match="method: checkpoint 'xpl' vs now 'hard_pl'"):
        run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "2",
                  "--method", "hard_pl", "--resume_from_checkpoint", "latest"])


def test_nan_loss_stops_with_a_checkpoint(tiny_benchmark, tmp_path, monkeypatch):
    import train_xpl

    real_forward = train_xpl.forward
    calls = {"n": 0}

    def poisoned(model, batch, channels_last=False):
        calls["n"] += 1
        out = real_forward(model, batch, channels_last)
        if calls["n"] == 2:
            out.maps_a = out.maps_a * float("nan")
        return out

    monkeypatch.setattr(train_xpl, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1"):
        run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "3",
                  "--eval_steps", "100", "--checkpointing_steps", "100"])
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["checkpoint-1"]


def test_partial_checkpoints_are_never_latest(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "checkpoint-5").mkdir(parents=True)
    (root / "checkpoint-5" / COMPLETE_MARKER).write_text("{}")
    (root / "checkpoint-9").mkdir()  # killed before its marker was written
    (root / ".tmp-checkpoint-12").mkdir()  # killed inside save_state
    assert resolve_checkpoint(str(tmp_path), "latest").name == "checkpoint-5"
    assert resolve_checkpoint(str(tmp_path / "fresh"), "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path), str(root / "checkpoint-9"))


def test_labeled_batches_resume_position():
    full = LabeledBatches(10, 3, seed=1)
    it = iter(full)
    first = [next(it) for _ in range(5)]  # crosses an epoch (3 batches per epoch)
    resumed = LabeledBatches(10, 3, seed=1)
    resumed.load_state_dict({"epoch": 1, "batch": 1})
    assert next(iter(resumed)) == first[4]
    ranks = [next(iter(LabeledBatches(10, 2, seed=1, rank=r, world_size=2))) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    with pytest.raises(ValueError, match="cannot fill one batch"):
        LabeledBatches(3, 4, seed=0)


def test_empty_unlabeled_stream_is_an_error():
    stream = UnlabeledStream(make_stream=lambda epoch: [], make_loader=lambda s: iter(()))
    with pytest.raises(ValueError, match="unlabeled stream is empty"):
        next(iter(stream))


def test_stream_resume_skips_consumed_rows(tiny_benchmark):
    def make_stream(epoch):
        return load_unlabeled_stream(tiny_benchmark, "unlabeled", seed=3, shuffle_buffer=8, epoch=epoch)

    def make_loader(stream):
        rows = list(stream)
        return [{"ids": [r["id"] for r in rows[i:i + 4]]} for i in range(0, len(rows), 4)]

    full = UnlabeledStream(make_stream, make_loader)
    it = iter(full)
    batches = [next(it)["ids"] for _ in range(10)]  # 8 batches per epoch: crosses into epoch 1
    resumed = UnlabeledStream(make_stream, make_loader)
    resumed.load_state_dict({"epoch": 0, "consumed": 12})
    it2 = iter(resumed)
    assert [next(it2)["ids"] for _ in range(7)] == batches[3:10]


def test_push_to_hub_uploads_the_final_folder(tiny_benchmark, tmp_path, monkeypatch):
    """--push_to_hub hands the finished folder (model, processor, card with model-index) to the Hub uploader."""
    import xpl_hf.hub

    pushed = {}

    def fake_push(folder, repo_id, token=None, private=False, **kwargs):
        pushed.update(folder=Path(folder), repo_id=repo_id, private=private,
                      files=sorted(p.name for p in Path(folder).iterdir()))

    monkeypatch.setattr(xpl_hf.hub, "push_model_folder", fake_push)
    run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "1",
              "--warmup_stage_steps", "1", "--eval_steps", "1", "--push_to_hub", "true",
              "--hub_model_id", "org/xpl-tiny", "--hub_private", "true"])
    assert pushed["repo_id"] == "org/xpl-tiny" and pushed["private"] is True and pushed["folder"] == tmp_path
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_xpl.py"):
        assert name in pushed["files"], name
    assert "org/xpl-tiny" in (tmp_path / "README.md").read_text()
