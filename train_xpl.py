#!/usr/bin/env python
"""Train XPL (cross pseudo-labeling) for semi-supervised audio-visual source localization.

    python train_xpl.py --config configs/smoke.yaml                    # smoke run: one process, 6 steps, 62 MB
    accelerate launch -q train_xpl.py                                  # offline demo: synthetic benchmark, CPU
    accelerate launch -q train_xpl.py --config configs/paper.yaml --dataset ORG/DATA
    accelerate launch -q train_xpl.py --resume_from_checkpoint latest  # continue a killed run exactly

A recipe over Accelerate: arguments -> data -> models -> optimiser -> the loop (one `xpl_hf.trainer.TrainingStep`
per step: stage 1 labelled only, stage 2 labelled + streamed unlabelled with pseudo-labels) -> validation and model
selection -> checkpoints -> test, card, Hub. The method's pieces live in `xpl_hf` (docs/method.md).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from xpl_hf.training_args import DEFAULT_DATASET, XPLTrainingArguments, parse_args  # no torch: --help is fast

logger = logging.getLogger("train_xpl")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from xpl_hf.run_folder import RunLock

    # one run per output folder; the launcher's global rank 0 holds the lock (RANK is set by torchrun/accelerate)
    with RunLock(args.output_dir, enabled=os.environ.get("RANK", "0") == "0"):
        return train(args)


def train(args: XPLTrainingArguments) -> dict:
    import datasets
    import torch
    import transformers
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, broadcast_object_list, gather_object, set_seed
    from datasets.fingerprint import Hasher
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from xpl_hf import XPLConfig, XPLModel, XPLProcessor
    from xpl_hf.checkpointing import (
        TrainerState,
        check_fingerprint,
        list_checkpoints,
        load_checkpoint,
        resolve_checkpoint,
        save_checkpoint,
    )
    from xpl_hf.data import load_labeled, load_unlabeled_stream
    from xpl_hf.data.checks import warn_on_split_overlap
    from xpl_hf.data.source import DatasetSource
    from xpl_hf.data.streams import DropLabels, LabeledBatches, SeededCollate, UnlabeledStream, advance, sample_seed
    from xpl_hf.data.transforms import XPLCollator
    from xpl_hf.evaluation import evaluate_model
    from xpl_hf.model_selection import BestModelTracker, validation_line
    from xpl_hf.modeling_xpl import TopStages, XPLFromTrunkFeatures
    from xpl_hf.optimization import freeze_backbones, parameter_groups
    from xpl_hf.pretrained import load_pretrained_backbones
    from xpl_hf.run_folder import atomic_save_pretrained, recover_saved_model
    from xpl_hf.trainer import NonFiniteLossError, TrainingStep
    from xpl_hf.trunk_features import FeatureBatches, compute_trunk_features, evaluate_features

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
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    verbosity = logging.WARNING if accelerator.is_local_main_process else logging.ERROR
    datasets.utils.logging.set_verbosity(verbosity)
    transformers.utils.logging.set_verbosity(verbosity)
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's shard bar would cut through ours
    set_seed(args.seed)  # identical initial weights on every process
    if method.uses_unlabeled and args.warmup_stage_steps >= args.max_train_steps:
        logger.warning(f"--warmup_stage_steps {args.warmup_stage_steps} >= --max_train_steps {args.max_train_steps}: "
                       "the run never reaches stage 2 and uses no unlabelled data.")
    if accelerator.is_main_process:
        recover_saved_model(output_dir / "best")  # a kill during the last best-model swap

    # ---------------------------------------------------------------------------------------- data
    config = (XPLConfig.from_pretrained(args.model_name_or_path) if args.model_name_or_path
              else XPLConfig(**args.model_config_kwargs()))
    processor = XPLProcessor.from_config(config)
    train_collate = XPLCollator(processor, train=True, on_bad_sample=args.on_bad_sample)  # checks its option
    if args.dataset == DEFAULT_DATASET:  # generated once, then reused (its manifest records the parameters)
        if accelerator.is_main_process:
            from xpl_hf.data.synthetic import SIZES, generate_benchmark

            logger.info(f"Offline synthetic benchmark ({args.synthetic_size}) in {args.dataset}")
            generate_benchmark(args.dataset, seed=0, progress=accelerator.is_local_main_process,
                               **SIZES[args.synthetic_size])
        accelerator.wait_for_everyone()
    source = DatasetSource.resolve(args.dataset)  # local folder or Hub id, decided once
    labeled = load_labeled(source.name, args.labeled_split, require_boxes=method.supervised)
    validation = load_labeled(source.name, args.validation_split)
    test = load_labeled(source.name, args.test_split)
    warn_on_split_overlap({"labeled": (args.labeled_split, labeled), "validation": (args.validation_split, validation),
                           "test": (args.test_split, test)},
                          args.unlabeled_split if method.uses_unlabeled else None, logger)

    # -------------------------------------------------------------------------------------- models
    if args.model_name_or_path:
        model = XPLModel.from_pretrained(args.model_name_or_path)
        weights_report = {"all": f"from {args.model_name_or_path}"}
    else:
        model = XPLModel(config)
        with accelerator.main_process_first():  # one download per machine; the others read the cached file
            weights_report = load_pretrained_backbones(model, allow_random=args.random_backbones_allowed()) \
                if args.pretrained_backbones else {}
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    top = TopStages(image=args.image_top_stages, audio_a=args.audio_a_top_stages, audio_b=args.audio_b_top_stages)
    frozen = freeze_backbones(model, args.freeze_backbones, top)  # eval-mode BatchNorm; their top stages train
    logger.info(f"Backbones: {json.dumps(weights_report, indent=1)}")

    # ---------------------------------------------------------------------------- training batches
    # Frozen trunks (the default): each clip's stems computed once per view and cached; else decoded every step.
    cached = args.freeze_backbones == "all" and args.cache_trunk_features
    rank, world = accelerator.process_index, accelerator.num_processes
    labeled_batches = LabeledBatches(len(labeled), args.train_batch_size, args.seed, rank, world)
    if cached:
        def features(split, role: str, views: int = 0):
            with accelerator.main_process_first():  # computed once (main process), read by the others
                return compute_trunk_features(model, processor, split, top=top, role=role, views=views,
                                              seed=args.seed, cache_dir=args.feature_cache_dir,
                                              on_bad_sample=args.on_bad_sample)

        labeled_features = FeatureBatches(features(labeled, "labeled", args.feature_views), args.seed)
        labeled_iter = (labeled_features(rows, key=("labeled", labeled_batches.epoch, labeled_batches.batch))
                        for rows in labeled_batches)
        validation_features = features(validation if args.eval_max_samples is None else
                                       validation.select(range(min(args.eval_max_samples, len(validation)))),
                                       "evaluation")
        unlabeled_stream = None
        if method.uses_unlabeled:
            unlabeled = load_labeled(source.name, args.unlabeled_split, require_boxes=False)
            unlabeled = unlabeled.map(DropLabels(logger), desc="unlabelled rows without labels",  # as the stream does
                                      new_fingerprint=Hasher.hash([unlabeled._fingerprint, "drop-labels"]))
            unlabeled_features = FeatureBatches(features(unlabeled, "unlabeled", args.feature_views), args.seed)
            unlabeled_stream = LabeledBatches(len(unlabeled_features.features), args.unlabeled_batch_size,
                                              sample_seed(args.seed, "unlabeled"), rank, world)
            unlabeled_iter = (unlabeled_features(rows, key=("unlabeled", unlabeled_stream.epoch,
                                                            unlabeled_stream.batch)) for rows in unlabeled_stream)
        train_model = XPLFromTrunkFeatures(model, top)
    else:
        pin_memory = accelerator.device.type == "cuda"
        torch.backends.cudnn.benchmark = pin_memory  # fixed input sizes: let cuDNN pick its fastest kernels
        train_collate = XPLCollator(processor, train=True, on_bad_sample=args.on_bad_sample)
        labeled_loader = DataLoader(labeled, batch_sampler=labeled_batches, num_workers=args.dataloader_num_workers,
                                    collate_fn=SeededCollate(train_collate, sample_seed(args.seed, "labeled")),
                                    pin_memory=pin_memory, persistent_workers=args.dataloader_num_workers > 0)
        labeled_iter = iter(labeled_loader)
        drop_labels = DropLabels(logger)  # the unlabelled split is unlabelled, whatever boxes it carries
        unlabeled_stream = UnlabeledStream(
            make_stream=lambda epoch: load_unlabeled_stream(
                source.name, args.unlabeled_split, rank=rank, world_size=world, seed=args.seed,
                shuffle_buffer=args.shuffle_buffer, epoch=epoch).map(drop_labels),
            make_loader=lambda stream: DataLoader(
                stream, batch_size=args.unlabeled_batch_size, num_workers=args.dataloader_num_workers,
                collate_fn=SeededCollate(train_collate, sample_seed(args.seed, "unlabeled")), pin_memory=pin_memory),
        ) if method.uses_unlabeled else None
        unlabeled_iter = iter(unlabeled_stream) if unlabeled_stream is not None else None
        train_model = model

    # ------------------------------------------------------------------------------------ optimiser
    groups = parameter_groups(model, args.learning_rate, args.backbone_learning_rate_scale, weights_report)
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    scheduler = transformers.get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                           num_training_steps=args.max_train_steps)
    train_model, optimizer, scheduler = accelerator.prepare(train_model, optimizer, scheduler)

    def trained_model() -> XPLModel:  # the XPLModel inside what the accelerator wraps
        unwrapped = accelerator.unwrap_model(train_model)
        return unwrapped.model if cached else unwrapped

    # XPL's own state: the PL-EMA bank (eq. 5), the curriculum window (eq. 1-3), counters. All checkpointed.
    bank, selector = method.make_bank(config.map_size).to(accelerator.device), method.make_selector()
    state = TrainerState(fingerprint={**args.fingerprint(), **source.fingerprint()})
    checkpointed = dict(model=train_model, optimizer=optimizer, scheduler=scheduler, bank=bank, selector=selector,
                        state=state)
    weight_shapes = {k: tuple(v.shape) for k, v in accelerator.unwrap_model(train_model).state_dict().items()}
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint, weight_shapes)
    if checkpoint is not None:
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        check_fingerprint(saved.get("fingerprint", {}), state.fingerprint, checkpoint)
        load_checkpoint(accelerator, checkpoint, **checkpointed)
        logger.info(f"Resumed from {checkpoint} at step {state.step}")
        # Stream positions are per process (each reads its own shard); the checkpoint holds all of them.
        labeled_batches.load_state_dict(state.labeled[rank] if isinstance(state.labeled, list) else state.labeled)
        if unlabeled_stream is not None:
            unlabeled_stream.load_state_dict(state.unlabeled[rank] if isinstance(state.unlabeled, list)
                                             else state.unlabeled)
    if accelerator.is_main_process:  # never the token, never local paths
        tracked = {**args.public_dict(), **{f"method/{k}": v for k, v in method.to_dict().items()}}
        accelerator.init_trackers(method.name, config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                       for k, v in tracked.items()})

    # -------------------------------------------------------------------------------------- the loop
    train_step = TrainingStep(train_model, optimizer, method, bank=bank, selector=selector, scheduler=scheduler,
                              warmup_stage_steps=args.warmup_stage_steps, accelerator=accelerator,
                              max_grad_norm=args.max_grad_norm, grad_share_steps=args.grad_share_steps, frozen=frozen)
    tracker = BestModelTracker(args.model_selection, stage2_start=args.warmup_stage_steps)
    labeled_start, labeled_used = labeled_batches.state_dict(), 0

    def checkpoint_now() -> Path:  # consumed positions (not the loaders' prefetch positions), from all processes
        state.labeled = gather_object([advance(labeled_start, labeled_used, labeled_batches.batches_per_epoch)])
        if unlabeled_stream is not None:
            state.unlabeled = gather_object([unlabeled_stream.state_dict()])
        return save_checkpoint(accelerator, output_dir, total_limit=args.checkpoints_total_limit,
                               save_optimizer=args.save_optimizer_state, **checkpointed)

    progress = tqdm(total=args.max_train_steps, initial=state.step, desc=method.name,
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0  # host clock: step and data-wait times
    with logging_redirect_tqdm():  # log lines and validation lines print above the progress bar
        while state.step < args.max_train_steps:
            waited = time.perf_counter()
            labeled_batch = next(labeled_iter)
            labeled_used += 1
            if labeled_batch is None:  # every sample of the batch was bad (each reported by name)
                continue
            unlabeled_batch = next(unlabeled_iter) if train_step.in_stage2(state.step) else None
            data_wait += time.perf_counter() - waited
            upcoming = state.step + 1
            logging_step = upcoming % args.logging_steps == 0 or upcoming == args.max_train_steps
            reporting_step = logging_step or upcoming % args.eval_steps == 0 or upcoming % args.checkpointing_steps == 0
            try:
                output = train_step(train_step.assemble(labeled_batch, unlabeled_batch), state.step,
                                    log_diagnostics=logging_step, check_finite=reporting_step)
            except NonFiniteLossError as err:  # the weights are still those before the bad update
                newest = list_checkpoints(output_dir)
                raise err.explain(checkpoint_now, newest[-1] if newest else None) from None
            if not output.optimizer_stepped:  # accumulating gradients
                continue
            state.step += 1
            window_steps += 1
            progress.update(1)

            if logging_step:
                means = train_step.running.pop()  # one device-to-host copy for all logged values
                elapsed, window_start = time.perf_counter() - window_start, time.perf_counter()
                means.update(lr=scheduler.get_last_lr()[0], stage=2 if train_step.in_stage2(state.step - 1) else 1,
                             step_seconds=elapsed / window_steps, data_wait_seconds=data_wait / window_steps)
                window_steps, data_wait = 0, 0.0
                progress.set_postfix(loss=f"{means['loss']:.3f}", stage=means["stage"])
                accelerator.log({f"train/{k}": v for k, v in means.items()}, step=state.step)
                state.log_history.append({"step": state.step, **{f"train/{k}": v for k, v in means.items()}})

            side_work = time.perf_counter()  # validation and checkpoints below do not count as step time
            if state.step % args.eval_steps == 0 or state.step == args.max_train_steps:
                if accelerator.is_main_process:
                    if cached:  # the cached clean stems of the validation clips
                        summary = evaluate_features(accelerator.unwrap_model(train_model), validation_features,
                                                    batch_size=args.eval_batch_size)
                    else:
                        summary = evaluate_model(trained_model(), validation, processor=processor,
                                                 batch_size=args.eval_batch_size, max_samples=args.eval_max_samples,
                                                 per_label=False)["summary"]
                    accelerator.log({f"val/{k}": v for k, v in summary.items()}, step=state.step)
                    state.log_history.append({"step": state.step, **{f"val/{k}": v for k, v in summary.items()}})
                    if tracker.consider(state, state.step, summary):
                        atomic_save_pretrained(trained_model(), processor, output_dir / "best")
                    progress.write(validation_line(state.step, summary))
                best = [state.best_metric, state.best_step]
                broadcast_object_list(best)
                state.best_metric, state.best_step = best

            if state.step % args.checkpointing_steps == 0 or (state.step == args.max_train_steps
                                                             and args.save_final_checkpoint):
                checkpoint_now()
            window_start += time.perf_counter() - side_work
    progress.close()

    # --------------------------------------------------------------- final model, test, card, push
    results = finish(args, method, output_dir, processor, state, weights_report, test=test,
                     dataset_name=source.public_name) if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def finish(args: XPLTrainingArguments, method, output_dir: Path, processor, state, weights_report: dict, *, test,
           dataset_name: str) -> dict:
    """The kept model -> output_dir (loadable with from_pretrained; stored once), the ``test`` split, curves, card,
    push. ``dataset_name``: the dataset as results and the card may show it."""
    from xpl_hf import XPLModel
    from xpl_hf.evaluation import evaluate_model, format_listening_table, save_per_scene_scores
    from xpl_hf.hub import push_model_folder, write_model_card
    from xpl_hf.run_folder import promote_best_model
    from xpl_hf.visualization import plot_training_curves

    promote_best_model(output_dir)  # best/ -> output_dir
    model = XPLModel.from_pretrained(output_dir).eval()
    # the listening checks (swapped sound, silence, noise; object selection where rows list their objects)
    result = evaluate_model(model, test, processor=processor, batch_size=args.eval_batch_size, progress=True,
                            listening=True)
    metrics = result["metrics"]
    public = args.public_dict()
    results = {"dataset": dataset_name, "split": args.test_split, "method": method.name,
               "best_step": state.best_step, "model_selection": args.model_selection,
               **{k: metrics[k] for k in ("a", "b", "fused")},
               "listening": {k: v for k, v in result["listening"].items() if k != "per_scene"}}
    save_per_scene_scores(result, output_dir / "per_scene_test.csv")
    (output_dir / "eval_results.json").write_text(json.dumps(
        {**results, "method_settings": method.to_dict(), "per_label": result["per_label"],
         "protocol": result["protocol"]}, indent=2, default=str))
    (output_dir / "training_log.json").write_text(json.dumps(state.log_history, indent=1))
    plot_training_curves(state.log_history, output_dir / "training_curves.png")
    write_model_card(output_dir, results=results, config=model.config, training_args=public,
                     method_settings=method.to_dict(), best_step=state.best_step,
                     pretrained_report=weights_report, model_name=method.name, repo_id=args.hub_model_id)
    table = ["", f"Test split '{args.test_split}' of {dataset_name} ({metrics['num_samples']} samples), model "
             f"of step {state.best_step} (--model_selection {args.model_selection}):", "| branch | CIoU | AUC |",
             "| --- | --- | --- |"]
    for key in ("a", "b", "fused"):
        table.append(f"| {model.config.branch_label(key)} | {metrics[key]['ciou']:.2f} | {metrics[key]['auc']:.2f} |")
    table += ["", format_listening_table(result, {key: model.config.branch_label(key) for key in ("a", "b", "fused")})]
    table.append(f"\nModel, processor, card and curves: {output_dir}/  (XPLModel.from_pretrained({str(output_dir)!r}))")
    print("\n".join(table))
    if args.push_to_hub:
        push_model_folder(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private)
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except (ValueError, FileNotFoundError, FloatingPointError) as err:  # options, data, checkpoints, a busy folder,
        # a diverged run: one line, no traceback (`accelerate launch -q` also leaves out the launcher's own)
        sys.exit(f"error: {err}")
