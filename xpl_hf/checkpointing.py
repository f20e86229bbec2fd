"""Training checkpoints: atomic, complete, and free of pickled code.

A checkpoint ``OUTPUT_DIR/checkpoints/checkpoint-<step>/`` holds

| file | content | read with |
| --- | --- | --- |
| ``model.safetensors`` | the model's weights | safetensors |
| ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` | their ``state_dict()`` (tensors, numbers) | torch, weights_only |
| ``xpl_state.safetensors`` + ``xpl_state.json`` | the PL-EMA bank and the curriculum window | safetensors, JSON |
| ``rng_state_<rank>.json`` | each process's Python, NumPy and torch RNG states | JSON |
| ``trainer_state.json`` | step, best model, data positions, log, the run's fingerprint (written last) | JSON |

Nothing is unpickled with ``weights_only=False``, so a checkpoint folder whose files were replaced by hostile
pickles executes nothing: the load fails with a message. A checkpoint is written into a temporary folder and
renamed when complete, so a run killed at any moment leaves either no new checkpoint or a complete one.
``resume_from_checkpoint="latest"`` takes the newest checkpoint that passes :func:`validate_checkpoint` and says
which ones it skipped and why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .pipeline_xpl import save_pretrained_with_pipeline

logger = logging.getLogger(__name__)

__all__ = ["TrainerState", "CheckpointError", "check_fingerprint", "list_checkpoints", "resolve_checkpoint",
           "validate_checkpoint", "save_checkpoint", "load_checkpoint", "atomic_save_pretrained",
           "COMPLETE_MARKER"]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"  # written last: a checkpoint folder without it is incomplete
REQUIRED_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "xpl_state.safetensors", "xpl_state.json",
                  COMPLETE_MARKER)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the folder and the problem."""


@dataclass
class TrainerState:
    """Counters and history saved with every checkpoint (besides model, optimizer, scheduler, RNG, bank, window)."""

    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    labeled: list | dict = field(default_factory=lambda: {"epoch": 0, "batch": 0})
    unlabeled: list | dict = field(default_factory=lambda: {"epoch": 0, "consumed": 0})
    log_history: list = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key in dataclasses.asdict(self):
            if key in state:
                setattr(self, key, state[key])


def check_fingerprint(saved: dict, current: dict, path: str | os.PathLike) -> None:
    """Refuse to resume when the checkpoint's run used other settings than this one (method, optimisation, data,
    architecture); the message lists every difference."""
    diffs = [f"--{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in current.items() if saved.get(k) != v]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was made with other settings ({'; '.join(diffs)}). Resuming "
                              "applies none of them: rerun with the checkpoint's values, or start a new --output_dir.")


# ------------------------------------------------------------------------------------------------ finding
def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders with a completion marker, oldest first (complete does not mean valid: see below)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))
             and (p / COMPLETE_MARKER).is_file()]
    return [p for _, p in sorted(found)]


def validate_checkpoint(path: str | os.PathLike) -> dict:
    """Check that every file of a checkpoint is present and readable; return its trainer state.

    Raises:
        CheckpointError: naming the folder and the first problem found.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a folder.")
    if (path / "config.json").is_file() and not (path / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"{path} is a saved model, not a training checkpoint: pass it as --model_name_or_path.")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: {', '.join(missing)} missing.")
    try:
        state = json.loads((path / COMPLETE_MARKER).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no integer 'step'")
        json.loads((path / "xpl_state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: a JSON state file is corrupt ({err}).") from None
    for name in ("model.safetensors", "xpl_state.safetensors"):
        try:
            with safe_open(str(path / name), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)  # reads the header entry; a truncated file fails here or at load
            if (path / name).stat().st_size < 8:
                raise ValueError("file too short")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"checkpoint {path}: {name} is corrupt ({type(err).__name__}: {err}).") from None
    for name in ("optimizer.pt", "scheduler.pt"):
        _safe_torch_load(path / name)
    return state


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """'latest' -> the newest valid checkpoint (None on a fresh run); a path -> that path, validated.

    With 'latest', invalid checkpoints (truncated weights, corrupt JSON, missing files, hostile pickles) are skipped
    with a warning naming each one and the problem.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint != "latest":
        validate_checkpoint(resume_from_checkpoint)
        return Path(resume_from_checkpoint)
    for candidate in reversed(list_checkpoints(output_dir)):
        try:
            validate_checkpoint(candidate)
            return candidate
        except CheckpointError as err:
            logger.warning(f"skipping {candidate.name}: {err} Falling back to an older checkpoint.")
    return None


# ----------------------------------------------------------------------------------------------- save/load
def _safe_torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError, ...
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is corrupt or not a plain tensor file "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).") from None


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state().tolist()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = [kind, keys.tolist(), pos, has_gauss, gauss]
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _write_json(path: Path, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(accelerator, output_dir: str | os.PathLike, *, model, optimizer, scheduler, bank, selector,
                    state: TrainerState, total_limit: int | None) -> Path:
    """Write checkpoint-<step> into a temporary folder, then rename it atomically (module docstring).

    Older checkpoints beyond ``total_limit`` are removed after the new one is complete.
    """
    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{state.step}"
    tmp = root / f".tmp-checkpoint-{state.step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        weights = {k: v.detach().contiguous().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if getattr(accelerator, "scaler", None) is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        bank_state, selector_state = bank.state_dict(), selector.state_dict()
        save_file({"bank_keys": bank_state["keys"], "bank_labels": bank_state["labels"],
                   "bank_seen": bank_state["seen"], "window_scores": selector_state["scores"]},
                  str(tmp / "xpl_state.safetensors"))
        _write_json(tmp / "xpl_state.json", {"bank": {k: bank_state[k] for k in ("models", "map_size", "alpha")},
                                             "window": {k: selector_state[k] for k in ("count", "pos")}})
    _write_json(tmp / f"rng_state_{accelerator.process_index}.json", _rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / COMPLETE_MARKER, state.state_dict())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | os.PathLike, *, model, optimizer, scheduler, bank, selector,
                    state: TrainerState) -> None:
    """Restore everything :func:`save_checkpoint` wrote (call :func:`validate_checkpoint` first)."""
    path = Path(path)
    accelerator.unwrap_model(model).load_state_dict(load_file(str(path / "model.safetensors")))
    optimizer.load_state_dict(_safe_torch_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_safe_torch_load(path / "scheduler.pt"))
    if getattr(accelerator, "scaler", None) is not None and (path / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(_safe_torch_load(path / "scaler.pt"))
    tensors = load_file(str(path / "xpl_state.safetensors"))
    meta = json.loads((path / "xpl_state.json").read_text())
    bank.load_state_dict({"keys": tensors["bank_keys"], "labels": tensors["bank_labels"],
                          "seen": tensors["bank_seen"], **meta["bank"]})
    selector.load_state_dict({"scores": tensors["window_scores"], **meta["window"]})
    rng = path / f"rng_state_{accelerator.process_index}.json"
    if rng.is_file():
        _set_rng_state(json.loads(rng.read_text()))
    else:
        logger.warning(f"{path} has no RNG state for process {accelerator.process_index}; RNG streams restart")
    state.load_state_dict(json.loads((path / COMPLETE_MARKER).read_text()))


def atomic_save_pretrained(model, processor, folder: str | os.PathLike) -> None:
    """`save_pretrained` of model + processor (+ the pipeline's code) into a temporary sibling, then swap it in place
    of `folder`."""
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained_with_pipeline(model, processor, tmp, safe_serialization=True)  # carries the pipeline code
    old = folder.with_name(f".old-{folder.name}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
