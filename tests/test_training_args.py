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
