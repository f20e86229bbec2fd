"""Options of train_xpl.py (xpl_hf.training_args): every numeric flag validated before any work, no secret logged."""

import pytest

import xpl_hf.method as method_module
from xpl_hf import model_selection
from xpl_hf.curriculum import CurriculumSelector
from xpl_hf.method import XPLMethod
from xpl_hf.model_selection import BestModelTracker
from xpl_hf.pseudo_labels import PseudoLabelBank
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


def _lenient(cls, **safe):
    """``cls.__init__`` with the keyword settings in ``safe`` replaced by valid values: the owner accepts anything."""
    real = cls.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **{**kwargs, **{k: v for k, v in safe.items() if k in kwargs}})
    return init


# (flag, bad value, the owner that holds the rule, how to make that owner accept the value)
OWNED_RULES = [
    ("pl_ema_alpha", "1.0", lambda: XPLMethod(pl_ema_alpha=1.0).validate(),
     lambda mp: mp.setattr(PseudoLabelBank, "__init__", _lenient(PseudoLabelBank, alpha=0.5))),
    ("curriculum_r0", "0", lambda: XPLMethod(curriculum_r0=0.0).validate(),
     lambda mp: mp.setattr(CurriculumSelector, "__init__", _lenient(CurriculumSelector, r0=0.5))),
    ("curriculum_window", "0", lambda: XPLMethod(curriculum_window=0).validate(),
     lambda mp: mp.setattr(CurriculumSelector, "__init__", _lenient(CurriculumSelector, window=8))),
    ("cross_normalization", "batch", lambda: XPLMethod(cross_normalization="batch"),
     lambda mp: mp.setattr(method_module, "CROSS_NORMALIZATIONS", ("unlabeled", "admitted", "batch"))),
    ("model_selection", "worst", lambda: BestModelTracker("worst"),
     lambda mp: mp.setattr(model_selection, "MODEL_SELECTION_RULES", ("best", "best_stage2", "last", "worst"))),
]


@pytest.mark.parametrize("flag, value, owner, accept", OWNED_RULES, ids=[rule[0] for rule in OWNED_RULES])
def test_each_rule_has_one_owner(flag, value, owner, accept, monkeypatch):
    """A setting's rule lives with its owner (the PL-EMA bank, the curriculum, XPLMethod, BestModelTracker): the
    option's error is the owner's message with the flag's "--", and an owner that accepts the value makes the
    option accept it too, so no second copy of the rule exists in the options."""
    with pytest.raises(ValueError) as owned:
        owner()
    with pytest.raises(ValueError) as parsed:
        parse_args([f"--{flag}", value])
    assert str(owned.value).startswith(f"{flag} ") and str(parsed.value) == f"--{owned.value}"
    accept(monkeypatch)
    owner()  # the owner now accepts the value ...
    parse_args([f"--{flag}", value])  # ... and so do the options


def test_on_bad_sample_is_checked_by_the_collator():
    """--on_bad_sample's rule is the collator's (train_xpl.py builds it before any other work), not the options'."""
    from xpl_hf import XPLConfig, XPLProcessor
    from xpl_hf.data.transforms import XPLCollator

    assert parse_args(["--on_bad_sample", "ignore"]).on_bad_sample == "ignore"
    with pytest.raises(ValueError, match="on_bad_sample must be 'skip' or 'raise', got 'ignore'"):
        XPLCollator(XPLProcessor.from_config(XPLConfig()), train=True, on_bad_sample="ignore")


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
