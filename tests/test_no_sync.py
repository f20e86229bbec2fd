"""A training step reads no device data on the host outside reporting steps, and a non-finite loss still stops the
run with an honest checkpoint.

What is counted: calls that would make the host wait for the accelerator, made on tensors that would live on the
device. On CPU every tensor is a CPU tensor, so device data is marked: the batch's device inputs, the PL-EMA bank's
storage and the curriculum window are wrapped in :class:`OnDevice`, a ``__torch_function__`` subclass that every
result computed from them inherits (model outputs, losses, pseudo-labels, logs). Counted on those tensors:
``item``, ``tolist``, ``numpy``, ``cpu``, ``__bool__``, ``__int__``, ``__float__``, ``__index__``, ``__repr__``,
``__format__`` (host reads) and ``nonzero``, ``argwhere``, ``unique``, ``masked_select``, ``repeat_interleave``,
``__getitem__``/``__setitem__`` with a boolean mask (results whose size the host must read). Not counted: host-side
batch metadata (``ids``, ``is_labeled`` as the collator makes it and the trainer keeps it), the bank's id index
(host, by design), host-to-device copies of row indices (``non_blocking``; not observable on CPU) and AdamW's own
internals (its parameters are not marked; its step counters are host tensors by design).
"""

import os
import sys

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

import train_xpl
from xpl_hf import XPLConfig, XPLModel, XPLProcessor
from xpl_hf.checkpointing import list_checkpoints
from xpl_hf.data import load_labeled, load_unlabeled_stream
from xpl_hf.data.streams import concat_batches
from xpl_hf.data.transforms import XPLCollator
from xpl_hf.distributed import NonFiniteWatch, StepLogs
from xpl_hf.method import XPLMethod
from xpl_hf.trainer import TrainingStep

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__repr__",
              "__format__"}
DATA_DEPENDENT = {"nonzero", "argwhere", "unique", "_unique2", "unique_consecutive", "masked_select",
                  "repeat_interleave"}
DEVICE_KEYS = ("pixel_values", "pixel_values_b", "audio_log_mel", "audio_waveform", "gt_maps", "true_gt_maps")


def _has_bool_index(args) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _caller() -> str:
    """file:line of the innermost package (or test) frame that made the call (cheap: no source lines read)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "xpl_hf" in name or "train_xpl" in name or "test_no_sync" in name:
            return f"{os.path.basename(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class OnDevice(torch.Tensor):
    """A CPU tensor standing for device data; records host reads and data-dependent shapes made on it."""

    calls: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS or name in DATA_DEPENDENT or (
                name in ("__getitem__", "__setitem__") and _has_bool_index(args)):
            cls.calls.append(f"{name} at {_caller()}")
        return super().__torch_function__(func, types, args, kwargs or {})


def on_device(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_subclass(OnDevice)


@pytest.fixture(scope="module")
def stage2_batch(tiny_benchmark):
    """4 labelled + 4 unlabelled samples collated like a stage-2 batch; device inputs marked."""
    collate = XPLCollator(XPLProcessor(image_size=64, clip_seconds=1.0), train=True)
    labeled = load_labeled(tiny_benchmark, "labeled")
    unlabeled = list(load_unlabeled_stream(tiny_benchmark, "unlabeled", shuffle_buffer=0).take(4))
    batch = concat_batches(collate([labeled[i] for i in range(4)]), collate(unlabeled))
    assert not isinstance(batch["is_labeled"], OnDevice) and "true_gt_maps" in batch
    return {k: on_device(v) if k in DEVICE_KEYS else v for k, v in batch.items()}


def _xpl_parts() -> TrainingStep:
    """The trainer's step (gradient clipping on, as in train_xpl.py) with the bank and the window marked as device
    data."""
    torch.manual_seed(0)
    config = XPLConfig(image_size=64, embed_dim=32, vggish_fc_dim=64, clip_seconds=1.0)
    model = XPLModel(config).train()
    method = XPLMethod(curriculum_rampup_steps=10)
    bank = method.make_bank(config.map_size)
    bank.labels, bank.seen = on_device(bank.labels), on_device(bank.seen)
    selector = method.make_selector()
    selector.scores = on_device(selector.scores)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return TrainingStep(model, optimizer, method, bank=bank, selector=selector, max_grad_norm=1.0)


def _step(parts: TrainingStep, batch, step, logs: StepLogs, watch: NonFiniteWatch, diagnostics=False):
    """One call of the trainer's TrainingStep (forward, eq. 9 with bank and curriculum, backward, clip, AdamW); its
    running logs and non-finite watch are the ones given, so the test can read them when it chooses."""
    parts.running, parts.watch = logs, watch
    output = parts(batch, step, log_diagnostics=diagnostics)
    return output.loss, output.logs


def test_xpl_step_reads_no_device_data_on_the_host(stage2_batch):
    parts = _xpl_parts()
    logs, watch = StepLogs(), NonFiniteWatch()
    _step(parts, stage2_batch, 0, logs, watch)  # first visit: the bank grows, the window fills
    OnDevice.calls.clear()
    for step in (1, 2):  # revisits: PL-EMA lookups and updates, curriculum quantile over a filled window
        loss, step_logs = _step(parts, stage2_batch, step, logs, watch)
    assert OnDevice.calls == []
    assert isinstance(loss, OnDevice) and isinstance(step_logs["curriculum_threshold"], OnDevice)
    assert {"loss_cross_a", "admitted_fraction", "consensus_mean"} <= set(step_logs)
    bank = parts.bank
    assert len(bank) == 4 and isinstance(bank.labels, OnDevice)

    # the counter sees what a reporting step does: reading the logs and the non-finite flag, the diagnostics
    means = logs.pop()
    assert OnDevice.calls and torch.isfinite(torch.tensor(means["loss"]))
    OnDevice.calls.clear()
    assert watch.first_bad() is None and OnDevice.calls
    OnDevice.calls.clear()
    _step(parts, stage2_batch, 3, logs, watch, diagnostics=True)
    assert any(c.startswith("cpu") for c in OnDevice.calls)  # pseudo-label CIoU against the true boxes
    # ... and `is_labeled` sent to the device would cost a read (the trainer keeps it on the host)
    OnDevice.calls.clear()
    _step(parts, {**stage2_batch, "is_labeled": on_device(stage2_batch["is_labeled"])}, 4, logs, watch)
    assert any(c.startswith("nonzero") for c in OnDevice.calls)


def test_counter_catches_the_classic_syncs():
    """The counter is able to fail: a per-step finite check, a boolean-mask selection, a host threshold."""
    maps = on_device(torch.rand(8, 2, 2))
    OnDevice.calls.clear()
    torch.isfinite(maps).all().item()
    int(torch.isfinite(maps).sum())
    maps[torch.isfinite(maps).all(dim=(1, 2))]
    float(torch.quantile(maps.flatten(), 0.5))
    assert [c.split(" at ")[0] for c in OnDevice.calls] == ["item", "__int__", "__getitem__", "__float__"]


def test_non_finite_loss_watch_is_asynchronous_and_exact():
    watch = NonFiniteWatch()
    for step, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0]):
        watch.observe(on_device(torch.tensor(value)), step)
    assert watch.first_bad() == 2
    watch.reset()
    watch.observe(torch.tensor(0.5), 7)
    assert watch.first_bad() is None


def test_step_logs_average_on_the_device():
    logs = StepLogs()
    logs.add({"loss": torch.tensor(1.0), "a": torch.tensor(4.0)})
    logs.add({"loss": torch.tensor(3.0)})
    assert logs.pop() == {"loss": 2.0, "a": 4.0} and logs.pop() == {}


# ------------------------------------------------------------------------- the promise on non-finite losses
TINY = ["--image_size", "64", "--embed_dim", "32", "--vggish_fc_dim", "64", "--clip_seconds", "1.0",
        "--image_backbone_a", "resnet18", "--image_backbone_b", "resnet18", "--pretrained_backbones", "false",
        "--train_batch_size", "4", "--unlabeled_batch_size", "4", "--eval_batch_size", "8", "--report_to", "none",
        "--lr_warmup_steps", "0", "--warmup_stage_steps", "1", "--eval_steps", "100"]


def _run_poisoned(tiny_benchmark, output_dir, monkeypatch, poisoned_step, argv):
    import xpl_hf.trainer

    real_losses = xpl_hf.trainer.compute_losses
    calls = {"n": 0}

    def poisoned(out, *args, **kwargs):  # a training step's maps turn NaN (on cached stems or decoded media alike)
        if calls["n"] == poisoned_step:
            out.maps_a = out.maps_a * float("nan")
        calls["n"] += 1
        return real_losses(out, *args, **kwargs)

    monkeypatch.setattr(xpl_hf.trainer, "compute_losses", poisoned)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with pytest.raises(FloatingPointError) as err:
            train_xpl.main(["--dataset", tiny_benchmark, "--output_dir", str(output_dir), *TINY, *argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return str(err.value)


def test_non_finite_loss_between_reporting_steps_stops_at_the_next_one(tiny_benchmark, tmp_path, monkeypatch):
    """Step 2 diverges (not a reporting step); the run stops at step 3 (logging) naming step 2 and the newest
    checkpoint (step 2, written before the bad update), and writes no checkpoint of the poisoned weights."""
    message = _run_poisoned(tiny_benchmark, tmp_path, monkeypatch, poisoned_step=2,
                            argv=["--max_train_steps", "8", "--logging_steps", "4", "--checkpointing_steps", "2"])
    assert "non-finite loss at step 2 (found at step 3)" in message and "checkpoint-2" in message
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["checkpoint-2"]
    weights = load_file(str(list_checkpoints(str(tmp_path))[0] / "model.safetensors"))
    assert all(torch.isfinite(w.float()).all() for w in weights.values())


def test_non_finite_loss_on_a_reporting_step_saves_the_state_before_it(tiny_benchmark, tmp_path, monkeypatch):
    message = _run_poisoned(tiny_benchmark, tmp_path, monkeypatch, poisoned_step=3,
                            argv=["--max_train_steps", "8", "--logging_steps", "4", "--checkpointing_steps", "100"])
    assert "non-finite loss at step 3 (found at step 3)" in message and "state before this step" in message
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["checkpoint-3"]
