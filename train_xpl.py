#!/usr/bin/env python
"""Train XPL (cross pseudo-labeling) for semi-supervised audio-visual source localization.

    accelerate launch train_xpl.py                                   # offline demo: synthetic benchmark, ~10 min CPU
    accelerate launch train_xpl.py --dataset ORG/DATA --image_backbone_a resnet18 --image_size 224 ...
    accelerate launch train_xpl.py --config recipe.yaml --resume_from_checkpoint latest

A recipe over Accelerate: arguments -> data -> models -> optimiser -> two-stage loop (stage 1: labeled only;
stage 2: labeled + streamed unlabeled with pseudo-labels) -> evaluation -> checkpoints -> Hub. The method's pieces
live in `xpl_hf` (see `xpl_hf/training.py` for the table of methods and ablations).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list, gather_object, send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_scheduler

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.curriculum import CurriculumSelector
from xpl_hf.data import load_labeled, load_unlabeled_stream
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.evaluation import evaluate_model
from xpl_hf.pretrained import load_pretrained_backbones
from xpl_hf.pseudo_labels import PseudoLabelBank
from xpl_hf.training import (
    DEFAULT_DATASET,
    LabeledBatches,
    SeededCollate,
    TrainerState,
    UnlabeledStream,
    XPLTrainingArguments,
    atomic_save_pretrained,
    check_fingerprint,
    compute_losses,
    config_file_to_argv,
    method_spec,
    model_kwargs_from_args,
    resolve_checkpoint,
    run_fingerprint,
    run_name,
    sample_seed,
    save_checkpoint,
)

logger = get_logger(__name__)

SYNTHETIC_SIZES = {  # 10% of the training pool labeled
    "tiny": dict(num_labeled=16, num_unlabeled=48, num_validation=12, num_test=12, image_size=64),
    "demo": dict(num_labeled=150, num_unlabeled=1350, num_validation=150, num_test=300, image_size=128),
    "full": dict(num_labeled=450, num_unlabeled=4050, num_validation=250, num_test=500, image_size=224),
}


def parse_args(argv: list[str] | None = None) -> XPLTrainingArguments:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        argv = config_file_to_argv(argv[i + 1]) + argv  # the command line wins over the file
    (args,) = HfArgumentParser(XPLTrainingArguments).parse_args_into_dataclasses(args=argv)
    return args


def concat_batches(labeled: dict, unlabeled: dict) -> dict:
    """One forward pass over labeled + unlabeled samples (shared BatchNorm statistics, one DDP all-reduce)."""
    out = {}
    for key, value in labeled.items():
        other = unlabeled.get(key)
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([value, other]) if other is not None else value
        elif isinstance(value, list):
            out[key] = value + list(other)
    if "true_gt_maps" in unlabeled:  # diagnostics: labeled rows get their own ground truth
        out["true_gt_maps"] = torch.cat([labeled["gt_maps"], unlabeled["true_gt_maps"]])
    return out


def forward(model, batch: dict, channels_last: bool = False):
    if channels_last:
        batch = {**batch, **{k: batch[k].contiguous(memory_format=torch.channels_last)
                             for k in ("pixel_values_a", "pixel_values_b")}}
    return model(pixel_values=batch["pixel_values_a"], pixel_values_b=batch["pixel_values_b"],
                 audio_log_mel=batch["audio_log_mel"], audio_waveform=batch["audio_waveform"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    spec = method_spec(args)
    output_dir = Path(args.output_dir)

    # ------------------------------------------------------------------ accelerator, logging, seed
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        step_scheduler_with_optimizer=False,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)  # identical initial weights on every process

    # ---------------------------------------------------------------------------------------- data
    if args.dataset == DEFAULT_DATASET:  # generated once, then reused (its manifest records the parameters)
        if accelerator.is_main_process:
            from xpl_hf.data.synthetic import generate_benchmark

            size = SYNTHETIC_SIZES[args.synthetic_size]
            logger.info(f"Offline synthetic benchmark ({args.synthetic_size}) in {args.dataset}")
            generate_benchmark(args.dataset, seed=0, progress=accelerator.is_local_main_process, **size)
        accelerator.wait_for_everyone()
    elif not (Path(args.dataset).exists() or "/" in args.dataset):
        raise FileNotFoundError(f"--dataset {args.dataset!r} is neither a local folder nor a Hub dataset id.")
    if args.model_name_or_path:  # the saved model defines the architecture
        config = XPLConfig.from_pretrained(args.model_name_or_path)
    else:
        config = XPLConfig(**model_kwargs_from_args(args))
    processor = XPLProcessor.from_config(config)
    labeled = load_labeled(args.dataset, args.labeled_split, require_boxes=spec.supervised)
    validation = load_labeled(args.dataset, args.validation_split)
    train_collate = XPLCollator(processor, train=True, on_bad_sample=args.on_bad_sample)
    labeled_batches = LabeledBatches(len(labeled), args.train_batch_size, args.seed,
                                     accelerator.process_index, accelerator.num_processes)

    def make_labeled_loader():
        return DataLoader(labeled, batch_sampler=labeled_batches, num_workers=args.dataloader_num_workers,
                          collate_fn=SeededCollate(train_collate, sample_seed(args.seed, "labeled")))

    unlabeled_stream = UnlabeledStream(
        make_stream=lambda epoch: load_unlabeled_stream(
            args.dataset, args.unlabeled_split, rank=accelerator.process_index, world_size=accelerator.num_processes,
            seed=args.seed, shuffle_buffer=args.shuffle_buffer, epoch=epoch),
        make_loader=lambda stream: DataLoader(
            stream, batch_size=args.unlabeled_batch_size, num_workers=args.dataloader_num_workers,
            collate_fn=SeededCollate(train_collate, sample_seed(args.seed, "unlabeled"))),
    ) if spec.uses_unlabeled else None

    # -------------------------------------------------------------------------------------- models
    if args.model_name_or_path:
        model = XPLModel.from_pretrained(args.model_name_or_path)
        weights_report = {"all": f"from {args.model_name_or_path}"}
    else:
        model = XPLModel(config)
        weights_report = load_pretrained_backbones(model) if args.pretrained_backbones else {}
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pretrained_parts = {k for k, v in weights_report.items() if not v.startswith("random")}
    logger.info(f"Backbones: {json.dumps(weights_report, indent=1)}", main_process_only=True)

    # ------------------------------------------------------------------------------------ optimiser
    def is_pretrained_backbone(name: str) -> bool:  # trains at --backbone_learning_rate_scale
        part = ".".join(name.split(".")[:2])  # e.g. "branch_a.image_encoder"
        from_checkpoint = args.model_name_or_path is not None and part.endswith("_encoder")
        return from_checkpoint or part in pretrained_parts

    params = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in params if not is_pretrained_backbone(n)], "lr": args.learning_rate},
        {"params": [p for n, p in params if is_pretrained_backbone(n)],
         "lr": args.learning_rate * args.backbone_learning_rate_scale},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=args.weight_decay)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.lr_warmup_steps,
                              num_training_steps=args.max_train_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    # XPL's own state: the PL-EMA bank (eq. 5), the curriculum window (eq. 1-3), counters. All checkpointed.
    bank = PseudoLabelBank(config.map_size, alpha=spec.pl_ema_alpha)
    selector = CurriculumSelector(window=args.curriculum_window, r0=args.curriculum_r0,
                                  rampup_steps=args.curriculum_rampup_steps, rho_min=args.consensus_min,
                                  enabled=spec.data_selection)
    state = TrainerState(fingerprint=run_fingerprint(args, config))
    for obj in (bank, selector, state):
        accelerator.register_for_checkpointing(obj)

    checkpoint = resolve_checkpoint(str(output_dir), args.resume_from_checkpoint)
    if checkpoint is not None:
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        check_fingerprint(saved["fingerprint"], state.fingerprint, str(checkpoint))
        accelerator.load_state(str(checkpoint))
        accelerator.project_configuration.iteration = state.step
        logger.info(f"Resumed from {checkpoint} at step {state.step}", main_process_only=True)
    # Stream positions are per process (each reads its own shard); the checkpoint holds all of them.
    rank = accelerator.process_index
    labeled_batches.load_state_dict(state.labeled[rank] if isinstance(state.labeled, list) else state.labeled)
    if unlabeled_stream is not None:
        position = state.unlabeled[rank] if isinstance(state.unlabeled, list) else state.unlabeled
        unlabeled_stream.load_state_dict(position)

    if accelerator.is_main_process:
        accelerator.init_trackers(run_name(args), config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                          for k, v in vars(args).items()})

    # -------------------------------------------------------------------------------------- the loop
    labeled_iter = iter(make_labeled_loader())
    labeled_start, labeled_used = labeled_batches.state_dict(), 0
    unlabeled_iter = iter(unlabeled_stream) if unlabeled_stream is not None else None
    progress = tqdm(total=args.max_train_steps, initial=state.step, desc=run_name(args),
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    pending_logs: list[dict] = []

    def sync_positions():  # consumed positions (not the loaders' prefetch positions), gathered from all processes
        state.labeled = gather_object([advance(labeled_start, labeled_used, labeled_batches.batches_per_epoch)])
        if unlabeled_stream is not None:
            state.unlabeled = gather_object([unlabeled_stream.state_dict()])

    def validate():
        unwrapped = accelerator.unwrap_model(model)
        result = None
        if accelerator.is_main_process:
            result = evaluate_model(unwrapped, validation, processor=processor, batch_size=args.eval_batch_size,
                                    max_samples=args.eval_max_samples, per_label=False)
        accelerator.wait_for_everyone()
        return result

    model.train()
    while state.step < args.max_train_steps:
        in_stage2 = state.step >= args.warmup_stage_steps and unlabeled_iter is not None
        batch = next(labeled_iter)
        labeled_used += 1
        if batch is None:
            continue
        if in_stage2:
            batch = concat_batches(batch, next(unlabeled_iter))
        batch = send_to_device(batch, accelerator.device, non_blocking=True)
        with accelerator.accumulate(model):
            out = forward(model, batch, args.channels_last)
            loss, logs = compute_losses(
                out, batch, spec, bank=bank, selector=selector, pl_step=state.step - args.warmup_stage_steps,
                avc_weight=args.avc_weight, avc_temperature=args.avc_temperature, accelerator=accelerator)
            finite = accelerator.reduce(torch.isfinite(loss.detach()).float().reshape(1), reduction="sum")
            if int(finite.item()) != accelerator.num_processes:
                sync_positions()
                path = save_checkpoint(accelerator, str(output_dir), state, args.checkpoints_total_limit)
                raise FloatingPointError(f"non-finite loss at step {state.step} ({logs}); the state before this step "
                                         f"is saved in {path}. Lower --learning_rate or use --mixed_precision no.")
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        state.step += 1
        progress.update(1)
        pending_logs.append({"loss": loss.item(), **logs})

        if state.step % args.logging_steps == 0 or state.step == args.max_train_steps:
            keys = {k for entry in pending_logs for k in entry}
            means = {k: sum(e[k] for e in pending_logs if k in e) / sum(k in e for e in pending_logs) for k in keys}
            means.update(lr=scheduler.get_last_lr()[0], stage=2 if in_stage2 else 1)
            pending_logs = []
            progress.set_postfix(loss=f"{means['loss']:.3f}", stage=means["stage"])
            accelerator.log({f"train/{k}": v for k, v in means.items()}, step=state.step)
            state.log_history.append({"step": state.step, **{f"train/{k}": v for k, v in means.items()}})

        if state.step % args.eval_steps == 0 or state.step == args.max_train_steps:
            result = validate()
            if accelerator.is_main_process:
                summary = {f"val/{k}": v for k, v in result["summary"].items()}
                accelerator.log(summary, step=state.step)
                state.log_history.append({"step": state.step, **summary})
                score = summary["val/fused/ciou"] + 1e-3 * summary["val/fused/auc"]
                if state.best_metric is None or score > state.best_metric:
                    state.best_metric, state.best_step = score, state.step
                    atomic_save_pretrained(accelerator.unwrap_model(model), processor, output_dir / "best")
                progress.write(f"step {state.step}: validation CIoU/AUC  A {summary['val/a/ciou']:.1f}/"
                               f"{summary['val/a/auc']:.1f}  B {summary['val/b/ciou']:.1f}/{summary['val/b/auc']:.1f}"
                               f"  fused {summary['val/fused/ciou']:.1f}/{summary['val/fused/auc']:.1f}")
            best = [state.best_metric, state.best_step]
            broadcast_object_list(best)
            state.best_metric, state.best_step = best

        if state.step % args.checkpointing_steps == 0 or state.step == args.max_train_steps:
            sync_positions()
            save_checkpoint(accelerator, str(output_dir), state, args.checkpoints_total_limit)
    progress.close()

    # --------------------------------------------------------------- final model, test, card, push
    results = {}
    if accelerator.is_main_process:
        results = finish(args, output_dir, processor, state, weights_report, accelerator.unwrap_model(model).config)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def advance(start: dict, batches: int, per_epoch: int) -> dict:
    """Labeled position after `batches` more batches from `start` ({epoch, batch})."""
    total = start["epoch"] * per_epoch + start["batch"] + batches
    return {"epoch": total // per_epoch, "batch": total % per_epoch}


def finish(args, output_dir: Path, processor, state: TrainerState, weights_report: dict, config) -> dict:
    """Best model -> output_dir (loadable with from_pretrained), test-split evaluation, curves, card, push."""
    from xpl_hf.hub import push_model_folder, write_model_card

    best = output_dir / "best"
    model = XPLModel.from_pretrained(best).eval()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    test = load_labeled(args.dataset, args.test_split)
    result = evaluate_model(model, test, processor=processor, batch_size=args.eval_batch_size, progress=True)
    metrics = result["metrics"]
    results = {"dataset": args.dataset, "split": args.test_split, "method": run_name(args),
               "best_step": state.best_step, **{k: metrics[k] for k in ("a", "b", "fused")}}
    (output_dir / "eval_results.json").write_text(json.dumps({**results, "per_label": result["per_label"],
                                                              "protocol": result["protocol"]}, indent=2, default=str))
    (output_dir / "training_log.json").write_text(json.dumps(state.log_history, indent=1))
    plot_curves(state.log_history, output_dir / "training_curves.png")
    training_args = {k: v for k, v in vars(args).items() if k not in ("hub_token",)}
    write_model_card(output_dir, results=results, config=config, training_args=training_args,
                     pretrained_report=weights_report, model_name=run_name(args),
                     repo_id=args.hub_model_id)
    table = ["", f"Test split '{args.test_split}' of {args.dataset} ({metrics['num_samples']} samples), best "
             f"validation step {state.best_step}:", "| branch | CIoU | AUC |", "| --- | --- | --- |"]
    for key, label in (("a", "A (VGGish)"), ("b", "B (SoundNet-8)"), ("fused", "fused")):
        table.append(f"| {label} | {metrics[key]['ciou']:.2f} | {metrics[key]['auc']:.2f} |")
    table.append(f"\nModel, processor, card and curves: {output_dir}/  (XPLModel.from_pretrained({str(output_dir)!r}))")
    print("\n".join(table))
    if args.push_to_hub:
        push_model_folder(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private)
    return results


def plot_curves(history: list[dict], path: Path) -> None:
    """Training curves: losses, curriculum / pseudo-label diagnostics, validation CIoU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("losses", lambda k: k.startswith("train/loss")),
              ("curriculum (admitted fraction, mean consensus ρ)",
               lambda k: k in ("train/admitted_fraction", "train/consensus_mean")),
              ("pseudo-label CIoU vs true boxes (%, diagnostic)", lambda k: k.startswith("train/pl_ciou_")),
              ("validation CIoU (%)", lambda k: k.startswith("val/") and k.endswith("/ciou"))]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for ax, (title, keep) in zip(axes, panels):
        keys = sorted({k for entry in history for k in entry if keep(k)})
        for key in keys:
            points = [(e["step"], e[key]) for e in history if key in e]
            ax.plot(*zip(*points), label=key.split("/", 1)[1], marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    sys.exit(0)
