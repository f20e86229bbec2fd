#!/usr/bin/env python
"""Train XPL (cross pseudo-labeling) for semi-supervised audio-visual source localization.

    accelerate launch train_xpl.py                                   # offline demo: synthetic benchmark, CPU
    accelerate launch train_xpl.py --config configs/paper.yaml --dataset ORG/DATA
    accelerate launch train_xpl.py --resume_from_checkpoint latest   # continue a killed run exactly

A recipe over Accelerate: arguments -> data -> models -> optimiser -> two-stage loop (stage 1: labelled only;
stage 2: labelled + streamed unlabelled with pseudo-labels) -> validation -> checkpoints -> test, card, Hub.
The method's pieces live in `xpl_hf` (docs/method.md): `xpl_hf.method` (settings and one step's losses),
`xpl_hf.pseudo_labels`, `xpl_hf.curriculum`, `xpl_hf.losses`; data order in `xpl_hf.data.streams`; checkpoints in
`xpl_hf.checkpointing`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
from transformers import get_scheduler

from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.checkpointing import (
    TrainerState,
    atomic_save_pretrained,
    check_fingerprint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from xpl_hf.data import load_labeled, load_unlabeled_stream
from xpl_hf.data.streams import (
    DropLabels,
    LabeledBatches,
    SeededCollate,
    UnlabeledStream,
    advance,
    concat_batches,
    sample_seed,
)
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.distributed import NonFiniteWatch, StepLogs
from xpl_hf.evaluation import evaluate_model
from xpl_hf.method import compute_losses, term_grad_shares
from xpl_hf.paths import is_local
from xpl_hf.pretrained import load_pretrained_backbones
from xpl_hf.training_args import DEFAULT_DATASET, parse_args
from xpl_hf.visualization import plot_training_curves

logger = get_logger(__name__)
FROZEN_SUFFIXES = {"none": (), "image": ("image_encoder",), "all": ("image_encoder", "audio_encoder")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    method = args.to_method()
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
    verbosity = "warning" if accelerator.is_local_main_process else "error"
    datasets.utils.logging.set_verbosity(getattr(logging, verbosity.upper()))
    transformers.utils.logging.set_verbosity(getattr(logging, verbosity.upper()))
    set_seed(args.seed)  # identical initial weights on every process
    if method.uses_unlabeled and args.warmup_stage_steps >= args.max_train_steps:
        logger.warning(f"--warmup_stage_steps {args.warmup_stage_steps} >= --max_train_steps {args.max_train_steps}: "
                       "the run never reaches stage 2 and uses no unlabelled data.")

    # ---------------------------------------------------------------------------------------- data
    if args.dataset == DEFAULT_DATASET:  # generated once, then reused (its manifest records the parameters)
        if accelerator.is_main_process:
            from xpl_hf.data.synthetic import SIZES, generate_benchmark

            logger.info(f"Offline synthetic benchmark ({args.synthetic_size}) in {args.dataset}")
            generate_benchmark(args.dataset, seed=0, progress=accelerator.is_local_main_process,
                               **SIZES[args.synthetic_size])
        accelerator.wait_for_everyone()
    elif is_local(args.dataset) and not Path(args.dataset).is_dir():
        raise FileNotFoundError(f"--dataset {args.dataset!r} is neither a local folder nor a Hub dataset id.")
    config = (XPLConfig.from_pretrained(args.model_name_or_path) if args.model_name_or_path
              else XPLConfig(**args.model_config_kwargs()))
    processor = XPLProcessor.from_config(config)
    labeled = load_labeled(args.dataset, args.labeled_split, require_boxes=method.supervised)
    validation = load_labeled(args.dataset, args.validation_split)
    train_collate = XPLCollator(processor, train=True, on_bad_sample=args.on_bad_sample)
    labeled_batches = LabeledBatches(len(labeled), args.train_batch_size, args.seed,
                                     accelerator.process_index, accelerator.num_processes)

    pin_memory = accelerator.device.type == "cuda"
    torch.backends.cudnn.benchmark = pin_memory  # fixed input sizes: let cuDNN pick its fastest kernels

    def make_labeled_loader():
        return DataLoader(labeled, batch_sampler=labeled_batches, num_workers=args.dataloader_num_workers,
                          collate_fn=SeededCollate(train_collate, sample_seed(args.seed, "labeled")),
                          pin_memory=pin_memory, persistent_workers=args.dataloader_num_workers > 0)

    drop_labels = DropLabels(logger)  # the unlabelled split is unlabelled, whatever boxes it carries
    unlabeled_stream = UnlabeledStream(
        make_stream=lambda epoch: load_unlabeled_stream(
            args.dataset, args.unlabeled_split, rank=accelerator.process_index, world_size=accelerator.num_processes,
            seed=args.seed, shuffle_buffer=args.shuffle_buffer, epoch=epoch).map(drop_labels),
        make_loader=lambda stream: DataLoader(
            stream, batch_size=args.unlabeled_batch_size, num_workers=args.dataloader_num_workers,
            collate_fn=SeededCollate(train_collate, sample_seed(args.seed, "unlabeled")), pin_memory=pin_memory),
    ) if method.uses_unlabeled else None

    # -------------------------------------------------------------------------------------- models
    if args.model_name_or_path:
        model = XPLModel.from_pretrained(args.model_name_or_path)
        weights_report = {"all": f"from {args.model_name_or_path}"}
    else:
        model = XPLModel(config)
        weights_report = load_pretrained_backbones(model) if args.pretrained_backbones else {}
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen = [m for name, m in model.named_modules() if name.endswith(FROZEN_SUFFIXES[args.freeze_backbones])]
    for module in frozen:  # a fast proxy: frozen pretrained trunks, trainable projections and map heads
        module.requires_grad_(False)
    logger.info(f"Backbones: {json.dumps(weights_report, indent=1)}", main_process_only=True)

    # ------------------------------------------------------------------------------------ optimiser
    pretrained_parts = {k for k, v in weights_report.items() if not v.startswith("random")}

    def is_pretrained_backbone(name: str) -> bool:  # trains at --backbone_learning_rate_scale
        part = ".".join(name.split(".")[:2])  # e.g. "branch_a.image_encoder"
        return (args.model_name_or_path is not None and part.endswith("_encoder")) or part in pretrained_parts

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
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
    bank, selector = method.make_bank(config.map_size).to(accelerator.device), method.make_selector()
    state = TrainerState(fingerprint=args.fingerprint())
    checkpointed = dict(model=model, optimizer=optimizer, scheduler=scheduler, bank=bank, selector=selector,
                        state=state)
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        check_fingerprint(saved.get("fingerprint", {}), state.fingerprint, checkpoint)
        load_checkpoint(accelerator, checkpoint, **checkpointed)
        logger.info(f"Resumed from {checkpoint} at step {state.step}", main_process_only=True)
    # Stream positions are per process (each reads its own shard); the checkpoint holds all of them.
    rank = accelerator.process_index
    labeled_batches.load_state_dict(state.labeled[rank] if isinstance(state.labeled, list) else state.labeled)
    if unlabeled_stream is not None:
        unlabeled_stream.load_state_dict(state.unlabeled[rank] if isinstance(state.unlabeled, list)
                                         else state.unlabeled)

    if accelerator.is_main_process:  # never the token, never local paths
        tracked = {**args.public_dict(), **{f"method/{k}": v for k, v in method.to_dict().items()}}
        accelerator.init_trackers(method.name, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                       for k, v in tracked.items()})

    # -------------------------------------------------------------------------------------- the loop
    labeled_iter = iter(make_labeled_loader())
    labeled_start, labeled_used = labeled_batches.state_dict(), 0
    unlabeled_iter = iter(unlabeled_stream) if unlabeled_stream is not None else None
    progress = tqdm(total=args.max_train_steps, initial=state.step, desc=method.name,
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    step_logs, loss_watch = StepLogs(), NonFiniteWatch()  # on the device, read on reporting steps only

    def sync_positions():  # consumed positions (not the loaders' prefetch positions), gathered from all processes
        state.labeled = gather_object([advance(labeled_start, labeled_used, labeled_batches.batches_per_epoch)])
        if unlabeled_stream is not None:
            state.unlabeled = gather_object([unlabeled_stream.state_dict()])

    def checkpoint_now():
        sync_positions()
        return save_checkpoint(accelerator, output_dir, total_limit=args.checkpoints_total_limit, **checkpointed)

    def validate():
        result = None
        if accelerator.is_main_process:
            result = evaluate_model(accelerator.unwrap_model(model), validation, processor=processor,
                                    batch_size=args.eval_batch_size, max_samples=args.eval_max_samples,
                                    per_label=False)
        accelerator.wait_for_everyone()
        return result

    model.train()
    while state.step < args.max_train_steps:
        for module in frozen:  # eval-mode BatchNorm (validation puts the model back in train mode)
            module.eval()
        in_stage2 = state.step >= args.warmup_stage_steps and unlabeled_iter is not None
        batch = next(labeled_iter)
        labeled_used += 1
        if batch is None:  # every sample of the batch was bad (each reported by name)
            continue
        if in_stage2:
            extra = next(unlabeled_iter)
            if method.oracle_labels:  # the full-supervision ceiling: the unlabelled rows' true boxes become labels
                if "true_gt_maps" not in extra:
                    raise ValueError("--method full_supervision needs an unlabelled split whose rows carry boxes "
                                     "(true_boxes, as the synthetic benchmark keeps them).")
                extra = {**extra, "gt_maps": extra["true_gt_maps"], "is_labeled": torch.ones_like(extra["is_labeled"])}
            batch = concat_batches(batch, extra)
        # is_labeled stays on the host: compute_losses derives counts and row indices from it without a sync
        batch = send_to_device(batch, accelerator.device, non_blocking=True, skip_keys="is_labeled")
        # Device values are read on the host only at reporting steps (logging, evaluation, checkpointing).
        upcoming = state.step + 1
        logging_step = upcoming % args.logging_steps == 0 or upcoming == args.max_train_steps
        reporting_step = (logging_step or upcoming % args.eval_steps == 0
                          or upcoming % args.checkpointing_steps == 0)
        with accelerator.accumulate(model):
            out = model(**batch)
            measure = args.grad_share_steps and state.step % args.grad_share_steps == 0  # diagnostics, no sync
            terms: dict | None = {} if measure else None
            loss, logs = compute_losses(out, batch, method, bank=bank, selector=selector,
                                        pl_step=state.step - args.warmup_stage_steps, accelerator=accelerator,
                                        terms_out=terms, diagnostics=logging_step)
            if measure:
                logs.update(term_grad_shares(terms, [p for p in model.parameters() if p.requires_grad]))
            loss_watch.observe(loss, state.step)  # no sync; checked (before this step's update) on reporting steps
            if reporting_step and accelerator.sync_gradients and (bad := loss_watch.first_bad(accelerator)) is not None:
                if bad == state.step:  # this step's own loss: the weights are still those before the step
                    where = f"the state before this step is saved in {checkpoint_now()}"
                else:  # an earlier step updated the weights with it; checkpoints are written only after a check
                    newest = list_checkpoints(str(output_dir))
                    where = (f"the newest checkpoint, {newest[-1]}, predates it" if newest else "no checkpoint "
                             "predates it") + " (no checkpoint is written after a non-finite step)"
                raise FloatingPointError(f"non-finite loss at step {bad} (found at step {state.step}); {where}. Lower "
                                         "--learning_rate or use --mixed_precision no.")
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
        step_logs.add({"loss": loss, **logs})

        if state.step % args.logging_steps == 0 or state.step == args.max_train_steps:
            means = step_logs.pop()  # one device-to-host copy for all logged values
            means.update(lr=scheduler.get_last_lr()[0], stage=2 if in_stage2 else 1)
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
                eligible = not (args.best_model_from_stage2 and method.uses_unlabeled
                                and args.warmup_stage_steps < args.max_train_steps
                                and state.step <= args.warmup_stage_steps)
                if eligible and (state.best_metric is None or score > state.best_metric):
                    state.best_metric, state.best_step = score, state.step
                    atomic_save_pretrained(accelerator.unwrap_model(model), processor, output_dir / "best")
                progress.write(f"step {state.step}: validation CIoU/AUC  A {summary['val/a/ciou']:.1f}/"
                               f"{summary['val/a/auc']:.1f}  B {summary['val/b/ciou']:.1f}/{summary['val/b/auc']:.1f}"
                               f"  fused {summary['val/fused/ciou']:.1f}/{summary['val/fused/auc']:.1f}")
            best = [state.best_metric, state.best_step]
            broadcast_object_list(best)
            state.best_metric, state.best_step = best

        if state.step % args.checkpointing_steps == 0 or state.step == args.max_train_steps:
            checkpoint_now()
    progress.close()

    # --------------------------------------------------------------- final model, test, card, push
    results = {}
    if accelerator.is_main_process:
        results = finish(args, method, output_dir, processor, state, weights_report)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def finish(args, method, output_dir: Path, processor, state: TrainerState, weights_report: dict) -> dict:
    """Best model -> output_dir (loadable with from_pretrained; stored once), test split, curves, card, push."""
    from xpl_hf.hub import push_model_folder, write_model_card

    best = output_dir / "best"
    if best.is_dir():  # absent when a finished run is resumed: its best model is already at the root
        for item in best.iterdir():  # move, not copy: the weights are stored once
            target = output_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        best.rmdir()
    model = XPLModel.from_pretrained(output_dir).eval()
    test = load_labeled(args.dataset, args.test_split)
    result = evaluate_model(model, test, processor=processor, batch_size=args.eval_batch_size, progress=True)
    metrics = result["metrics"]
    public = args.public_dict()
    results = {"dataset": public["dataset"], "split": args.test_split, "method": method.name,
               "best_step": state.best_step, **{k: metrics[k] for k in ("a", "b", "fused")}}
    (output_dir / "eval_results.json").write_text(json.dumps(
        {**results, "method_settings": method.to_dict(), "per_label": result["per_label"],
         "protocol": result["protocol"]}, indent=2, default=str))
    (output_dir / "training_log.json").write_text(json.dumps(state.log_history, indent=1))
    plot_training_curves(state.log_history, output_dir / "training_curves.png")
    write_model_card(output_dir, results=results, config=model.config, training_args=public,
                     method_settings=method.to_dict(), best_step=state.best_step,
                     pretrained_report=weights_report, model_name=method.name, repo_id=args.hub_model_id)
    table = ["", f"Test split '{args.test_split}' of {public['dataset']} ({metrics['num_samples']} samples), best "
             f"validation step {state.best_step}:", "| branch | CIoU | AUC |", "| --- | --- | --- |"]
    for key, label in (("a", "A (VGGish)"), ("b", "B (SoundNet-8)"), ("fused", "fused")):
        table.append(f"| {label} | {metrics[key]['ciou']:.2f} | {metrics[key]['auc']:.2f} |")
    table.append(f"\nModel, processor, card and curves: {output_dir}/  (XPLModel.from_pretrained({str(output_dir)!r}))")
    print("\n".join(table))
    if args.push_to_hub:
        push_model_folder(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private)
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except (ValueError, FileNotFoundError) as err:  # bad options, data or checkpoints: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
