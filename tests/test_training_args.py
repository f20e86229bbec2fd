"""Options of train_xpl.py (xpl_hf.training_args): every numeric flag validated before any work, no secret logged."""

import pytest

from xpl_hf.training_args import XPLTrainingArguments, parse_args


@pytest.mark.parametrize("flag, value", [
    ("learning_rate", "-1"), ("learning_rate", "nan"), ("eval_steps", "0"), ("checkpointing_steps", "0"),
    ("train_batch_size", "0"), ("unlabeled_batch_size", "-2"), ("max_train_steps", "-5"),
    ("warmup_stage_steps", "-1"), ("logging_steps", "0"), ("gradient_accumulation_steps", "0"),
    ("pl_ema_alpha", "1.0"), ("curriculum_r0", "0"), ("sharpen_temperature", "0"), ("avc_temperature", "-0.1"),
    ("consensus_min", "2"), ("weight_decay", "-1"), ("image_size", "100"), ("clip_seconds", "0.5"),
    ("eval_max_samples", "0"), ("checkpoints_total_limit", "0"), ("max_grad_norm", "-1"),
    # upper bounds: a typo is an error naming the flag, not a 6 GiB allocation deep in torch
    ("clip_seconds", "100000"), ("image_size", "32"), ("image_size", "4096"), ("train_batch_size", "100000"),
    ("max_train_steps", "1000000000000"), ("learning_rate", "1000"), ("dataloader_num_workers", "10000"),
    ("curriculum_window", "0"), ("avc_weight", "1e9"), ("cross_normalization", "batch"),
    ("model_selection", "worst"),
])
def test_bad_numbers_name_the_flag(flag, value):
    with pytest.raises(ValueError, match=f"--{flag} "):
        parse_args([f"--{flag}", value])


def test_public_dict_has_no_token_and_no_local_paths(tmp_path):
    args = XPLTrainingArguments(hub_token="hf_secret", dataset=str(tmp_path / "my-data"),
                                output_dir=str(tmp_path / "run"))
    public = args.public_dict()
    assert "hub_token" not in public and "hf_secret" not in str(public)
    assert public["dataset"] == "my-data" and public["output_dir"] == "run"
    assert XPLTrainingArguments(dataset="org/data").public_dict()["dataset"] == "org/data"


def test_no_sharpening_reaches_the_method():
    method = XPLTrainingArguments(no_sharpening=True).to_method()
    assert method.sharpen_temperature is None and method.name == "xpl-no_sharpening"
    assert XPLTrainingArguments(method="sup_only").to_method().to_dict()["pl_ema_alpha"] == 0.0


def test_help_documents_every_flag():
    import contextlib
    import dataclasses
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args(["--help"])
    text = out.getvalue()
    for f in dataclasses.fields(XPLTrainingArguments):
        assert f"--{f.name}" in text and f.metadata.get("help"), f.name


def test_trainer_aliases_map_to_the_options():
    args = parse_args(["--max_steps", "5", "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "7",
                       "--save_steps", "2", "--save_total_limit", "1", "--warmup_steps", "4"])
    assert (args.max_train_steps, args.train_batch_size, args.eval_batch_size) == (5, 3, 7)
    assert (args.checkpointing_steps, args.checkpoints_total_limit, args.lr_warmup_steps) == (2, 1, 4)
    # the Trainer's --warmup_steps is the learning-rate warm-up, not stage 1
    assert args.warmup_stage_steps == XPLTrainingArguments.warmup_stage_steps


def test_each_rule_has_one_owner():
    """The method's settings are checked by XPLMethod (the options only prefix the flag), so the rule exists once."""
    from xpl_hf.method import XPLMethod

    with pytest.raises(ValueError, match=r"^pl_ema_alpha 1.0: must be in \[0, 1\)"):
        XPLMethod(pl_ema_alpha=1.0).validate()
    with pytest.raises(ValueError, match=r"^--pl_ema_alpha 1.0: must be in \[0, 1\)"):
        parse_args(["--pl_ema_alpha", "1.0"])
    import xpl_hf.method as method
    import xpl_hf.training_args as training_args

    source = open(training_args.__file__).read()
    for setting in ("pl_ema_alpha", "curriculum_r0", "cross_normalization", "on_bad_sample"):
        assert f'need(self.{setting}' not in source and f'"{setting}", "must' not in source, setting
    for setting in ("pl_ema_alpha", "curriculum_r0", "curriculum_window"):  # the bank's and the curriculum's rules
        assert f'"{setting}", "must' not in open(method.__file__).read(), setting


def test_parsing_imports_no_torch():
    """--help must answer at once: the options module and the method settings import no torch (the package's own
    __init__ aside)."""
    import subprocess
    import sys

    code = ("import sys, importlib.util, types; "
            "path = importlib.util.find_spec('xpl_hf').submodule_search_locations[0]; "
            "package = types.ModuleType('xpl_hf'); package.__path__ = [path]; sys.modules['xpl_hf'] = package; "
            "import xpl_hf.training_args; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_smoke_config_keeps_the_run_small():
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    args = parse_args(["--config", str(config)])
    assert (args.max_train_steps, args.synthetic_size, args.save_final_checkpoint) == (6, "tiny", False)
    assert args.checkpointing_steps > args.max_train_steps and args.report_to == "none"
