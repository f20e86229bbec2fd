"""Checkpoints (xpl_hf.checkpointing): atomic, validated, no pickled code, corrupt ones skipped by 'latest'."""

import json
import pickle

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from xpl_hf.checkpointing import (
    COMPLETE_MARKER,
    CheckpointError,
    TrainerState,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    validate_checkpoint,
)
from xpl_hf.method import XPLMethod


class _Boom:
    """A pickle that writes a file when unpickled: proof of code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture()
def parts():
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    method = XPLMethod(curriculum_window=8)
    bank, selector = method.make_bank(2), method.make_selector()
    bank.update(["u1", "u2"], {"a": torch.rand(2, 2, 2), "b": torch.rand(2, 2, 2)})
    selector.push(torch.tensor([0.1, 0.5]))
    yield accelerator, dict(model=model, optimizer=optimizer, scheduler=scheduler, bank=bank, selector=selector)
    AcceleratorState._reset_state(reset_partial_state=True)


def _save(accelerator, parts, output_dir, step):
    state = TrainerState(step=step, fingerprint={"method": "xpl"})
    return save_checkpoint(accelerator, output_dir, state=state, total_limit=None, **parts)


def test_round_trip_restores_everything(parts, tmp_path):
    accelerator, objects = parts
    path = _save(accelerator, objects, tmp_path, 3)
    assert validate_checkpoint(path)["step"] == 3
    method = XPLMethod(curriculum_window=8)
    fresh = dict(objects, bank=method.make_bank(2), selector=method.make_selector())
    state = TrainerState()
    load_checkpoint(accelerator, path, state=state, **fresh)
    assert state.step == 3 and len(fresh["bank"]) == 2
    assert torch.equal(fresh["selector"].scores, objects["selector"].scores)
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.bin"))


def test_partial_checkpoints_are_never_latest(parts, tmp_path):
    accelerator, objects = parts
    _save(accelerator, objects, tmp_path, 5)
    root = tmp_path / "checkpoints"
    (root / "checkpoint-9").mkdir()  # killed before its marker was written
    (root / ".tmp-checkpoint-12").mkdir()  # killed while writing
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-5"
    assert resolve_checkpoint(tmp_path / "fresh", "latest") is None
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_checkpoint(tmp_path, str(root / "checkpoint-9"))


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_optimizer", "bad_state_json", "missing_optimizer"])
def test_corrupt_latest_falls_back_to_the_newest_valid(parts, tmp_path, caplog, damage):
    accelerator, objects = parts
    _save(accelerator, objects, tmp_path, 2)
    newest = _save(accelerator, objects, tmp_path, 4)
    if damage == "truncated_weights":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_optimizer":
        (newest / "optimizer.pt").write_bytes(b"\x00garbage")
    elif damage == "bad_state_json":
        (newest / COMPLETE_MARKER).write_text("{not json")
    else:
        (newest / "optimizer.pt").unlink()
    with caplog.at_level("WARNING"):
        assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-2"
    assert "skipping checkpoint-4" in caplog.text
    with pytest.raises(CheckpointError, match="checkpoint-4"):
        resolve_checkpoint(tmp_path, str(newest))


def test_hostile_pickles_execute_nothing(parts, tmp_path):
    accelerator, objects = parts
    path = _save(accelerator, objects, tmp_path, 2)
    marker = tmp_path / "pwned"
    for name in ("optimizer.pt", "scheduler.pt", "random_states_0.pkl", "custom_checkpoint_0.pkl", "scaler.pt"):
        with open(path / name, "wb") as f:
            pickle.dump(_Boom(str(marker)), f)
    with pytest.raises(CheckpointError, match="not a plain tensor file"):
        validate_checkpoint(path)
    assert resolve_checkpoint(tmp_path, "latest") is None
    assert not marker.exists()


def test_a_saved_model_is_not_a_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xpl"}))
    with pytest.raises(CheckpointError, match="saved model, not a training checkpoint"):
        validate_checkpoint(tmp_path)
