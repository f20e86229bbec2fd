"""bench/gpu_protocol.py (the GPU protocol) on CPU: the tiny rehearsal end to end with resume and the time limit,
the batched colour augmentation (colour only, per branch, seeded), and the decoded tensors against the processor's
own outputs. The CUDA path (bf16 autocast, channels-last, the H200 timings) is not tested here."""

import json

import pytest
import torch
from bench_modules import load as load_bench


def load():
    return load_bench("gpu_protocol")


@pytest.mark.slow
def test_rehearsal_writes_per_scene_scores_resumes_and_stops_at_the_time_limit(tmp_path, monkeypatch, capsys):
    gp = load()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "gp"
    args = ["--rehearse", "--threads", "1", "--steps", "3", "--out", str(out)]
    gp.main(args)
    for row in ("sup_only", "xpl"):
        rec = json.loads((out / "raw" / row / "seed0.json").read_text())
        assert rec["complete"] and rec["steps_done"] == 3 and rec["split"] == "test"
        per = rec["test_per_scene"]
        for variant in ("true", "swapped"):
            for branch in ("a", "b", "fused"):
                assert len(per[variant][branch]["ciou"]) == 16 and len(per[variant][branch]["selected"]) == 16
        assert set(rec["test"]["true"]["fused"]) == {"ciou", "auc", "select"}
        assert rec["history"][-1]["step"] == 3 and rec["wall_s"] > 0 and rec["pretrained"]
        assert len(rec["labeled_ids"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"sup_only", "xpl"}
    assert (out / "tables.md").read_text().startswith("# GPU protocol")

    stamps = {p: p.stat().st_mtime_ns for p in (out / "raw").glob("*/seed0.json")}
    capsys.readouterr()
    gp.main(args)  # everything done: nothing trains, nothing is decoded
    assert "0 runs to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    gp.main(args + ["--rows", "hard_pl", "--time_limit_s", "1e-6"])  # overruns at once: logged, not scored
    stopped = json.loads((out / "incomplete" / "hard_pl" / "seed0.json").read_text())
    assert not stopped["complete"] and stopped["steps_done"] == 0 and "test" not in stopped
    assert not (out / "raw" / "hard_pl").exists()


def grey_square(n=1, size=32):
    """(n, 3, size, size) uint8: background 40, a 200 square at rows 8:16, columns 10:20."""
    images = torch.full((n, 3, size, size), 40, dtype=torch.uint8)
    images[:, :, 8:16, 10:20] = 200
    return images


def test_every_colour_operation_keeps_the_box_in_place():
    gp = load()
    image = grey_square()
    augment = gp.GpuColorAugment(seed=0)
    assert {op for op, _, _ in augment.ops} == {"Identity", "Brightness", "Color", "Contrast", "Sharpness",
                                                "Posterize", "Solarize", "AutoContrast", "Equalize"}
    for op, magnitude, signed in augment.ops:
        for m in ((magnitude, -magnitude) if signed and magnitude is not None else (magnitude,)):
            out = gp.color_op(image, op, m)
            assert out.shape == image.shape and out.dtype == torch.uint8, op
            inside, outside = out[0, :, 9:15, 11:19], out[0, :, 20:, :]  # away from the square's 1-px rim
            assert (inside == inside[:, :1, :1]).all() and (outside == outside[:, :1, :1]).all(), (op, m)
            assert not torch.equal(inside[:, 0, 0], outside[:, 0, 0]), (op, m)  # the box is still there
            brightest = divmod(int(out[0].int().sum(0).argmax()), 32)
            assert 8 <= brightest[0] < 16 and 10 <= brightest[1] < 20, (op, m)  # and still the brightest


def test_views_differ_per_branch_and_sample_and_repeat_with_the_seed():
    gp = load()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=g)
    a1, a2 = gp.GpuColorAugment(seed=1)(images), gp.GpuColorAugment(seed=1)(images)
    b = gp.GpuColorAugment(seed=2)(images)
    assert torch.equal(a1, a2) and not torch.equal(a1, b)
    assert a1.shape == images.shape and a1.dtype == torch.uint8
    same = gp.GpuColorAugment(seed=3)(images[:1].expand(16, -1, -1, -1).contiguous())
    assert len({bytes(v.numpy().tobytes()) for v in same}) > 4  # each sample draws its own operations
    augment = gp.GpuColorAugment(seed=4)
    assert not torch.equal(augment(images), augment(images))  # a fresh view at every visit


def test_decoded_tensors_are_the_processors_outputs():
    gp = load()
    from xpl_hf import XPLProcessor
    from xpl_hf.data.synthetic import SyntheticConfig, generate_sample
    from xpl_hf.metrics.ground_truth import ground_truth_map

    settings = gp.Settings(**gp.REHEARSAL)
    data = gp.decode_benchmark(settings, {"labeled": 3, "unlabeled": 2}, torch.device("cpu"), chunk=2)
    syn = SyntheticConfig(image_size=64, clip_seconds=1.0)
    processor = XPLProcessor(image_size=64, clip_seconds=1.0)
    for split, n in (("labeled", 3), ("unlabeled", 2)):
        rows = [generate_sample(syn, split, i) for i in range(n)]
        d = data[split]
        assert d["ids"] == [r["id"] for r in rows] and d["objects"] == [r["objects"] for r in rows]
        assert d["image"].dtype == torch.uint8 and d["image"].shape == (n, 3, 64, 64)
        expected = processor(images=[r["image"]["bytes"] for r in rows], audio=[r["audio"]["bytes"] for r in rows])
        torch.testing.assert_close(gp.normalize(d["image"], processor), expected["pixel_values"], atol=1e-5, rtol=0)
        assert torch.equal(d["audio_log_mel"], expected["audio_log_mel"])
        assert torch.equal(d["audio_waveform"], expected["audio_waveform"])
        for i, r in enumerate(rows):
            box = (r["true_boxes"] or r["boxes"])[0]
            assert torch.equal(d["gt"][i], torch.from_numpy(ground_truth_map([box], "union") > 0))


@pytest.mark.slow
def test_a_process_pool_decodes_the_same_tensors():
    gp = load()
    settings = gp.Settings(**gp.REHEARSAL)
    alone = gp.decode_benchmark(settings, {"test": 4}, torch.device("cpu"), chunk=2)
    pooled = gp.decode_benchmark(settings, {"test": 4}, torch.device("cpu"), workers=2, chunk=2)
    for key in ("image", "audio_log_mel", "audio_waveform", "gt", "labels"):
        assert torch.equal(alone["test"][key], pooled["test"][key]), key
    assert alone["test"]["ids"] == pooled["test"]["ids"]
