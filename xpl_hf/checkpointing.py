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
renamed when complete, so a run killed at any moment leaves either no new checkpoint or a complete one; a full disk
(or a file-size limit) while writing is one clear error and leaves the previous checkpoints as they were.
``resume_from_checkpoint="latest"`` takes the newest checkpoint that passes :func:`validate_checkpoint` (every file
present and parseable, every weight the model expects, all finite) and says which ones it skipped and why;
:func:`check_fingerprint` refuses a resume with other settings or data (`xpl_hf.data.source.DatasetSource
.fingerprint`). The rest of the output folder (its lock, the kept model) is :mod:`xpl_hf.run_folder`'s.
"""

from __future__ import annotations

import dataclasses
import errno
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

from .modeling_xpl import WeightsError, check_finite_weights

logger = logging.getLogger(__name__)

__all__ = ["TrainerState", "CheckpointError", "check_fingerprint", "list_checkpoints", "resolve_checkpoint",
           "validate_checkpoint", "save_checkpoint", "load_checkpoint", "raise_if_out_of_space", "COMPLETE_MARKER"]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "trainer_state.json"  # written last: a checkpoint folder without it is incomplete
REQUIRED_FILES = ("model.safetensors", "scheduler.pt", "xpl_state.safetensors", "xpl_state.json", COMPLETE_MARKER)
XPL_TENSORS = ("bank_keys", "bank_labels", "bank_seen", "window_scores")
# errno -> (what ran out, the OS's text for it): a writer such as safetensors may raise its own error type with only
# that text in its message
OUT_OF_SPACE = {
    errno.ENOSPC: ("no space left on the device", "No space left"),
    errno.EDQUOT: ("no space left on the device (disk quota exceeded)", "Disk quota exceeded"),
    errno.EFBIG: ("a file reached the file-size limit (`ulimit -f`)", "File too large"),
}


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
    optimizer_saved: bool = True

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key in dataclasses.asdict(self):
            if key in state:
                setattr(self, key, state[key])


def check_fingerprint(saved: dict, current: dict, path: str | os.PathLike) -> None:
    """Refuse to resume when the checkpoint's run used other settings than this one (method, optimisation, data,
    architecture); the message lists every difference."""
    diffs = [f"--{k}: checkpoint {saved.get(k)!r}, now {v!r}" for k, v in current.items()
             if saved.get(k) != v and k != "data_files"]
    if "data_files" in current and saved.get("data_files") != current["data_files"]:
        diffs.append("the --dataset files changed since the checkpoint (names, sizes or content of its parquet "
                     "shards)")
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


def validate_checkpoint(path: str | os.PathLike, expected_weights: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Check that every file of a checkpoint is present and readable; return its trainer state.

    Args:
        expected_weights: {name: shape} of the model's state dict; when given, a missing, extra or reshaped weight
            makes the checkpoint invalid (instead of a KeyError or RuntimeError at load).
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
        state = _read_json(path / COMPLETE_MARKER)
        if not isinstance(state.get("step"), int):
            raise ValueError(f"{COMPLETE_MARKER} has no integer 'step'")
        meta = _read_json(path / "xpl_state.json")
        if not {"models", "map_size"} <= set(meta.get("bank", {})) or not {"count", "pos"} <= set(meta.get("window",
                                                                                                           {})):
            raise ValueError("xpl_state.json lacks the bank's layout or the window's position")
        for rng in path.glob("rng_state_*.json"):
            if not {"python", "numpy", "torch"} <= set(_read_json(rng)):
                raise ValueError(f"{rng.name} lacks the python, numpy or torch state")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path}: a JSON state file is corrupt ({err}).") from None
    torch_files = ["scheduler.pt"] + (["optimizer.pt"] if state.get("optimizer_saved", True) else [])
    if not (path / torch_files[-1]).is_file():  # absent by design with --save_optimizer_state false
        raise CheckpointError(f"checkpoint {path} is incomplete: optimizer.pt missing.")
    shapes = {}
    for name in ("model.safetensors", "xpl_state.safetensors"):
        try:
            if (path / name).stat().st_size < 8:
                raise ValueError("file too short")
            with safe_open(str(path / name), framework="pt") as f:
                shapes[name] = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"checkpoint {path}: {name} is corrupt ({type(err).__name__}: {err}).") from None
    try:  # a run that diverged may have saved NaN weights: never resume from them
        check_finite_weights(load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
    except WeightsError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    lacking = [key for key in XPL_TENSORS if key not in shapes["xpl_state.safetensors"]]
    if lacking:
        raise CheckpointError(f"checkpoint {path}: xpl_state.safetensors lacks {', '.join(lacking)}.")
    if expected_weights is not None:
        saved = shapes["model.safetensors"]
        problems = [f"{k} missing" for k in expected_weights if k not in saved]
        problems += [f"{k} unexpected" for k in saved if k not in expected_weights]
        problems += [f"{k} has shape {saved[k]}, the model {tuple(v)}" for k, v in expected_weights.items()
                     if k in saved and saved[k] != tuple(v)]
        if problems:
            raise CheckpointError(f"checkpoint {path}: model.safetensors does not fit the model ("
                                  f"{'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}).")
    for name in torch_files:
        _safe_torch_load(path / name)
    return state


def _read_json(path: Path) -> dict:
    value = json.loads(path.read_text())
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{path.name} holds no state")
    return value


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None,
                       expected_weights: dict[str, tuple[int, ...]] | None = None) -> Path | None:
    """'latest' -> the newest valid checkpoint (None on a fresh run); a path -> that path, validated.

    With 'latest', invalid checkpoints (truncated or incomplete weights, corrupt or empty JSON, missing files,
    hostile pickles) are skipped with a warning naming each one and the problem.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint != "latest":
        validate_checkpoint(resume_from_checkpoint, expected_weights)
        return Path(resume_from_checkpoint)
    for candidate in reversed(list_checkpoints(output_dir)):
        try:
            validate_checkpoint(candidate, expected_weights)
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


def raise_if_out_of_space(err: BaseException, what: str, folder: Path) -> None:
    """A full disk, a full quota or a file-size limit (ENOSPC, EDQUOT, EFBIG: :data:`OUT_OF_SPACE`) while writing
    ``what`` into ``folder`` as one clear :class:`CheckpointError`; any other error returns, for the caller (which has
    removed its partial folder) to re-raise as it was."""
    code = getattr(err, "errno", None)
    reason = next((reason for number, (reason, text) in OUT_OF_SPACE.items() if code == number or text in str(err)),
                  None)
    if reason is not None:
        raise CheckpointError(f"{reason} while writing {what} in {folder.parent}; the previous checkpoints are "
                              "intact. Free some space (or lower --checkpoints_total_limit, or pass "
                              "--save_optimizer_state false) and resume with --resume_from_checkpoint latest.") from err


def save_checkpoint(accelerator, output_dir: str | os.PathLike, *, model, optimizer, scheduler, bank, selector,
                    state: TrainerState, total_limit: int | None, save_optimizer: bool = True) -> Path:
    """Write checkpoint-<step> into a temporary folder, then rename it atomically (module docstring).

    Older checkpoints beyond ``total_limit`` are removed after the new one is complete. ``save_optimizer=False``
    leaves out the optimiser and scheduler states (a resume then restarts AdamW's moments).

    Raises:
        CheckpointError: the disk is full or a file reached the size limit; the temporary folder is removed and
            the previous checkpoints are untouched (so with any other failed write, re-raised as it was).
    """
    root = checkpoint_root(output_dir)
    final = root / f"checkpoint-{state.step}"
    tmp = root / f".tmp-checkpoint-{state.step}"
    state.optimizer_saved = save_optimizer
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        if accelerator.is_main_process:
            weights = {k: v.detach().contiguous().cpu()
                       for k, v in accelerator.unwrap_model(model).state_dict().items()}
            save_file(weights, str(tmp / "model.safetensors"))
            if save_optimizer:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if getattr(accelerator, "scaler", None) is not None:
                torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
            bank_state, selector_state = bank.state_dict(), selector.state_dict()
            save_file({"bank_keys": bank_state["keys"], "bank_labels": bank_state["labels"],
                       "bank_seen": bank_state["seen"], "window_scores": selector_state["scores"]},
                      str(tmp / "xpl_state.safetensors"))
            _write_json(tmp / "xpl_state.json", {"bank": {k: bank_state[k] for k in ("models", "map_size")},
                                                 "window": {k: selector_state[k] for k in ("count", "pos")}})
        _write_json(tmp / f"rng_state_{accelerator.process_index}.json", _rng_state())
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_json(tmp / COMPLETE_MARKER, state.state_dict())
    except Exception as err:  # noqa: BLE001 - OSError or safetensors' own error type
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_out_of_space(err, final.name, final)
        raise
    if accelerator.is_main_process:
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
    scheduler.load_state_dict(_safe_torch_load(path / "scheduler.pt"))
    if (path / "optimizer.pt").is_file():
        optimizer.load_state_dict(_safe_torch_load(path / "optimizer.pt"))
    else:
        logger.warning(f"{path} holds no optimiser state (--save_optimizer_state false): AdamW's moments restart and "
                       "the resumed run is not bit-exact.")
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
