"""The run's output folder: one run at a time in it, the kept model saved atomically, and that model moved to the
folder's root at the end.

    OUTPUT_DIR/
        .run.lock        while a run trains (:class:`RunLock`)
        best/            the model `--model_selection` keeps, replaced atomically (:func:`atomic_save_pretrained`)
        checkpoints/     training checkpoints (:mod:`xpl_hf.checkpointing`)
        config.json ...  at the end, the kept model (:func:`promote_best_model`): `from_pretrained(OUTPUT_DIR)`

A kill at any moment leaves a folder that the next start repairs (:func:`recover_saved_model`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from .checkpointing import CheckpointError, raise_if_out_of_space
from .pipeline_xpl import save_pretrained_with_pipeline

logger = logging.getLogger(__name__)

__all__ = ["RunLock", "atomic_save_pretrained", "recover_saved_model", "promote_best_model", "LOCK_FILE",
           "BEST_MODEL_DIR"]

LOCK_FILE = ".run.lock"
BEST_MODEL_DIR = "best"


class RunLock:
    """One run per output folder: ``OUTPUT_DIR/.run.lock`` holds the owner's host and pid while it trains.

    A second run on the same folder is refused with a message naming the owner; a lock left by a process that no
    longer exists (a killed run, on this host) is taken over with a warning. Use as a context manager; only the
    main process should hold it (``enabled``).
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled, self.held = Path(output_dir) / LOCK_FILE, enabled, False

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and self._alive(holder) or holder is None and self._young():
                    holder = holder or {"pid": "?", "host": "?"}
                    raise CheckpointError(
                        f"{self.path.parent} is in use by another run (pid {holder['pid']} on {holder['host']}): two "
                        f"runs would interleave their checkpoints. Choose another --output_dir, or stop that run. "
                        f"(If it is gone, delete {self.path}.)") from None
                logger.warning(f"taking over the stale lock {self.path} (its run, pid "
                               f"{(holder or {}).get('pid')}, no longer exists)")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            self.held = True
            return self
        raise CheckpointError(f"could not take the lock {self.path}: another run is starting on the same folder.")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _young(self) -> bool:  # a lock still being written by a run that is starting right now
        try:
            return time.time() - self.path.stat().st_mtime < 10
        except OSError:
            return False

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
        except (OSError, ValueError):
            return None  # unreadable or half-written: treated as stale

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # another machine's run: cannot check, assume it runs
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def atomic_save_pretrained(model, processor, folder: str | os.PathLike) -> None:
    """`save_pretrained` of model + processor (+ the pipeline's code) into a temporary sibling, then swap it in place
    of `folder` (the old one is parked in ``.old-<name>`` for the instant of the swap: :func:`recover_saved_model`
    puts it back if a kill falls there).

    Raises:
        CheckpointError: the disk is full or a file reached the size limit (the temporary folder is removed,
            `folder` is untouched).
    """
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_pretrained_with_pipeline(model, processor, tmp, safe_serialization=True)  # carries the pipeline code
    except Exception as err:  # noqa: BLE001 - OSError or safetensors' own error type
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_out_of_space(err, f"the model {folder.name}/", folder)
        raise
    old = folder.with_name(f".old-{folder.name}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def recover_saved_model(folder: str | os.PathLike) -> None:
    """Finish an :func:`atomic_save_pretrained` that a kill interrupted: a model parked in ``.old-<name>`` with no
    ``<name>`` goes back; leftovers (``.tmp-<name>``, a parked copy next to a complete one) are removed."""
    folder = Path(folder)
    old, tmp = folder.with_name(f".old-{folder.name}"), folder.with_name(f".tmp-{folder.name}")
    if old.is_dir() and not folder.exists():
        os.replace(old, folder)
        logger.warning(f"recovered the saved model {folder} from {old.name} (a run was killed while replacing it)")
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def promote_best_model(output_dir: str | os.PathLike) -> None:
    """Move the kept model from ``OUTPUT_DIR/best/`` to ``OUTPUT_DIR`` (moved, not copied: the weights are stored
    once), after finishing a swap a kill interrupted (:func:`recover_saved_model`). Nothing to do when ``best/`` is
    absent (a finished run resumed: its kept model is already at the root)."""
    output_dir = Path(output_dir)
    best = output_dir / BEST_MODEL_DIR
    recover_saved_model(best)
    if not best.is_dir():
        return
    for item in best.iterdir():
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    best.rmdir()
