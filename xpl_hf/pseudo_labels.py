"""Soft pseudo-labels and the PL-EMA memory bank for XPL (docs/method.md, eq. 4-5).

Model m's soft pseudo-label for an unlabeled sample is its own (detached) map, min-max normalised per sample
and sharpened (eq. 4). Labels are smoothed over visits with an exponential moving average kept in a memory
bank keyed by sample id (eq. 5). In XPL the label of model B supervises model A and vice versa (eq. 6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from .distributed import gather_host, gather_varlen, host_sizes
from .maps import minmax_normalize  # P̂ of eq. 4; a flat map becomes all zeros ("no confident location")

__all__ = [
    "sharpen", "soft_pseudo_labels", "hard_pseudo_labels", "hash_ids", "PseudoLabelBank",
    "synced_bank_update",
]


def sharpen(p_hat: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Sharpening (eq. 4): Ŷ = sigmoid((P̂ - 0.5) / T).

    Args:
        p_hat: (B, h, w) normalised map in [0, 1].
        temperature: T > 0 (default 0.1). ``None`` or ``0`` disables sharpening (the "without
            sharpening" ablation) and returns ``p_hat`` unchanged.
    """
    if not temperature:
        return p_hat
    if temperature < 0:
        raise ValueError(f"sharpening temperature must be >= 0, got {temperature}")
    return torch.sigmoid((p_hat - 0.5) / temperature)


@torch.no_grad()
def soft_pseudo_labels(maps: torch.Tensor, temperature: float | None = 0.1) -> torch.Tensor:
    """Soft pseudo-labels Ŷ = sharpen(minmax_normalize(P.detach()), T) (eq. 4).  (B, h, w) -> (B, h, w) float32."""
    return sharpen(minmax_normalize(maps.detach().float()), temperature)


@torch.no_grad()
def hard_pseudo_labels(maps: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard pseudo-labels for the ``hard_pl`` baseline: 1[minmax_normalize(P.detach()) >= threshold].

    (B, h, w) -> (B, h, w) float32 in {0, 1}. A flat map gives all zeros (threshold > 0).
    """
    return (minmax_normalize(maps.detach().float()) >= threshold).float()


def hash_ids(ids: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """Stable 64-bit keys for sample ids: the 8-byte blake2b digest of the utf-8 id, as int64 (B,).

    Stable across processes and runs (unlike Python's ``hash``), so every rank and every checkpoint agree.
    A tensor is taken as already-hashed keys. Collision probability for n ids is about n² / 2^65
    (≈ 6e-10 for 144k ids).
    """
    if isinstance(ids, torch.Tensor):
        return ids.to(torch.int64).flatten()
    keys = [int.from_bytes(hashlib.blake2b(str(i).encode("utf-8"), digest_size=8).digest(), "little", signed=True)
            for i in ids]
    return torch.tensor(keys, dtype=torch.int64)


class PseudoLabelBank:
    """PL-EMA memory bank (eq. 5): Y_t = α·Y_{t-1} + (1 - α)·Ŷ_t per unlabeled sample id and per model.

    The first visit of (id, model) sets Y = Ŷ; α = 0 disables the EMA (Y = Ŷ every visit). Labels are stored
    at the map's resolution in fp16: ``labels`` (capacity, M, h, w); ids are stored as 64-bit hashes
    (``hash_ids``) with a sorted index for vectorised lookup, so there is no per-id Python object:
    144,000 ids x 2 models x 7x7 ≈ 28 MB of labels + ≈ 3.5 MB of index (see ``nbytes()``).

    Where things live: the labels and the first-visit flags (``labels``, ``seen``) on ``device`` (the model's:
    ``bank.to(device)``); the id index (``keys``, ``main_*``, ``pending_*``) on the host, because sample ids are host
    data. A step's lookups and updates therefore move only row indices host -> device and never read device data
    on the host: the bank costs no device synchronisation.

    The index has two sorted levels: new keys enter a small ``pending`` level (cheap to re-sort) that is
    merged into the ``main`` level every ``merge_every`` new ids, so a step costs O(B log n), and the O(n)
    merge is amortised. Storage grows by 1.25x when full (pass ``capacity`` to preallocate).
    ``state_dict()`` keeps only the used rows and ``load_state_dict()`` restores them bit-exactly (the trainer's
    checkpoints store them as safetensors). α is a setting, not state: the bank holds the value it was built with
    (``XPLMethod.make_bank``) and a checkpoint never changes it. In multi-process training every rank keeps a full
    copy and applies the same (gathered) updates: see ``synced_bank_update``.
    """

    def __init__(self, map_size: int | tuple[int, int], models: Sequence[str] = ("a", "b"), alpha: float = 0.7,
                 capacity: int = 0, device: torch.device | str = "cpu", merge_every: int = 8192):
        self.map_size = (map_size, map_size) if isinstance(map_size, int) else tuple(map_size)
        self.models = tuple(models)
        if not 0.0 <= alpha < 1.0:  # the rule of this setting lives here only
            raise ValueError(f"pl_ema_alpha {alpha!r}: must be in [0, 1) (α of PL-EMA, eq. 5).")
        self.alpha = alpha
        self.device = torch.device(device)
        self.merge_every = merge_every
        self.size = 0
        self._alloc(max(int(capacity), 0))

    # ---- storage -------------------------------------------------------------------------------------
    _TENSORS = ("labels", "seen", "keys", "main_keys", "main_rows", "pending_keys", "pending_rows")
    _ON_DEVICE = ("labels", "seen")

    def _alloc(self, capacity: int) -> None:
        M, (h, w), dev = len(self.models), self.map_size, self.device
        self.labels = torch.zeros(capacity, M, h, w, dtype=torch.float16, device=dev)  # Y
        self.seen = torch.zeros(capacity, M, dtype=torch.bool, device=dev)  # first visit done?
        self.keys = torch.zeros(capacity, dtype=torch.int64)  # row -> key (insertion order), host
        empty = torch.zeros(0, dtype=torch.int64)
        self.main_keys, self.main_rows = empty, empty  # sorted keys and their rows (host)
        self.pending_keys, self.pending_rows = empty, empty  # recent inserts, sorted, not yet merged (host)

    def _grow(self, needed: int) -> None:
        cap = self.labels.shape[0]
        if needed <= cap:
            return
        new_cap = max(needed, int(cap * 1.25) + 1, 1024)
        for name in ("labels", "seen", "keys"):
            old = getattr(self, name)
            new = old.new_zeros((new_cap, *old.shape[1:]))
            new[: self.size] = old[: self.size]
            setattr(self, name, new)

    def nbytes(self) -> int:
        """Bytes held by the bank (allocated capacity: labels + first-visit flags + id keys + sorted index)."""
        return sum(t.element_size() * t.numel() for t in (getattr(self, n) for n in self._TENSORS))

    def __len__(self) -> int:
        return self.size

    def __contains__(self, sample_id: str) -> bool:
        return bool(self._find(hash_ids([sample_id]))[1][0])

    def to(self, device: torch.device | str) -> PseudoLabelBank:
        """Move the labels and flags to ``device`` (the index stays on the host)."""
        self.device = torch.device(device)
        for name in self._ON_DEVICE:
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    def _flat(self, rows: torch.Tensor, m: int) -> torch.Tensor:
        """Index of (row, model m) in the flattened (capacity * M) label/flag storage."""
        return rows * len(self.models) + m

    def _to_device(self, index: torch.Tensor) -> torch.Tensor:
        return index.to(self.device, non_blocking=True)

    # ---- index (host) ------------------------------------------------------------------------------------
    def _find(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (N,) int64 on the host -> (rows (N,), found (N,) bool); rows are 0 where not found."""
        rows = torch.zeros_like(keys)
        found = torch.zeros_like(keys, dtype=torch.bool)
        for sk, sr in ((self.main_keys, self.main_rows), (self.pending_keys, self.pending_rows)):
            n = sk.numel()
            if n == 0:
                continue
            pos = torch.searchsorted(sk, keys).clamp_max(n - 1)
            hit = sk[pos] == keys
            rows = torch.where(hit, sr[pos], rows)
            found |= hit
        return rows, found

    def _insert(self, keys: torch.Tensor) -> None:
        """Append new unique keys (K,) as rows size..size+K-1 and add them to the pending index level."""
        k = keys.numel()
        if k == 0:
            return
        self._grow(self.size + k)
        rows = torch.arange(self.size, self.size + k)
        self.keys[self.size:self.size + k] = keys
        self.size += k
        pk, order = torch.sort(torch.cat([self.pending_keys, keys]))
        self.pending_keys, self.pending_rows = pk, torch.cat([self.pending_rows, rows])[order]
        if self.pending_keys.numel() >= self.merge_every:
            self._merge()

    def _merge(self) -> None:
        """Fold the pending level into the main level (one O(n log n) sort, every ``merge_every`` inserts)."""
        mk, order = torch.sort(torch.cat([self.main_keys, self.pending_keys]))
        self.main_keys, self.main_rows = mk, torch.cat([self.main_rows, self.pending_rows])[order]
        self.pending_keys, self.pending_rows = self.pending_keys[:0], self.pending_rows[:0]

    @staticmethod
    def _host_keys(ids: Sequence[str] | torch.Tensor) -> torch.Tensor:
        keys = hash_ids(ids)
        return keys if keys.device.type == "cpu" else keys.cpu()  # device keys (not used by the trainer) sync here

    # ---- eq. 5 -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, ids: Sequence[str] | torch.Tensor, new: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply Y_t = α·Y_{t-1} + (1 - α)·Ŷ_t for a batch and return the smoothed labels (eq. 5).

        Args:
            ids: B sample ids (str) or their ``hash_ids`` keys (B,) int64 (on the host: no synchronisation).
            new: {model: Ŷ (B, h, w)} for any subset of ``self.models`` (usually all).
        Returns:
            {model: Y_t (B, h, w) float32 on Ŷ's device}. Y_t is computed in fp32 from the stored fp16 Y_{t-1}
            and then stored in fp16. If an id occurs several times in one call, the last occurrence's Ŷ is
            the one applied and all occurrences get the same Y_t. A sample whose Ŷ is not finite leaves its
            entry unchanged (and gets the stored Y back), so a diverged step cannot poison the bank.
        """
        alpha = self.alpha
        keys = self._host_keys(ids)
        B = keys.numel()
        uniq, inverse = torch.unique(keys, return_inverse=True)
        last = torch.full((uniq.numel(),), -1, dtype=torch.int64)
        last = last.scatter_reduce(0, inverse, torch.arange(B), reduce="amax")  # last occurrence
        rows, found = self._find(uniq)
        if not bool(found.all()):  # host booleans
            self._insert(uniq[~found])
            rows, found = self._find(uniq)
        labels = self.labels.view(-1, *self.map_size)  # (capacity * M, h, w) view
        seen_flat = self.seen.view(-1)
        last_d, inverse_d = self._to_device(last), self._to_device(inverse)
        out = {}
        for name, y_hat in new.items():
            if y_hat.shape != (B, *self.map_size):
                raise ValueError(f"labels for model {name!r}: expected {(B, *self.map_size)}, got {tuple(y_hat.shape)}")
            idx = self._to_device(self._flat(rows, self.models.index(name)))
            y_hat_u = y_hat.detach().to(self.device, torch.float32).index_select(0, last_d)  # (U, h, w)
            prev = labels.index_select(0, idx).float()
            seen = seen_flat.index_select(0, idx).view(-1, 1, 1)
            y = torch.where(seen, alpha * prev + (1.0 - alpha) * y_hat_u, y_hat_u)
            finite = torch.isfinite(y_hat_u).flatten(1).all(1)  # a non-finite Ŷ (diverged maps) is not stored
            y = torch.where(finite.view(-1, 1, 1), y, prev)
            labels.index_copy_(0, idx, y.half())
            seen_flat.index_copy_(0, idx, seen.view(-1) | finite)
            out[name] = y.index_select(0, inverse_d).to(y_hat.device)
        return out

    @torch.no_grad()
    def lookup(self, ids: Sequence[str] | torch.Tensor, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored Y for ``ids``: ((B, h, w) float32, found (B,) bool) on ``device``; zeros where never visited."""
        keys = self._host_keys(ids)
        if self.size == 0:
            return (torch.zeros(keys.numel(), *self.map_size, device=self.device),
                    torch.zeros(keys.numel(), dtype=torch.bool, device=self.device))
        rows, found = self._find(keys)
        idx = self._to_device(self._flat(rows, self.models.index(model)))
        found = self._to_device(found) & self.seen.view(-1).index_select(0, idx)
        y = self.labels.view(-1, *self.map_size).index_select(0, idx).float()
        return torch.where(found.view(-1, 1, 1), y, torch.zeros_like(y)), found

    # ---- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        n = self.size
        return {"keys": self.keys[:n].cpu().clone(), "labels": self.labels[:n].cpu().clone(),
                "seen": self.seen[:n].cpu().clone(), "models": list(self.models), "map_size": list(self.map_size)}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["models"]) != self.models or tuple(state["map_size"]) != self.map_size:
            raise ValueError(f"bank layout mismatch: checkpoint models={state['models']} map_size={state['map_size']}, "
                             f"bank models={list(self.models)} map_size={list(self.map_size)}")
        keys = state["keys"].to("cpu", torch.int64)
        n = keys.numel()
        self.size = 0
        self._alloc(max(n, self.labels.shape[0]))
        self.labels[:n] = state["labels"].to(self.device, torch.float16)
        self.seen[:n] = state["seen"].to(self.device, torch.bool)
        self.keys[:n] = keys
        self.main_keys, order = torch.sort(keys)
        self.main_rows = order.to(torch.int64)
        self.size = n


@torch.no_grad()
def synced_bank_update(bank: PseudoLabelBank, ids: Sequence[str] | torch.Tensor, new: Mapping[str, torch.Tensor],
                       accelerator=None) -> dict[str, torch.Tensor]:
    """``bank.update`` with the updates of all processes, so every rank's bank copy stays identical.

    Each rank hashes its ids; the keys and batch sizes are all-gathered on the host (``gather_host``), the Ŷ of
    each model on the device (``gather_varlen`` with the host sizes); all ranks apply the identical global update
    in rank order and each returns the smoothed labels of its own batch: {model: (B_local, h, w) float32}. No
    device data is read on the host. ``accelerator=None`` or one process is a plain ``bank.update``; with several
    processes the result equals one process applying the concatenated batch (ranks in order).
    """
    if accelerator is None or accelerator.num_processes == 1:
        return bank.update(ids, new)
    keys = PseudoLabelBank._host_keys(ids)
    sizes = host_sizes(accelerator, keys.numel())
    start = sum(sizes[: accelerator.process_index])
    all_keys = gather_host(accelerator, keys)
    all_new = {m: gather_varlen(accelerator, y.detach().float(), sizes) for m, y in new.items()}
    out = bank.update(all_keys, all_new)
    return {m: out[m][start:start + keys.numel()].to(y.device) for m, y in new.items()}
