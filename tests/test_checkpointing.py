"""Checkpoints (xpl_hf.checkpointing): atomic, validated, no pickled code, corrupt ones skipped by 'latest', a full disk
or a file-size limit is one clear error, data changes refuse a resume. The run folder (xpl_hf.run_folder): a killed
best-model swap is recovered, the kept model moves to the root, one run per folder."""

import errno
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file

from xpl_hf import checkpointing, run_folder
from xpl_hf.checkpointing import (
    COMPLETE_MARKER,
    CheckpointError,
    TrainerState,
    check_fingerprint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    validate_checkpoint,
)
from xpl_hf.data.checks import data_fingerprint
from xpl_hf.data.source import DatasetSource
from xpl_hf.method import XPLMethod
from xpl_hf.run_folder import RunLock, atomic_save_pretrained, promote_best_model, recover_saved_model


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


def _save(accelerator, parts, output_dir, step, **kwargs):
    state = TrainerState(step=step, fingerprint={"method": "xpl"})
    return save_checkpoint(accelerator, output_dir, state=state, total_limit=None, **parts, **kwargs)


def _shapes(parts):
    return {k: tuple(v.shape) for k, v in parts["model"].state_dict().items()}


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


@pytest.mark.parametrize("damage", ["corrupt_rng_state", "empty_xpl_state", "missing_weight", "reshaped_weight",
                                    "missing_bank_tensor", "nan_weight"])
def test_more_damage_falls_back_to_the_newest_valid(parts, tmp_path, caplog, damage):
    """Damage that used to pass the check and fail later with a raw KeyError / RuntimeError at load."""
    accelerator, objects = parts
    _save(accelerator, objects, tmp_path, 2)
    newest = _save(accelerator, objects, tmp_path, 4)
    if damage == "corrupt_rng_state":
        (newest / "rng_state_0.json").write_text('{"python": [3, [1, 2')
    elif damage == "empty_xpl_state":
        (newest / "xpl_state.json").write_text("{}")
    elif damage in ("missing_weight", "reshaped_weight", "nan_weight"):
        weights = load_file(str(newest / "model.safetensors"))
        if damage == "missing_weight":
            weights.pop("bias")
        elif damage == "nan_weight":  # a diverged run's weights: resuming from them only blames the learning rate
            weights["bias"] = torch.full_like(weights["bias"], float("nan"))
        else:
            weights["bias"] = torch.zeros(5)
        save_file(weights, str(newest / "model.safetensors"))
    else:
        tensors = load_file(str(newest / "xpl_state.safetensors"))
        tensors.pop("bank_labels")
        save_file(tensors, str(newest / "xpl_state.safetensors"))
    with caplog.at_level("WARNING"):
        assert resolve_checkpoint(tmp_path, "latest", _shapes(objects)).name == "checkpoint-2"
    assert "skipping checkpoint-4" in caplog.text
    with pytest.raises(CheckpointError, match="checkpoint-4"):
        validate_checkpoint(newest, _shapes(objects))


def test_checkpoint_without_optimizer_state_loads(parts, tmp_path, caplog):
    accelerator, objects = parts
    path = _save(accelerator, objects, tmp_path, 3, save_optimizer=False)
    assert not (path / "optimizer.pt").exists() and validate_checkpoint(path)["optimizer_saved"] is False
    state = TrainerState()
    with caplog.at_level("WARNING"):
        load_checkpoint(accelerator, path, state=state, **objects)
    assert state.step == 3 and "no optimiser state" in caplog.text
    (path / "scheduler.pt").unlink()  # the scheduler state is always kept (it is tiny)
    with pytest.raises(CheckpointError, match="scheduler.pt missing"):
        validate_checkpoint(path)


@pytest.mark.parametrize("error, message", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device while writing checkpoint-4"),
    (OSError(errno.EFBIG, "File too large"), "the file-size limit .* while writing checkpoint-4"),
    # safetensors' own error type, with only the OS's text
    (RuntimeError("Error while serializing: I/O error: File too large (os error 27)"), "the file-size limit"),
], ids=["ENOSPC", "EFBIG", "EFBIG-as-text"])
def test_a_full_disk_is_one_clear_error_and_keeps_the_previous_checkpoint(parts, tmp_path, monkeypatch, error,
                                                                          message):
    accelerator, objects = parts
    _save(accelerator, objects, tmp_path, 2)

    def disk_full(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpointing, "save_file", disk_full)
    with pytest.raises(CheckpointError, match=message):
        _save(accelerator, objects, tmp_path, 4)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert not (tmp_path / "checkpoints" / ".tmp-checkpoint-4").exists()  # no half-written folder left
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-2"


def test_a_real_file_size_limit_is_the_same_clear_error(tmp_path):
    """`ulimit -f` below a checkpoint's size: the write fails with EFBIG (Python ignores SIGXFSZ), reported like a full
    disk, and the previous checkpoint stays the newest valid one."""
    script = f"""
import resource, torch
from accelerate import Accelerator
from xpl_hf.checkpointing import CheckpointError, TrainerState, save_checkpoint
from xpl_hf.method import XPLMethod
model = torch.nn.Linear(64, 64)  # 16 KiB of weights
optimizer = torch.optim.AdamW(model.parameters())
parts = dict(model=model, optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
             bank=XPLMethod().make_bank(2), selector=XPLMethod().make_selector())
accelerator = Accelerator(cpu=True)
save_checkpoint(accelerator, {str(tmp_path)!r}, state=TrainerState(step=2), total_limit=None, **parts)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_checkpoint(accelerator, {str(tmp_path)!r}, state=TrainerState(step=4), total_limit=None, **parts)
except CheckpointError as err:
    print(err)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "a file reached the file-size limit (`ulimit -f`) while writing checkpoint-4" in done.stdout
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert not (tmp_path / "checkpoints" / ".tmp-checkpoint-4").exists()
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-2"


@pytest.fixture(scope="module")
def tiny_model():
    from xpl_hf import XPLConfig, XPLModel, XPLProcessor

    config = XPLConfig(image_size=64, embed_dim=8, vggish_fc_dim=16, clip_seconds=1.0, image_backbone_a="resnet18",
                       image_backbone_b="resnet18")
    return XPLModel(config), XPLProcessor.from_config(config)


def test_a_kill_inside_the_best_model_swap_is_recovered(tiny_model, tmp_path, monkeypatch):
    """SIGKILL between parking the old best model and moving the new one in: the next start puts it back."""
    model, processor = tiny_model
    best = tmp_path / "best"
    atomic_save_pretrained(model, processor, best)
    real_replace, calls = os.replace, []

    def killed_after_parking(src, dst):
        calls.append(dst)
        real_replace(src, dst)
        if str(dst).endswith(".old-best"):
            raise SystemExit("killed")  # the process dies here

    monkeypatch.setattr(run_folder.os, "replace", killed_after_parking)
    with pytest.raises(SystemExit):
        atomic_save_pretrained(model, processor, best)
    monkeypatch.undo()
    assert not best.exists() and (tmp_path / ".old-best" / "model.safetensors").is_file()  # stranded
    recover_saved_model(best)
    assert (best / "model.safetensors").is_file() and not (tmp_path / ".old-best").exists()
    assert not (tmp_path / ".tmp-best").exists()


def test_a_full_disk_while_saving_the_best_model_keeps_the_old_one(tiny_model, tmp_path, monkeypatch):
    model, processor = tiny_model
    best = tmp_path / "best"
    atomic_save_pretrained(model, processor, best)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder, "save_pretrained_with_pipeline", disk_full)
    with pytest.raises(CheckpointError, match="no space left"):
        atomic_save_pretrained(model, processor, best)
    assert (best / "model.safetensors").is_file() and not (tmp_path / ".tmp-best").exists()


def test_the_kept_model_moves_to_the_root(tiny_model, tmp_path):
    """promote_best_model: best/ -> OUTPUT_DIR, moved (stored once), replacing an older model there; a swap that a
    kill interrupted is finished first; nothing to do when best/ is gone (a finished run resumed)."""
    from xpl_hf import XPLModel

    model, processor = tiny_model
    atomic_save_pretrained(model, processor, tmp_path / "best")
    (tmp_path / "model.safetensors").mkdir()  # an older root entry of the same name is replaced
    os.replace(tmp_path / "best", tmp_path / ".old-best")  # killed inside the last swap: best/ parked
    promote_best_model(tmp_path)
    assert not (tmp_path / "best").exists() and not (tmp_path / ".old-best").exists()
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert XPLModel.from_pretrained(tmp_path).config.embed_dim == model.config.embed_dim
    promote_best_model(tmp_path)  # again: best/ is absent, the root model stays
    assert (tmp_path / "model.safetensors").is_file()


def test_one_run_per_output_folder(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        with pytest.raises(CheckpointError, match=f"in use by another run \\(pid {sleeper.pid}"):
            with RunLock(tmp_path):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock, its run now dead (SIGKILLed): taken over, then released at the end
    with caplog.at_level("WARNING"), RunLock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / ".run.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(CheckpointError, match="in use by another run"):  # a second run now: refused
            RunLock(tmp_path).__enter__()
    assert "stale lock" in caplog.text and not (tmp_path / ".run.lock").exists()


def test_data_fingerprint_sees_content_not_paths(tmp_path):
    import shutil

    data = tmp_path / "data" / "data"
    data.mkdir(parents=True)
    (data / "labeled-00000-of-00001.parquet").write_bytes(b"PAR1" + bytes(range(200)) * 10 + b"PAR1")
    folder = str(tmp_path / "data")
    before = data_fingerprint(folder)
    assert data_fingerprint(folder + "/") == before  # a trailing "/" is the same dataset
    copy = shutil.copytree(folder, tmp_path / "copy")  # new mtimes, same content
    assert data_fingerprint(str(copy)) == before
    (data / "labeled-00000-of-00001.parquet").write_bytes(b"PAR1" + bytes(range(199, -1, -1)) * 10 + b"PAR1")
    changed = data_fingerprint(folder)
    assert changed != before
    with pytest.raises(CheckpointError, match="dataset files changed"):
        check_fingerprint({"dataset": folder, **before}, {"dataset": folder, **changed}, "checkpoint-4")
    check_fingerprint({"dataset": folder, **before}, {"dataset": folder, **before}, "checkpoint-4")
    from xpl_hf.training_args import XPLTrainingArguments

    with_slash, without = XPLTrainingArguments(dataset=folder + "/"), XPLTrainingArguments(dataset=folder)
    assert with_slash.fingerprint() == without.fingerprint()


def test_dataset_source_decides_local_or_hub_once(tmp_path):
    folder = tmp_path / "my-data"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "labeled-00000-of-00001.parquet").write_bytes(b"PAR1" + bytes(range(50)) + b"PAR1")
    local = DatasetSource.resolve(str(folder))
    assert local.local and local.public_name == "my-data"  # never the full local path
    assert local.fingerprint() == data_fingerprint(folder)
    hub = DatasetSource.resolve("some-org/some-data")
    assert not hub.local and hub.public_name == "some-org/some-data"
    assert hub.fingerprint() == {"data_files": "hub:some-org/some-data"}
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub dataset id"):
        DatasetSource.resolve(str(tmp_path / "missing" / "deeper"))  # cannot be a Hub id, is no folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data_fingerprint(tmp_path / "missing")
