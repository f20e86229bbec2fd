"""The training step (xpl_hf.trainer) and the recipe train_xpl.py end to end: every method and ablation, one
model-selection rule for every row, exact resume after SIGKILL, 2-process DDP, bad runs fail early (a missing split is
one line), overlapping splits warn, small runs stay small, a label-carrying unlabelled split is never trained on, the
card reports the run's method settings."""

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

import train_xpl
from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.checkpointing import COMPLETE_MARKER, TrainerState, list_checkpoints
from xpl_hf.data import load_labeled, load_unlabeled_stream
from xpl_hf.data.checks import warn_on_split_overlap
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.model_selection import BestModelTracker
from xpl_hf.trainer import TrainingStep
from xpl_hf.training_args import XPLTrainingArguments

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
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return train_xpl.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def stage2_parts(tiny_benchmark):
    """4 labeled and 4 unlabeled samples, collated as the recipe's loaders do (the step assembles them)."""
    processor = XPLProcessor(image_size=64, clip_seconds=1.0)
    collate = XPLCollator(processor, train=True)
    labeled = load_labeled(tiny_benchmark, "labeled")
    unlabeled = list(load_unlabeled_stream(tiny_benchmark, "unlabeled", shuffle_buffer=0).take(4))
    return collate([labeled[i] for i in range(4)]), collate(unlabeled)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_method_and_ablation_trains(variant, stage2_parts):
    """Two TrainingStep calls of each method on a stage-2 batch: finite loss, the right terms, parameters move."""
    args = XPLTrainingArguments(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0,
                                curriculum_rampup_steps=10, **VARIANTS[variant])
    spec = args.to_method()
    torch.manual_seed(0)
    model = XPLModel(XPLConfig(**args.model_config_kwargs()))
    step = TrainingStep(model, torch.optim.AdamW(model.parameters(), lr=1e-3), spec, bank=spec.make_bank(2),
                        selector=spec.make_selector(), grad_share_steps=1)
    assert step.in_stage2(0) == spec.uses_unlabeled
    batch = step.assemble(*stage2_parts)  # the stage-2 batch, whatever the method (sup_only ignores nothing here)
    before = model.branch_a.visual_proj.weight.detach().clone()
    for i in range(2):
        output = step(batch, i, log_diagnostics=True, check_finite=True)
        assert torch.isfinite(output.loss) and output.optimizer_stepped
    logs, bank = output.logs, step.bank
    assert not torch.equal(before, model.branch_a.visual_proj.weight)
    assert "gradshare_avc" in logs and set(step.running.pop()) >= {"loss", "loss_avc_a"}
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
    spec = lambda **kw: XPLTrainingArguments(**kw).to_method()  # noqa: E731
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
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(_train_cmd(tiny_benchmark, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 900  # generous: the suite may share a loaded machine
    while not list_checkpoints(str(killed)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]  # still running: kill it
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
    from safetensors.torch import load_file

    a = load_file(reference / "checkpoints/checkpoint-4/xpl_state.safetensors")  # bank + curriculum window
    b = load_file(killed / "checkpoints/checkpoint-4/xpl_state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(a["bank_keys"]) > 0
    # the final folder is a loadable model with processor, card and curves
    model = XPLModel.from_pretrained(killed)
    assert model.config.image_size == 64
    for name in ("preprocessor_config.json", "README.md", "training_curves.png", "eval_results.json"):
        assert (killed / name).is_file(), name
    assert "model-index" in (killed / "README.md").read_text()
    assert not (killed / "best").exists()  # the best model is moved to the root, not copied: weights stored once


def test_two_cpu_processes_with_accelerate_launch(tiny_benchmark, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           *_train_cmd(tiny_benchmark, tmp_path / "ddp")[1:], "--max_train_steps", "3"]
    result = subprocess.run(cmd, env={**_env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "ddp/checkpoints/checkpoint-3" / COMPLETE_MARKER).read_text())
    assert len(state["unlabeled"]) == 2  # one position per process (cached stems: batches of its own rows)
    assert all(pos == {"epoch": 0, "batch": 2} for pos in state["unlabeled"])  # 2 stage-2 steps, per rank
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


def test_config_file_and_cli_override(tmp_path):
    (tmp_path / "recipe.yaml").write_text("method: hard_pl\nlearning_rate: 0.01\nmax_train_steps: 7\n")
    args = train_xpl.parse_args(["--config", str(tmp_path / "recipe.yaml"), "--learning_rate", "0.5"])
    assert (args.method, args.learning_rate, args.max_train_steps) == ("hard_pl", 0.5, 7)
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.01\n")
    with pytest.raises(ValueError, match="unknown option 'learning_rat'"):
        train_xpl.parse_args(["--config", str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize("argv, error, message", [
    (["--dataset", "/no/such/folder"], FileNotFoundError, "neither a local folder nor a Hub dataset id"),
    (["--method", "sup_only", "--no_pl_ema", "true"], ValueError, "ablation of --method xpl"),
    (["--method", "mean_teacher"], ValueError, "--method 'mean_teacher': must be one of"),
    (["--push_to_hub", "true"], ValueError, "--hub_model_id"),
    (["--on_bad_sample", "ignore"], ValueError, "on_bad_sample must be 'skip' or 'raise'"),  # the collator's rule
])
def test_bad_runs_fail_early(argv, error, message, tiny_benchmark, tmp_path):
    argv = ["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, *argv]
    with pytest.raises(error, match=message):
        run_main(argv)


def test_unlabeled_split_as_labeled_is_refused(tiny_benchmark, tmp_path):
    with pytest.raises(ValueError, match="no sample has a box|boxes"):
        run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--labeled_split", "unlabeled"])


def test_resume_with_other_settings_is_refused_and_no_secret_is_logged(tiny_benchmark, tmp_path):
    common = ["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "1",
              "--warmup_stage_steps", "1", "--checkpointing_steps", "1", "--eval_steps", "1"]
    run_main([*common, "--report_to", "tensorboard", "--hub_token", "hf_SECRET_TOKEN"])
    for path in tmp_path.rglob("*"):  # hparams.yml, TensorBoard events, card, eval_results: no token, no local path
        if path.is_file() and path.suffix not in (".safetensors", ".pt", ".png"):
            data = path.read_bytes()
            assert b"hf_SECRET_TOKEN" not in data, path
            if path.parent == tmp_path and path.suffix in (".md", ".json"):
                assert str(tmp_path).encode() not in data and tiny_benchmark.encode() not in data, path
    with pytest.raises(ValueError, match="--method: checkpoint 'xpl', now 'hard_pl'"):
        run_main([*common, "--method", "hard_pl", "--resume_from_checkpoint", "latest"])
    with pytest.raises(ValueError, match="--learning_rate: checkpoint 0.001, now 0.01"):
        run_main([*common, "--learning_rate", "0.01", "--resume_from_checkpoint", "latest"])
    run_main([*common, "--eval_steps", "5", "--resume_from_checkpoint", "latest"])  # run control may change
    slash = [tiny_benchmark + "/" if a == tiny_benchmark else a for a in common]
    run_main([*slash, "--resume_from_checkpoint", "latest"])  # the same folder written with a trailing "/"


def test_an_unlabeled_split_with_boxes_is_never_trained_on(tiny_benchmark, tmp_path, caplog):
    """A fully annotated set split 10%/90% (the paper's protocol): the 90% keep their boxes on disk."""
    from datasets import concatenate_datasets

    from xpl_hf.data.streams import DropLabels

    leaky = tmp_path / "leaky"
    for split in ("labeled", "validation", "test"):
        load_labeled(tiny_benchmark, split).to_parquet(str(leaky / "data" / f"{split}-00000-of-00001.parquet"))
    unlabeled = load_labeled(tiny_benchmark, "unlabeled", require_boxes=False)
    boxed = unlabeled.map(lambda row: {"boxes": row["true_boxes"], "gt_rule": "union"})
    concatenate_datasets([boxed]).to_parquet(str(leaky / "data" / "unlabeled-00000-of-00001.parquet"))
    seen = []
    real_call = DropLabels.__call__
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(DropLabels, "__call__", lambda self, row: seen.append(out := real_call(self, row)) or out)
    try:
        with caplog.at_level("WARNING"):
            run_main(["--dataset", str(leaky), "--output_dir", str(tmp_path / "run"), *TINY, "--max_train_steps", "2",
                      "--warmup_stage_steps", "1", "--eval_steps", "1", "--checkpointing_steps", "2",
                      "--grad_share_steps", "1", "--model_selection", "best_stage2"])
    finally:
        monkeypatch.undo()
    assert seen and all(row["gt_rule"] == "none" and row["boxes"] == [] for row in seen)
    assert "carries boxes" in caplog.text
    log = json.loads((tmp_path / "run" / "training_log.json").read_text())
    stage2 = [e for e in log if "train/gradshare_cross" in e]  # instrumentation: each term's share of the update
    assert stage2 and 0 < stage2[-1]["train/gradshare_cross"] < 1
    assert "train/pl_ciou_a" in stage2[-1]  # the dropped boxes still measure pseudo-label quality
    assert {"train/pl_error_b", "train/pl_ema_shift_a", "train/pl_teacher_gap"} <= set(stage2[-1])
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["best_step"] == 2  # validated at steps 1 and 2, --model_selection best_stage2: a stage-2 model
    assert results["method_settings"]["name"] == "xpl" and results["dataset"] == "leaky"


def test_nan_loss_stops_with_a_checkpoint(tiny_benchmark, tmp_path, monkeypatch):
    import xpl_hf.trainer

    real_losses = xpl_hf.trainer.compute_losses
    calls = {"n": 0}

    def poisoned(out, *args, **kwargs):  # the second training step's maps turn NaN
        calls["n"] += 1
        if calls["n"] == 2:
            out.maps_a = out.maps_a * float("nan")
        return real_losses(out, *args, **kwargs)

    monkeypatch.setattr(xpl_hf.trainer, "compute_losses", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 1"):
        run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "3",
                  "--eval_steps", "100", "--checkpointing_steps", "100"])
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["checkpoint-1"]


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
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_xpl.py",
                 "pipeline_xpl.py"):
        assert name in pushed["files"], name
    assert "org/xpl-tiny" in (tmp_path / "README.md").read_text()
    assert "audio-visual-source-localization" in json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]


def test_full_supervision_ceiling_and_frozen_trunks(tiny_benchmark, tmp_path):
    """The oracle row trains on the unlabelled split's true boxes; --freeze_backbones image keeps the trunks."""
    from accelerate.utils import set_seed

    run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_train_steps", "2",
              "--warmup_stage_steps", "1", "--eval_steps", "2", "--method", "full_supervision",
              "--freeze_backbones", "image"])
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert any("train/loss_sup_a" in e for e in log) and not any("train/loss_cross_a" in e for e in log)
    assert json.loads((tmp_path / "eval_results.json").read_text())["method_settings"]["oracle_labels"] is True
    set_seed(0)
    initial = XPLModel(XPLConfig(**XPLTrainingArguments(image_size=64, embed_dim=32, vggish_fc_dim=64,
                                                        image_backbone_a="resnet18", image_backbone_b="resnet18",
                                                        clip_seconds=1.0).model_config_kwargs()))
    trained = XPLModel.from_pretrained(tmp_path)
    frozen = dict(initial.branch_a.image_encoder.state_dict())
    assert all(torch.equal(v, trained.branch_a.image_encoder.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(initial.branch_a.visual_proj.weight, trained.branch_a.visual_proj.weight)


def test_one_model_selection_rule_for_every_method():
    """The kept model: the best validation fused CIoU over ALL evaluations (ties -> the later step), the same rule
    object for every method row; other rules are explicit options applied to every row alike."""
    import inspect

    assert "method" not in inspect.signature(BestModelTracker).parameters  # no per-method branch is possible
    evaluations = [(50, 30.0), (100, 20.0), (150, 30.0), (200, 25.0)]  # stage 2 starts after step 100
    for rule, kept_step, kept in (("best", 150, [True, False, True, False]),
                                  ("best_stage2", 150, [False, False, True, False]),
                                  ("last", 200, [True, True, True, True])):
        tracker, state = BestModelTracker(rule, stage2_start=100), TrainerState()
        assert [tracker.consider(state, s, {"fused/ciou": c}) for s, c in evaluations] == kept, rule
        assert state.best_step == kept_step, rule
    with pytest.raises(ValueError, match="model_selection"):
        XPLTrainingArguments(model_selection="best_of_both")
    with pytest.raises(ValueError, match="no evaluation is after stage 1"):
        XPLTrainingArguments(model_selection="best_stage2", warmup_stage_steps=300, max_train_steps=300)


def test_a_missing_split_is_one_clear_line(tiny_benchmark, tmp_path):
    result = subprocess.run(_train_cmd(tiny_benchmark, tmp_path / "run", "--labeled_split", "train"), env=_env(),
                            capture_output=True, text=True)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "split 'train' not found" in lines[0] and "available splits" in lines[0], lines
    assert not (tmp_path / "run" / ".run.lock").exists()  # the folder's lock is released


def test_overlapping_splits_warn_loudly(caplog):
    import logging

    log = logging.getLogger("test-overlap")
    train, other = {"id": ["a", "b", "c"]}, {"id": ["x", "y"]}
    with caplog.at_level("WARNING"):  # the same split for everything (issue: train/train/train)
        found = warn_on_split_overlap({"labeled": ("train", train), "validation": ("train", train),
                                       "test": ("train", train)}, "unlabeled", log)
    assert len(found) == 3 and caplog.text.count("SPLITS OVERLAP") == 3
    found = warn_on_split_overlap({"labeled": ("labeled", train), "validation": ("validation", other),
                                   "test": ("labeled", train)}, None, log)  # --test_split labeled
    assert found == ["the labeled and test splits are the same split ('labeled')"]
    found = warn_on_split_overlap({"labeled": ("labeled", train), "validation": ("validation", {"id": ["c", "z"]}),
                                   "test": ("test", other)}, "unlabeled", log)  # shared ids under other names
    assert len(found) == 1 and "share 1 sample id(s), e.g. 'c'" in found[0]
    assert warn_on_split_overlap({"labeled": ("labeled", train), "validation": ("validation", other),
                                  "test": ("test", {"id": ["q"]})}, "unlabeled", log) == []


def test_small_runs_stay_small(tiny_benchmark, tmp_path):
    """--save_final_checkpoint false: no checkpoint at the last step; --save_optimizer_state false: checkpoints
    without AdamW's moments (still valid for 'latest'). The Trainer's names --max_steps and
    --per_device_train_batch_size are accepted."""
    from xpl_hf.checkpointing import resolve_checkpoint

    run_main(["--dataset", tiny_benchmark, "--output_dir", str(tmp_path), *TINY, "--max_steps", "3",
              "--per_device_train_batch_size", "4", "--warmup_stage_steps", "1", "--eval_steps", "3",
              "--checkpointing_steps", "2", "--save_final_checkpoint", "false", "--save_optimizer_state", "false"])
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["checkpoint-2"]
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    assert not (checkpoint / "optimizer.pt").exists() and (checkpoint / "scheduler.pt").is_file()
    assert resolve_checkpoint(tmp_path, "latest") == checkpoint
    assert json.loads((tmp_path / "eval_results.json").read_text())["best_step"] == 3
    assert not (tmp_path / ".run.lock").exists()
