"""The XPL training recipe's testable parts: arguments, methods, one step's losses, resumable data, checkpoints.

`train_xpl.py` (repository root) strings these together over Accelerate; everything here is importable and tested
without launching it.

Methods (DESIGN §2; the rows of the paper's tables):

| method            | L_sup | L_avc                 | pseudo-labels on unlabeled                              |
| ----------------- | ----- | --------------------- | ------------------------------------------------------- |
| `xpl`             | yes   | labeled + unlabeled   | soft, sharpened, PL-EMA, cross (A <- Y_B, B <- Y_A), curriculum |
| `sup_only`        | yes   | labeled               | none (unlabeled data unused)                            |
| `hard_pl`         | yes   | labeled + unlabeled   | each branch's own binarised map, no EMA, no selection  |
| `sup_contrastive` | yes   | labeled + unlabeled   | none                                                    |
| `self_supervised` | no    | labeled + unlabeled   | none (boxes unused)                                     |

`xpl` ablations: `no_pl_ema` (α = 0), `no_cross_refine` (each branch learns from its own soft label),
`no_sharpening` (T = 0: Ŷ = min-max-normalised P), `no_data_selection` (every unlabeled sample admitted), and any α
via `pl_ema_alpha`. `hard_pl` trains both branches, each as an independent vanilla self-trainer, so A and B are each
a "one model" hard-PL baseline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .curriculum import CurriculumSelector, pearson_consensus
from .losses import cross_bce, infonce_max_pool, supervised_bce, total_loss
from .pseudo_labels import PseudoLabelBank, hard_pseudo_labels, soft_pseudo_labels, synced_bank_update

logger = logging.getLogger(__name__)

METHODS = ("xpl", "sup_only", "hard_pl", "sup_contrastive", "self_supervised")
ABLATIONS = ("no_pl_ema", "no_cross_refine", "no_sharpening", "no_data_selection")
DEFAULT_DATASET = "data/xpl-synthetic"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"  # written last: a checkpoint folder without it is incomplete


# ================================================================================================== arguments
@dataclass
class XPLTrainingArguments:
    """Every option of `train_xpl.py` (parsed with `transformers.HfArgumentParser`; `--config file.yaml|json` too)."""

    # data
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "Local folder of parquet shards or a Hub dataset "
                         "id. The default is the offline synthetic benchmark, generated on first use."})
    labeled_split: str = "labeled"
    unlabeled_split: str = "unlabeled"
    validation_split: str = "validation"
    test_split: str = "test"
    synthetic_size: str = field(default="demo", metadata={"help": "Size of the generated benchmark when --dataset is "
                                "the default: 'tiny' (tests), 'demo' (README main job) or 'full' (5,000 samples)."})
    shuffle_buffer: int = field(default=0, metadata={"help": "Rows in the unlabeled stream's shuffle buffer (0 "
                                "shuffles shards only). Resume is exact either way (see docs)."})
    dataloader_num_workers: int = field(default=0, metadata={
        "help": "Worker processes per data loader. Resume is exact with 0 (default); with more, the unlabeled "
                "stream resumes approximately."})
    on_bad_sample: str = field(default="skip", metadata={"help": "'skip' (warn with the id) or 'raise'."})
    # model
    model_name_or_path: str | None = field(default=None, metadata={"help": "Start from a saved XPL model."})
    image_backbone_a: str = "efficientnet_lite0"
    image_backbone_b: str = "efficientnet_lite0"
    audio_backbone_a: str = "vggish"
    audio_backbone_b: str = "soundnet8"
    image_size: int = 128
    clip_seconds: float = 1.0
    embed_dim: int = 512
    vggish_fc_dim: int = 4096
    pretrained_backbones: bool = field(default=True, metadata={"help": "Load pretrained backbones where reachable."})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format for the image encoders "
                                "(faster convolutions on CPU and with AMP on GPU)."})
    # method
    method: str = field(default="xpl", metadata={"help": f"One of {METHODS}."})
    no_pl_ema: bool = False
    no_cross_refine: bool = False
    no_sharpening: bool = False
    no_data_selection: bool = False
    pl_ema_alpha: float = 0.7
    sharpen_temperature: float = 0.1
    consensus_min: float = 0.0
    curriculum_r0: float = 0.2
    curriculum_rampup_steps: int | None = field(default=None, metadata={"help": "Default: half of stage 2."})
    curriculum_window: int = 2048
    avc_weight: float = 0.5
    avc_temperature: float = 0.03
    # schedule
    max_train_steps: int = 300
    warmup_stage_steps: int = field(default=100, metadata={"help": "Stage 1 (labeled only) length in steps."})
    train_batch_size: int = field(default=8, metadata={"help": "Labeled samples per step and process."})
    unlabeled_batch_size: int = field(default=8, metadata={"help": "Unlabeled samples per step and process."})
    learning_rate: float = 1e-3
    backbone_learning_rate_scale: float = field(default=1.0, metadata={"help": "LR factor of pretrained backbones."})
    weight_decay: float = 1e-4
    lr_scheduler_type: str = "cosine"
    lr_warmup_steps: int = 20
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = field(default=None, metadata={"help": "no|fp16|bf16 (default: accelerate config)."})
    seed: int = 0
    # logging, evaluation, checkpoints
    output_dir: str = "xpl-output"
    logging_steps: int = 10
    eval_steps: int = 50
    eval_batch_size: int = 32
    eval_max_samples: int | None = None
    checkpointing_steps: int = 100
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard|wandb|all|none"})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
    hub_private: bool = False
    config: str | None = field(default=None, metadata={"help": "YAML/JSON file of arguments; the CLI overrides it."})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r} is unknown; choose one of {METHODS}.")
        ablations = [n for n in ABLATIONS if getattr(self, n)]
        if ablations and self.method != "xpl":
            raise ValueError(f"--{ablations[0]} is an ablation of --method xpl, not of {self.method!r}.")
        if self.on_bad_sample not in ("skip", "raise"):
            raise ValueError("--on_bad_sample must be 'skip' or 'raise'.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id ORG/NAME.")
        if self.curriculum_rampup_steps is None:
            self.curriculum_rampup_steps = max((self.max_train_steps - self.warmup_stage_steps) // 2, 0)


def config_file_to_argv(path: str) -> list[str]:
    """A YAML or JSON file of {option: value} -> CLI tokens, to be placed before the real CLI (which wins)."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path!r} does not exist.")
    with open(path) as f:
        values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
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


# ==================================================================================================== methods
@dataclass(frozen=True)
class MethodSpec:
    """What one training step optimises (see the module table)."""

    name: str
    supervised: bool = True
    avc_on_unlabeled: bool = True
    pseudo_labels: str | None = "soft"  # "soft" | "hard" | None
    cross_refine: bool = True
    pl_ema_alpha: float = 0.7
    sharpen_temperature: float | None = 0.1
    data_selection: bool = True

    @property
    def uses_unlabeled(self) -> bool:
        return self.avc_on_unlabeled or self.pseudo_labels is not None


def method_spec(args: XPLTrainingArguments) -> MethodSpec:
    """The `MethodSpec` of `--method` and the ablation switches."""
    if args.method == "xpl":
        return MethodSpec(
            "xpl", pl_ema_alpha=0.0 if args.no_pl_ema else args.pl_ema_alpha,
            sharpen_temperature=None if args.no_sharpening else args.sharpen_temperature,
            cross_refine=not args.no_cross_refine, data_selection=not args.no_data_selection)
    if args.method == "sup_only":
        return MethodSpec("sup_only", avc_on_unlabeled=False, pseudo_labels=None)
    if args.method == "hard_pl":
        return MethodSpec("hard_pl", pseudo_labels="hard", cross_refine=False, pl_ema_alpha=0.0,
                          sharpen_temperature=None, data_selection=False)
    if args.method == "sup_contrastive":
        return MethodSpec("sup_contrastive", pseudo_labels=None)
    return MethodSpec("self_supervised", supervised=False, pseudo_labels=None)


def run_name(args: XPLTrainingArguments) -> str:
    """A short name for the method + ablations, e.g. 'xpl', 'xpl-no_pl_ema', 'xpl-alpha0.5'."""
    parts = [args.method]
    parts += [n for n in ABLATIONS if getattr(args, n)]
    if args.method == "xpl" and not args.no_pl_ema and args.pl_ema_alpha != 0.7:
        parts.append(f"alpha{args.pl_ema_alpha:g}")
    return "-".join(parts)


# ================================================================================================ step losses
def compute_losses(out, batch: dict, spec: MethodSpec, *, bank: PseudoLabelBank | None,
                   selector: CurriculumSelector | None, pl_step: int, avc_weight: float = 0.5,
                   avc_temperature: float = 0.03, accelerator=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 9 for one batch of labeled and/or unlabeled samples.

    Args:
        out: `XPLModelOutput` of the model on `batch` (maps (B, h, w), visual features (B, D, h, w), ...).
        batch: collated batch: `is_labeled` (B,), `gt_maps` (B, 224, 224), `ids`; `true_gt_maps` optional
            (diagnostics only: never used in a loss).
        spec: the method.
        bank, selector: the PL-EMA bank and the curriculum (XPL); None for methods without soft pseudo-labels.
        pl_step: stage-2 step t, for the curriculum's r(t).
    Returns:
        (total loss, logs {name: float}).
    """
    labeled = batch["is_labeled"].to(out.maps_a.device)
    unlabeled = ~labeled
    branches = {"a": (out.maps_a, out.visual_features_a, out.audio_embeds_a),
                "b": (out.maps_b, out.visual_features_b, out.audio_embeds_b)}
    terms: dict[str, dict[str, torch.Tensor]] = {"a": {}, "b": {}}
    avc_mask = labeled | unlabeled if spec.avc_on_unlabeled else labeled
    for m, (maps, visual, audio) in branches.items():
        if spec.supervised and labeled.any():
            terms[m]["sup"] = supervised_bce(maps[labeled], batch["gt_maps"].to(maps.device)[labeled])
        if int(avc_mask.sum()) >= 2:
            terms[m]["avc"] = infonce_max_pool(visual[avc_mask], audio[avc_mask], avc_temperature)
    logs: dict[str, float] = {}
    if spec.pseudo_labels is not None and unlabeled.any():
        maps_a, maps_b = out.maps_a[unlabeled], out.maps_b[unlabeled]
        ids = [i for i, keep in zip(batch["ids"], unlabeled.tolist()) if keep]
        if spec.pseudo_labels == "hard":
            targets = {"a": hard_pseudo_labels(maps_a.detach()), "b": hard_pseudo_labels(maps_b.detach())}
        else:
            sharpened = {"a": soft_pseudo_labels(maps_a, spec.sharpen_temperature),
                         "b": soft_pseudo_labels(maps_b, spec.sharpen_temperature)}
            targets = synced_bank_update(bank, ids, sharpened, accelerator, alpha=spec.pl_ema_alpha)
        consensus = pearson_consensus(maps_a, maps_b)
        if spec.data_selection:
            admitted = selector.select(consensus, pl_step, accelerator)
            logs["curriculum_threshold"] = selector.last_threshold
        else:
            admitted = torch.ones_like(consensus, dtype=torch.bool)
        teacher = {"a": "b", "b": "a"} if spec.cross_refine else {"a": "a", "b": "b"}
        terms["a"]["cross"] = cross_bce(maps_a, targets[teacher["a"]], admitted)
        terms["b"]["cross"] = cross_bce(maps_b, targets[teacher["b"]], admitted)
        logs.update(admitted_fraction=admitted.float().mean().item(), consensus_mean=consensus.mean().item(),
                    consensus_p10=consensus.quantile(0.1).item(), consensus_p90=consensus.quantile(0.9).item())
        if "true_gt_maps" in batch:
            logs.update(pseudo_label_quality(targets, batch["true_gt_maps"][unlabeled.cpu()], admitted))
    loss = total_loss({m: t for m, t in terms.items() if t}, avc_weight)
    for m, parts in terms.items():
        for name, value in parts.items():
            logs[f"loss_{name}_{m}"] = value.item()
    return loss, logs


@torch.no_grad()
def pseudo_label_quality(targets: dict[str, torch.Tensor], true_gt_maps: torch.Tensor,
                         admitted: torch.Tensor) -> dict[str, float]:
    """Diagnostics only: CIoU (%) of each model's pseudo-labels against the true boxes of the unlabeled samples,
    over all of them and over the admitted ones (the protocol of `xpl_hf.evaluation`)."""
    from .evaluation import per_sample_ciou

    logs = {}
    admitted = admitted.cpu()
    for m, y in targets.items():
        scores = torch.as_tensor(per_sample_ciou(list(y.float().cpu()), list(true_gt_maps.cpu())))
        logs[f"pl_ciou_{m}"] = 100.0 * (scores >= 0.5).float().mean().item()
        if admitted.any():
            logs[f"pl_ciou_admitted_{m}"] = 100.0 * (scores[admitted] >= 0.5).float().mean().item()
    return logs


# ============================================================================================ resumable data
def sample_seed(*parts) -> int:
    """A stable 31-bit seed from any values (crc32 of their text), the same in every process and run."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


class SeededCollate:
    """Wraps a collate function so its random augmentations depend only on (seed, the batch's ids).

    This makes batches reproducible after a resume whatever the worker scheduling, without touching the caller's
    global RNG state.
    """

    def __init__(self, collate, seed: int):
        self.collate, self.seed = collate, seed

    def __call__(self, examples):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, *(e.get("id") for e in examples)))
            return self.collate(examples)


class LabeledBatches:
    """Endless, resumable batches of indices over a map-style dataset.

    Epoch e uses the permutation `randperm(n, seed + e)`; process r takes positions r, r + world, ... of it and
    cuts them into batches of `batch_size` (drop_last). The position (epoch, batch) is what a checkpoint stores.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        per_rank = num_rows // world_size
        if per_rank < batch_size:
            raise ValueError(f"{num_rows} labeled rows over {world_size} process(es) cannot fill one batch of "
                             f"{batch_size}; lower --train_batch_size.")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.batch = 0, 0
        self.batches_per_epoch = per_rank // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            mine = torch.randperm(self.num_rows, generator=g)[self.rank::self.world_size].tolist()
            while self.batch < self.batches_per_epoch:
                start = self.batch * self.batch_size
                self.batch += 1
                yield mine[start:start + self.batch_size]
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class UnlabeledStream:
    """Endless, resumable batches from a streamed split (this process's shard, shuffled per epoch).

    Resume: the stream of epoch e is rebuilt from the same seed and the rows this process already consumed are
    skipped (`IterableDataset.skip`, no decoding), so the continuation is exact with or without a shuffle buffer
    (the buffer is seeded), when the loader has no worker processes. With workers, each worker reads its own shards,
    and the continuation is approximate.

    Args:
        make_stream: `epoch -> datasets.IterableDataset` of raw rows for this process.
        make_loader: `IterableDataset -> iterable of collated batches`.
    """

    def __init__(self, make_stream, make_loader):
        self.make_stream, self.make_loader = make_stream, make_loader
        self.epoch, self.consumed = 0, 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            stream = self.make_stream(self.epoch)
            if self.consumed:
                stream = stream.skip(self.consumed)
            produced = False
            for batch in self.make_loader(stream):
                produced = True
                if batch is None:  # every row of the batch was bad (and skipped with a warning)
                    continue
                self.consumed += len(batch["ids"])
                yield batch
            if not produced and self.consumed == 0:
                raise ValueError("the unlabeled stream is empty on this process: check --unlabeled_split, or use "
                                 "--method sup_only.")
            self.epoch, self.consumed = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


# ============================================================================================== checkpoints
@dataclass
class TrainerState:
    """Counters and history saved with every checkpoint (besides model, optimizer, scheduler, RNG, bank, window)."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    labeled: dict = field(default_factory=lambda: {"epoch": 0, "batch": 0})
    unlabeled: dict = field(default_factory=lambda: {"epoch": 0, "consumed": 0})
    log_history: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def run_fingerprint(args: XPLTrainingArguments, model_config) -> dict:
    """What must not change across a resume: the method, its hyper-parameters and the model architecture."""
    keep = ("method", "no_pl_ema", "no_cross_refine", "no_sharpening", "no_data_selection", "pl_ema_alpha",
            "sharpen_temperature", "consensus_min", "curriculum_r0", "curriculum_window", "train_batch_size",
            "unlabeled_batch_size", "seed", "dataset", "warmup_stage_steps")
    arch = ("image_backbone_a", "image_backbone_b", "audio_backbone_a", "audio_backbone_b", "embed_dim",
            "image_size", "clip_seconds", "vggish_fc_dim")
    return {**{k: getattr(args, k) for k in keep}, **{k: getattr(model_config, k) for k in arch}}


def check_fingerprint(saved: dict, current: dict, path: str) -> None:
    """Raise if a checkpoint was made by a different method or model than this run's."""
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise ValueError(f"checkpoint {path} does not match this run ({'; '.join(diffs)}). Resume with the same "
                         "options, or start a new --output_dir.")


def checkpoint_root(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints (named checkpoint-N and holding the completion marker), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))
             and (p / COMPLETE_MARKER).is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str | None) -> Path | None:
    """'latest' -> the newest complete checkpoint (or None on a fresh run); a path -> that path, checked."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not (path / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {path} is not a complete checkpoint (no {COMPLETE_MARKER}).")
    return path


def save_checkpoint(accelerator, output_dir: str, state: TrainerState, total_limit: int | None) -> Path:
    """`accelerator.save_state` into a temporary folder, then an atomic rename to checkpoint-<step>.

    A run killed at any moment leaves either no new checkpoint or a complete one; `latest` never picks a partial
    folder (it has a temporary name and no completion marker). Older checkpoints beyond `total_limit` are removed
    after the new one is complete.
    """
    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{state.step}"
    tmp = root / f".tmp-checkpoint-{state.step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / COMPLETE_MARKER, "w") as f:
            json.dump(state.state_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def atomic_save_pretrained(model, processor, folder: str | Path) -> None:
    """`save_pretrained` of model + processor into a temporary sibling, then swap it in place of `folder`."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    old = folder.with_name(f".old-{folder.name}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def model_kwargs_from_args(args: XPLTrainingArguments) -> dict[str, Any]:
    """The `XPLConfig` fields set by the training arguments."""
    keys = ("image_backbone_a", "image_backbone_b", "audio_backbone_a", "audio_backbone_b", "image_size",
            "clip_seconds", "embed_dim", "vggish_fc_dim", "avc_weight", "avc_temperature", "sharpen_temperature",
            "consensus_min", "curriculum_r0", "curriculum_rampup_steps", "curriculum_window")
    kwargs = {k: getattr(args, k) for k in keys}
    kwargs["pl_ema_alpha"] = 0.0 if args.no_pl_ema else args.pl_ema_alpha
    return kwargs
