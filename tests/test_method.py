"""Unit tests of XPL's method pieces: pseudo-labels (eq. 4-5), curriculum (eq. 1-3), losses (eq. 6-9)."""

import math

import pytest
import torch
import torch.nn.functional as F

from xpl_hf.curriculum import CurriculumSelector, admitted_fraction, masked_quantile
from xpl_hf.distributed import gather_varlen
from xpl_hf.losses import cross_bce, cross_modal_logits, downsample_gt, infonce_max_pool, supervised_bce, total_loss
from xpl_hf.maps import minmax_normalize, pearson_consensus
from xpl_hf.pseudo_labels import (
    PseudoLabelBank,
    hard_pseudo_labels,
    hash_ids,
    sharpen,
    soft_pseudo_labels,
    synced_bank_update,
)


# ---------------------------------------------------------------- pseudo-labels (eq. 4)
def test_minmax_normalize():
    x = torch.tensor([[[1.0, 3.0], [5.0, 2.0]], [[4.0, 4.0], [4.0, 4.0]]])
    y = minmax_normalize(x)
    torch.testing.assert_close(y[0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(y[1], torch.zeros(2, 2))  # flat map -> zeros


def test_sharpen_known_points():
    T = 0.1
    p = torch.tensor([0.5, 0.6, 0.4, 1.0, 0.0])
    expected = torch.tensor([0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-5)),
                             1 / (1 + math.exp(5))])
    torch.testing.assert_close(sharpen(p, T), expected)
    assert sharpen(p, None) is p and sharpen(p, 0) is p  # ablation: no sharpening


def test_soft_and_hard_pseudo_labels():
    maps = torch.tensor([[[0.25, 0.5], [0.75, 0.375]]], requires_grad=True)
    soft = soft_pseudo_labels(maps, 0.1)
    assert not soft.requires_grad
    p_hat = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    torch.testing.assert_close(soft, torch.sigmoid((p_hat - 0.5) / 0.1))
    torch.testing.assert_close(soft_pseudo_labels(maps, None), p_hat)
    assert torch.equal(hard_pseudo_labels(maps), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))


# ---------------------------------------------------------------- bank (eq. 5)
def test_bank_ema_first_and_second_visit():
    bank = PseudoLabelBank(map_size=2, alpha=0.75)
    y1a, y1b = torch.full((2, 2, 2), 0.5), torch.full((2, 2, 2), 1.0)
    out = bank.update(["s1", "s2"], {"a": y1a, "b": y1b})
    assert torch.equal(out["a"], y1a) and torch.equal(out["b"], y1b)  # first visit: Y = Ŷ
    assert bank.labels.dtype == torch.float16 and out["a"].dtype == torch.float32
    # second visit of s2 (with a new sample s3): Y = 0.75·Y_prev + 0.25·Ŷ
    out = bank.update(["s2", "s3"], {"a": torch.tensor([[[1.0, 0.0], [0.25, 0.5]]]).repeat(2, 1, 1),
                                     "b": torch.zeros(2, 2, 2)})
    torch.testing.assert_close(out["a"][0], torch.tensor([[0.625, 0.375], [0.4375, 0.5]]))
    torch.testing.assert_close(out["b"][0], torch.full((2, 2), 0.75))
    torch.testing.assert_close(out["a"][1], torch.tensor([[1.0, 0.0], [0.25, 0.5]]))  # s3 first visit
    assert len(bank) == 3 and "s1" in bank and "nope" not in bank
    y, found = bank.lookup(["s2", "s1", "nope"], "a")
    assert found.tolist() == [True, True, False]
    torch.testing.assert_close(y[0], out["a"][0])
    assert torch.equal(y[2], torch.zeros(2, 2))


def test_bank_alpha_zero_and_fp16_rounding():
    bank = PseudoLabelBank(map_size=(1, 2), models=("a",), alpha=0.0)
    bank.update(["x"], {"a": torch.tensor([[[0.1, 0.9]]])})
    out = bank.update(["x"], {"a": torch.tensor([[[0.3, 0.7]]])})
    torch.testing.assert_close(out["a"], torch.tensor([[[0.3, 0.7]]]))  # α = 0: no EMA
    stored, _ = bank.lookup(["x"], "a")
    assert torch.equal(stored, torch.tensor([[[0.3, 0.7]]]).half().float())  # stored in fp16


def test_bank_per_model_first_visit_and_duplicates():
    bank = PseudoLabelBank(map_size=1, alpha=0.5)
    bank.update(["x"], {"a": torch.ones(1, 1, 1)})  # only model a visits
    out = bank.update(["x"], {"a": torch.zeros(1, 1, 1), "b": torch.full((1, 1, 1), 0.25)})
    assert out["a"].item() == 0.5 and out["b"].item() == 0.25  # b's first visit sets Y
    out = bank.update(["y", "y"], {"a": torch.tensor([[[0.0]], [[1.0]]])})  # duplicate id: last one wins
    assert out["a"].flatten().tolist() == [1.0, 1.0] and len(bank) == 2


def test_bank_growth_and_index_many_ids():
    bank = PseudoLabelBank(map_size=1, models=("a",), alpha=0.0, merge_every=1000)
    for start in range(0, 5000, 700):  # many inserts, growth past the initial capacity
        ids = [f"id{i}" for i in range(start, min(start + 700, 5000))]
        bank.update(ids, {"a": torch.tensor([float(i % 1000) for i in range(start, start + len(ids))]).view(-1, 1, 1)})
    assert len(bank) == 5000
    assert torch.all(bank.main_keys[1:] > bank.main_keys[:-1]) and bank.pending_keys.numel() > 0  # both levels
    assert bank.main_keys.numel() + bank.pending_keys.numel() == 5000
    probe = [f"id{i}" for i in (0, 4999, 1234, 777)]
    y, found = bank.lookup(probe, "a")
    assert found.all() and y.flatten().tolist() == [0.0, 999.0, 234.0, 777.0]


def test_bank_state_dict_roundtrip_exact(tmp_path):
    torch.manual_seed(0)
    bank = PseudoLabelBank(map_size=3, alpha=0.7)
    for step in range(4):
        ids = [f"v{(step * 5 + i) % 13}" for i in range(6)]
        bank.update(ids, {"a": torch.rand(6, 3, 3), "b": torch.rand(6, 3, 3)})
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    other = PseudoLabelBank(map_size=3, alpha=0.7)
    other.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    for k, v in bank.state_dict().items():
        w = other.state_dict()[k]
        assert (torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w), k
    new = {"a": torch.rand(6, 3, 3), "b": torch.rand(6, 3, 3)}
    ids = [f"v{i}" for i in range(10, 16)]
    a, b = bank.update(ids, new), other.update(ids, new)
    assert all(torch.equal(a[m], b[m]) for m in "ab")
    with pytest.raises(ValueError):
        PseudoLabelBank(map_size=2).load_state_dict(bank.state_dict())


def test_bank_nbytes_144k_under_64mb():
    n = 144_000
    bank = PseudoLabelBank(map_size=7, alpha=0.7)
    keys = torch.randint(-(2**62), 2**62, (n,), generator=torch.Generator().manual_seed(0))
    for i in range(0, n, 16_000):
        k = keys[i:i + 16_000]
        bank.update(k, {"a": torch.rand(len(k), 7, 7), "b": torch.rand(len(k), 7, 7)})
    assert len(bank) == torch.unique(keys).numel()
    assert bank.nbytes() <= 64 * 2**20, bank.nbytes()
    assert len(bank.state_dict()["keys"]) == len(bank)


def test_hash_ids_stable():
    assert hash_ids(["abc"]).item() == hash_ids(["abc"]).item() != hash_ids(["abd"]).item()
    assert hash_ids(["abc"]).dtype == torch.int64
    import hashlib  # stable across processes: blake2b, not Python's salted hash()

    ref = int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "little", signed=True)
    assert hash_ids(["abc"]).item() == ref
    keys = torch.tensor([5, -7])
    assert torch.equal(hash_ids(keys), keys)


# ---------------------------------------------------------------- curriculum (eq. 1-3)
def test_pearson_consensus():
    a = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pearson_consensus(a, a), torch.ones(4))
    torch.testing.assert_close(pearson_consensus(a, -a), -torch.ones(4))
    torch.testing.assert_close(pearson_consensus(a, 3 * a + 1), torch.ones(4))
    flat = torch.full((4, 5, 5), 0.3)
    assert torch.equal(pearson_consensus(a, flat), torch.zeros(4))
    assert torch.equal(pearson_consensus(flat, flat), torch.zeros(4))
    x, y = a[0].flatten().double(), a[1].flatten().double()
    ref = torch.corrcoef(torch.stack([x, y]))[0, 1].float()
    torch.testing.assert_close(pearson_consensus(a[:1], a[1:2])[0], ref)


def test_admitted_fraction_ramp():
    assert admitted_fraction(0, 0.2, 100) == pytest.approx(0.2)
    assert admitted_fraction(50, 0.2, 100) == pytest.approx(0.6)
    assert admitted_fraction(100, 0.2, 100) == 1.0 and admitted_fraction(10**6, 0.2, 100) == 1.0
    assert admitted_fraction(7, 0.2, 0) == 1.0


def test_selector_quantile_and_rho_min():
    sel = CurriculumSelector(window=8, r0=0.25, rampup_steps=10, rho_min=0.0)
    scores = torch.tensor([-0.5, 0.1, 0.2, 0.3, 0.4])  # passing rho_min: 0.1 0.2 0.3 0.4
    mask = sel.select(scores, step=0)  # r = 0.25 -> 0.75-quantile of [.1,.2,.3,.4] = 0.325
    assert mask.tolist() == [False, False, False, False, True]
    assert sel.last_threshold == pytest.approx(0.325)
    mask = sel.select(torch.tensor([-0.1, 0.05]), step=10)  # r = 1 -> all that pass rho_min
    assert mask.tolist() == [False, True]
    sel2 = CurriculumSelector(window=8, r0=0.25, rampup_steps=10, rho_min=0.35)
    assert sel2.select(scores, step=10).tolist() == [False, False, False, False, True]
    off = CurriculumSelector(window=8, enabled=False)
    assert off.select(scores, step=0).all()  # ablation: everything admitted


def test_masked_quantile_matches_torch_quantile():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 64, 2048):
        for q in (0.0, 0.2, 0.5, 0.8, 1.0):
            values = torch.rand(n, generator=g) * 2 - 1
            valid = values >= torch.rand((), generator=g) - 0.5
            got = masked_quantile(values, valid, q)
            assert got.shape == ()
            if valid.any():
                torch.testing.assert_close(got, torch.quantile(values[valid], q), atol=1e-6, rtol=0)
            else:
                assert got == float("inf")


def test_bank_keeps_non_finite_labels_out():
    bank = PseudoLabelBank(map_size=1, models=("a",), alpha=0.5)
    bank.update(["x", "y"], {"a": torch.tensor([[[0.2]], [[0.4]]])})
    out = bank.update(["x", "y", "z"], {"a": torch.tensor([[[float("nan")]], [[0.8]], [[float("inf")]]])})
    assert out["a"].flatten().tolist() == [pytest.approx(0.2, abs=1e-3), pytest.approx(0.6, abs=1e-3), 0.0]
    y, found = bank.lookup(["x", "y", "z"], "a")
    assert torch.isfinite(y).all() and found.tolist() == [True, True, False]  # z never got a finite label
    assert bank.keys.device.type == "cpu" and bank.main_keys.device.type == "cpu"  # the id index is host data


def test_selector_window_slides():
    sel = CurriculumSelector(window=4, r0=0.5, rampup_steps=100, rho_min=-1.0)
    sel.push(torch.tensor([0.9, 0.9, 0.9, 0.9]))
    sel.push(torch.tensor([0.1, 0.2, 0.3]))  # window now .1 .2 .3 .9 (ring overwrote three 0.9)
    assert sorted(sel.scores.tolist()) == pytest.approx([0.1, 0.2, 0.3, 0.9])
    assert sel.count == 4 and sel.pos == 3
    sel.push(torch.arange(10.0))  # more than window: keeps the last 4
    assert sorted(sel.scores.tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_selector_state_roundtrip():
    sel = CurriculumSelector(window=16, r0=0.2, rampup_steps=5)
    g = torch.Generator().manual_seed(0)
    for t in range(3):
        sel.select(torch.rand(7, generator=g) * 2 - 1, step=t)
    other = CurriculumSelector(window=16, r0=0.2, rampup_steps=5)
    other.load_state_dict(sel.state_dict())
    assert torch.equal(other.scores, sel.scores) and (other.count, other.pos) == (sel.count, sel.pos)
    batch = torch.rand(7, generator=g)
    assert torch.equal(sel.select(batch, 3), other.select(batch, 3))
    with pytest.raises(ValueError):
        CurriculumSelector(window=8).load_state_dict(sel.state_dict())


# ---------------------------------------------------------------- losses (eq. 6-9)
def test_downsample_gt_area():
    gt = torch.zeros(1, 224, 224)
    gt[0, :32, :48] = 1.0  # cell (0,0) full, cell (0,1) half covered
    g = downsample_gt(gt, 7)
    assert g.shape == (1, 7, 7) and g[0, 0, 0] == 1.0 and g[0, 0, 1] == 0.5 and g[0, 1:].sum() == 0


def test_supervised_bce_matches_torch():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 7, 7, generator=g).clamp(0.01, 0.99).requires_grad_()
    gt = (torch.rand(3, 224, 224, generator=g) > 0.5).float()
    ref = F.binary_cross_entropy(p, F.adaptive_avg_pool2d(gt, 7))
    torch.testing.assert_close(supervised_bce(p, gt), ref)
    mask = torch.tensor([True, False, True])
    ref_m = F.binary_cross_entropy(p[mask], F.adaptive_avg_pool2d(gt, 7)[mask])
    loss = supervised_bce(p, gt, mask)
    torch.testing.assert_close(loss, ref_m)
    loss.backward()
    assert p.grad[1].abs().sum() == 0 and p.grad[0].abs().sum() > 0
    # saturated probabilities stay finite
    assert torch.isfinite(supervised_bce(torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[1.0, 0.0]]])))


def test_cross_bce_mask_and_empty():
    p = torch.full((2, 2, 2), 0.7, requires_grad=True)
    y = torch.tensor([[[1.0, 0.0], [0.5, 0.2]], [[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    loss = cross_bce(p, y, torch.tensor([True, False]))
    torch.testing.assert_close(loss, F.binary_cross_entropy(p[:1], y[:1].detach()))
    loss.backward()
    assert y.grad is None  # targets are constants
    p.grad = None
    none = cross_bce(p, y, torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def _reference_infonce(v, e, tau):
    B = v.shape[0]
    logits = torch.empty(B, B)
    for i in range(B):
        for j in range(B):
            logits[i, j] = max(float(v[i, :, y, x] @ e[j]) for y in range(v.shape[2]) for x in range(v.shape[3])) / tau
    i2a = -sum(torch.log_softmax(logits[i], 0)[i] for i in range(B)) / B
    a2i = -sum(torch.log_softmax(logits[:, j], 0)[j] for j in range(B)) / B
    return logits, 0.5 * (i2a + a2i)


def test_infonce_max_pool_reference_and_symmetry():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(3, 4, 2, 2, generator=g), dim=1).requires_grad_()
    e = F.normalize(torch.randn(3, 4, generator=g), dim=1).requires_grad_()
    ref_logits, ref = _reference_infonce(v.detach(), e.detach(), 0.03)
    torch.testing.assert_close(cross_modal_logits(v, e, 0.03), ref_logits)
    loss = infonce_max_pool(v, e, 0.03)
    torch.testing.assert_close(loss, ref.float())
    # symmetric: swapping the roles (transposed logits) gives the same loss
    logits = cross_modal_logits(v, e, 0.03)
    t = torch.arange(3)
    swapped = 0.5 * (F.cross_entropy(logits.t(), t) + F.cross_entropy(logits, t))
    torch.testing.assert_close(loss, swapped)
    loss.backward()
    assert v.grad.abs().sum() > 0 and e.grad.abs().sum() > 0


def test_losses_under_autocast_are_fp32():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 7, 7, generator=g).clamp(0.01, 0.99).bfloat16().requires_grad_()
    v = F.normalize(torch.randn(2, 8, 7, 7, generator=g), dim=1)
    e = F.normalize(torch.randn(2, 8, generator=g), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sup = supervised_bce(p, torch.ones(2, 224, 224))
        cross = cross_bce(p, torch.rand(2, 7, 7, generator=g), torch.tensor([True, True]))
        avc = infonce_max_pool(v, e)
    assert sup.dtype == cross.dtype == avc.dtype == torch.float32
    torch.testing.assert_close(avc, infonce_max_pool(v, e))  # no bf16 logits inside
    (sup + cross).backward()
    assert p.grad is not None and torch.isfinite(p.grad.float()).all()


def test_total_loss_eq9():
    a = {"sup": torch.tensor(1.0), "cross": torch.tensor(2.0), "avc": torch.tensor(4.0)}
    b = {"sup": torch.tensor(0.5), "avc": torch.tensor(2.0)}
    assert total_loss({"a": a, "b": b}, avc_weight=0.5).item() == 1 + 2 + 2 + 0.5 + 1


# ---------------------------------------------------------------- distributed consistency (2 CPU processes)
class _OneProcess:
    num_processes, process_index = 1, 0


def test_single_process_paths():
    bank = PseudoLabelBank(map_size=1, models=("a",))
    out = synced_bank_update(bank, ["x"], {"a": torch.ones(1, 1, 1)}, _OneProcess())
    assert out["a"].item() == 1.0
    t = torch.arange(3)
    assert gather_varlen(_OneProcess(), t) is t and gather_varlen(None, t) is t


def test_accelerate_checkpointing_roundtrip(tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import ProjectConfiguration

    try:
        acc = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=str(tmp_path)))
        bank, sel = PseudoLabelBank(map_size=2, alpha=0.7), CurriculumSelector(window=5, r0=0.3, rampup_steps=4)
        acc.register_for_checkpointing(bank, sel)
        bank.update(["a", "b", "c"], {"a": torch.rand(3, 2, 2), "b": torch.rand(3, 2, 2)})
        sel.select(torch.rand(7), step=1)
        saved_bank, saved_sel = bank.state_dict(), sel.state_dict()
        acc.save_state(str(tmp_path / "ckpt"))
        bank.update(["d"], {"a": torch.rand(1, 2, 2)})
        sel.select(torch.rand(3), step=2)
        acc.load_state(str(tmp_path / "ckpt"))
        for k, v in saved_bank.items():
            w = bank.state_dict()[k]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w
        assert "d" not in bank and len(bank) == 3
        assert torch.equal(sel.scores, saved_sel["scores"]) and (sel.count, sel.pos) == (5, saved_sel["pos"])
    finally:  # do not leak accelerate's process-wide state into other tests
        AcceleratorState._reset_state(True)
        PartialState._reset_state()


def _two_process_worker():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)  # forked from pytest: drop any inherited single-process state
    PartialState._reset_state()
    acc = Accelerator(cpu=True)
    rank = acc.process_index
    assert acc.num_processes == 2
    bank = PseudoLabelBank(map_size=2, alpha=0.5)
    sel = CurriculumSelector(window=6, r0=0.5, rampup_steps=10, rho_min=-1.0)
    ref_bank = PseudoLabelBank(map_size=2, alpha=0.5)
    ref_sel = CurriculumSelector(window=6, r0=0.5, rampup_steps=10, rho_min=-1.0)
    for step in range(3):
        n = [3, 1 if step != 1 else 0]  # uneven batches, including an empty one
        batches = []
        for r in range(2):
            g = torch.Generator().manual_seed(100 * step + r)
            ids = [f"s{(step + i + 2 * r) % 5}" for i in range(n[r])]
            batches.append((ids, {"a": torch.rand(n[r], 2, 2, generator=g), "b": torch.rand(n[r], 2, 2, generator=g)},
                            torch.rand(n[r], generator=g)))
        ids, new, rho = batches[rank]
        out = synced_bank_update(bank, ids, new, acc)
        mask = sel.select(rho, step, accelerator=acc)
        # reference: one process applying the concatenated batch
        all_ids = batches[0][0] + batches[1][0]
        ref = ref_bank.update(all_ids, {m: torch.cat([batches[0][1][m], batches[1][1][m]]) for m in "ab"})
        all_rho = torch.cat([batches[0][2], batches[1][2]])
        ref_mask = ref_sel.select(all_rho, step)
        lo = n[0] if rank else 0
        for m in "ab":
            assert torch.equal(out[m], ref[m][lo:lo + n[rank]])
        assert torch.equal(mask, ref_mask[lo:lo + n[rank]])
    for k, v in bank.state_dict().items():
        w = ref_bank.state_dict()[k]
        assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w
    assert torch.equal(sel.scores, ref_sel.scores)
    # both ranks hold identical copies
    states = [None, None]
    torch.distributed.all_gather_object(states, bank.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in ("keys", "labels", "seen"))


def test_two_process_bank_and_window_consistency():
    import psutil  # noqa: F401 - imported before debug_launcher forks: a first import inside a forked child can hang
    from accelerate import debug_launcher

    debug_launcher(_two_process_worker, num_processes=2)


# ---------------------------------------------------------------- method settings, instrumentation
@pytest.mark.parametrize("normalization", ["unlabeled", "admitted"])
def test_cross_normalization_over_all_unlabeled_samples(normalization):
    """L_cross through compute_losses: 'unlabeled' is the sum over admitted samples / all unlabelled samples of the
    batch (the term grows with the admitted fraction r(t)); 'admitted' is the mean over admitted samples. The
    expected values are computed here from the definitions (eq. 4, 6), independently of the package."""
    from xpl_hf.method import XPLMethod
    from xpl_hf.objective import compute_losses

    assert XPLMethod().cross_normalization == "unlabeled"
    with pytest.raises(ValueError, match="cross_normalization"):
        XPLMethod(cross_normalization="batch")
    g = torch.Generator().manual_seed(4)
    maps_a, maps_b = torch.rand(6, 3, 3, generator=g) * 0.8 + 0.1, torch.rand(6, 3, 3, generator=g) * 0.8 + 0.1
    method = XPLMethod(curriculum_r0=0.5, curriculum_rampup_steps=100, consensus_min=-1.0,
                       cross_normalization=normalization)
    out, batch = _unlabeled_outputs(maps_a, maps_b)
    _, logs = compute_losses(out, batch, method, bank=method.make_bank(3), selector=method.make_selector(),
                             pl_step=0)
    consensus = pearson_consensus(maps_a, maps_b)
    admitted = consensus >= torch.quantile(consensus, 0.5)  # r(0) = 0.5 of the 6 scores in the window
    assert int(admitted.sum()) == 3 and float(logs["admitted_fraction"]) == pytest.approx(0.5)
    per_row = {"a": torch.stack([_bce(p, y) for p, y in zip(maps_a, _soft_label(maps_b))]),  # A learns from Y_B
               "b": torch.stack([_bce(p, y) for p, y in zip(maps_b, _soft_label(maps_a))])}
    for m, losses in per_row.items():
        expected = losses[admitted].sum() / (6 if normalization == "unlabeled" else 3)
        assert float(logs[f"loss_cross_{m}"]) == pytest.approx(float(expected), rel=1e-4), m


def test_term_grad_shares_sum_to_one_and_leave_grads_untouched():
    from xpl_hf.objective import term_grad_shares

    w = torch.nn.Parameter(torch.ones(3))
    terms = {"sup": (w * 2).sum(), "avc": (w * 6).sum()}
    logs = term_grad_shares(terms, [w])
    torch.testing.assert_close(logs["gradshare_sup"] + logs["gradshare_avc"], torch.tensor(1.0))
    torch.testing.assert_close(logs["gradshare_avc"], torch.tensor(0.75))
    assert w.grad is None


# ---------------------------------------------------------------- the method's core, through the trainer's losses
def _unlabeled_outputs(maps_a: torch.Tensor, maps_b: torch.Tensor):
    """Model outputs on an all-unlabelled batch whose maps are leaf tensors (their .grad is the loss's gradient)."""
    from types import SimpleNamespace

    b, h, w = maps_a.shape
    visual, audio = F.normalize(torch.randn(b, 4, h, w), dim=1), F.normalize(torch.randn(b, 4), dim=1)
    out = SimpleNamespace(maps_a=maps_a.clone().requires_grad_(True), maps_b=maps_b.clone().requires_grad_(True),
                          visual_features_a=visual, visual_features_b=visual, audio_embeds_a=audio,
                          audio_embeds_b=audio)
    batch = {"is_labeled": torch.zeros(b, dtype=torch.bool), "ids": [f"u{i}" for i in range(b)],
             "gt_maps": torch.zeros(b, 224, 224)}
    return out, batch


def _bce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise BCE written out from its definition (independent of xpl_hf.losses)."""
    p = p.double().clamp(1e-6, 1 - 1e-6)
    return -(y.double() * p.log() + (1 - y.double()) * (1 - p).log()).mean()


def _soft_label(p: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Eq. 4 from its definition: min-max normalise each map, then sigmoid((P̂ - 0.5) / T)."""
    flat = p.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return torch.sigmoid(((flat - low) / (high - low) - 0.5) / temperature).view_as(p)


@pytest.mark.parametrize("cross_refine", [True, False])
def test_cross_loss_learns_from_the_other_branch(cross_refine):
    """L_cross^A = BCE(P_A, Y_B) and L_cross^B = BCE(P_B, Y_A) (eq. 6); each branch's own label only under the
    no_cross_refine ablation. Y is computed here from the maps, independently of the package."""
    from xpl_hf.method import XPLMethod
    from xpl_hf.objective import compute_losses

    g = torch.Generator().manual_seed(3)
    maps_a, maps_b = torch.rand(4, 3, 3, generator=g) * 0.8 + 0.1, torch.rand(4, 3, 3, generator=g) * 0.8 + 0.1
    method = XPLMethod.from_name("xpl", no_cross_refine=not cross_refine, no_data_selection=True)
    out, batch = _unlabeled_outputs(maps_a, maps_b)
    _, logs = compute_losses(out, batch, method, bank=method.make_bank(3), selector=method.make_selector(),
                             pl_step=0)
    y_a, y_b = _soft_label(maps_a), _soft_label(maps_b)  # first visit: the PL-EMA label is Ŷ itself
    expected = {"a": _bce(maps_a, y_b), "b": _bce(maps_b, y_a)} if cross_refine else \
        {"a": _bce(maps_a, y_a), "b": _bce(maps_b, y_b)}
    other = {"a": _bce(maps_a, y_a), "b": _bce(maps_b, y_b)} if cross_refine else \
        {"a": _bce(maps_a, y_b), "b": _bce(maps_b, y_a)}
    for m in "ab":
        assert abs(float(expected[m]) - float(other[m])) > 0.05  # the two readings differ: the test can tell them apart
        assert float(logs[f"loss_cross_{m}"]) == pytest.approx(float(expected[m]), rel=1e-4), m
    assert method.teachers == ({"a": "b", "b": "a"} if cross_refine else {"a": "a", "b": "b"})


def test_rejected_samples_contribute_nothing():
    """Samples below ρ_min (eq. 2) or below the admission quantile q(t) (eq. 3) get zero gradient from L_cross;
    admitted ones do not."""
    from xpl_hf.method import XPLMethod
    from xpl_hf.objective import compute_losses

    g = torch.Generator().manual_seed(4)
    base = torch.rand(6, 3, 3, generator=g) * 0.8 + 0.1
    noise = torch.rand(6, 3, 3, generator=g) * 0.8 + 0.1
    # consensus per row: rows 0-1 anti-correlated (< ρ_min = 0), rows 2-5 increasingly correlated
    mix = torch.tensor([-1.0, -0.8, 0.2, 0.5, 0.8, 1.0]).view(-1, 1, 1)
    maps_b = torch.where(mix < 0, 1.0 - base, mix * base + (1 - mix) * noise)
    method = XPLMethod(curriculum_r0=0.5, curriculum_rampup_steps=100, avc_weight=0.0)
    out, batch = _unlabeled_outputs(base, maps_b)
    loss, logs = compute_losses(out, batch, method, bank=method.make_bank(3), selector=method.make_selector(),
                                pl_step=0)
    consensus = pearson_consensus(base, maps_b)
    assert (consensus[:2] < 0).all() and (consensus[2:] > 0).all()
    loss.backward()
    grad_rows = out.maps_a.grad.abs().flatten(1).sum(1) + out.maps_b.grad.abs().flatten(1).sum(1)
    # window = the 6 scores; the 4 passing ρ_min are rows 2-5; r(0) = 0.5 admits the top half of them: rows 4, 5
    admitted = consensus >= torch.quantile(consensus[2:], 0.5)
    assert admitted.tolist() == [False, False, False, False, True, True]
    assert (grad_rows[~admitted] == 0).all(), grad_rows  # rejected: nothing, exactly
    assert (grad_rows[admitted] > 0).all()
    assert float(logs["admitted_fraction"]) == pytest.approx(2 / 6)


def test_curriculum_admits_in_consensus_order():
    """At every r(t) the admitted samples are exactly the highest-consensus ones, and the set only grows with t."""
    g = torch.Generator().manual_seed(5)
    scores = torch.rand(40, generator=g) * 2 - 1
    previous = None
    for step in (0, 25, 50, 75, 100):
        sel = CurriculumSelector(window=64, r0=0.2, rampup_steps=100, rho_min=0.0)
        admitted = sel.select(scores, step)
        if admitted.any():
            assert scores[admitted].min() >= scores[~admitted].max()  # nothing admitted ranks below a rejected one
        passing = int((scores >= 0).sum())
        expected = math.floor(admitted_fraction(step, 0.2, 100) * (passing - 1)) + 1  # the top r(t) of the passing
        assert int(admitted.sum()) == expected, (step, int(admitted.sum()), expected)
        if previous is not None:
            assert bool((admitted | ~previous).all())  # a superset of the last step's admitted set
        previous = admitted
    assert int(previous.sum()) == int((scores >= 0).sum())  # r = 1: every sample passing ρ_min


def test_pseudo_label_dynamics_measure_what_pl_ema_and_cross_refinement_change():
    """pl_ema_shift = mean |Y_t - Ŷ_t|: 0 on a first visit, α·|Y_{t-1} - Ŷ_t| on a revisit (eq. 5);
    pl_teacher_gap = mean |Y_A - Y_B|. Computed here from the definitions, independently of the package."""
    from xpl_hf.method import XPLMethod
    from xpl_hf.objective import compute_losses

    g = torch.Generator().manual_seed(6)
    first_a, first_b = torch.rand(4, 3, 3, generator=g) * 0.8 + 0.1, torch.rand(4, 3, 3, generator=g) * 0.8 + 0.1
    again_a, again_b = torch.rand(4, 3, 3, generator=g) * 0.8 + 0.1, torch.rand(4, 3, 3, generator=g) * 0.8 + 0.1
    method = XPLMethod.from_name("xpl", no_data_selection=True)  # α = 0.7
    bank = method.make_bank(3)
    out, batch = _unlabeled_outputs(first_a, first_b)
    _, logs = compute_losses(out, batch, method, bank=bank, selector=method.make_selector(), pl_step=0)
    assert float(logs["pl_ema_shift_a"]) == 0.0 and float(logs["pl_ema_shift_b"]) == 0.0
    first_gap = (_soft_label(first_a) - _soft_label(first_b)).abs().mean()
    assert float(logs["pl_teacher_gap"]) == pytest.approx(float(first_gap), abs=1e-3)
    out, batch = _unlabeled_outputs(again_a, again_b)  # the same ids: a revisit
    _, logs = compute_losses(out, batch, method, bank=bank, selector=method.make_selector(), pl_step=0)
    for m, first, again in (("a", first_a, again_a), ("b", first_b, again_b)):
        shift = 0.7 * (_soft_label(first) - _soft_label(again)).abs().mean()
        assert float(shift) > 0.05  # the two visits differ: a zero log would fail
        assert float(logs[f"pl_ema_shift_{m}"]) == pytest.approx(float(shift), abs=2e-3), m  # fp16 bank
    truth = torch.zeros(4, 224, 224)
    truth[:, :112, :112] = 1.0  # the top-left quarter: at 3 x 3, cell (0, 0) is full, (0, 1) and (1, 0) ~1/2 covered
    from xpl_hf.objective import pseudo_label_quality

    y = {"a": torch.zeros(4, 3, 3)}
    error = pseudo_label_quality(y, truth, torch.ones(4, dtype=torch.bool))["pl_error_a"]
    cells = F.interpolate(truth[:, None], size=(3, 3), mode="area")[:, 0]
    assert float(error) == pytest.approx(float(cells.mean()), abs=1e-6) and float(error) > 0.2
    y_a = 0.7 * _soft_label(first_a) + 0.3 * _soft_label(again_a)
    y_b = 0.7 * _soft_label(first_b) + 0.3 * _soft_label(again_b)
    assert float(logs["pl_teacher_gap"]) == pytest.approx(float((y_a - y_b).abs().mean()), abs=2e-3)
