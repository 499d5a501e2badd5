"""The calibration activations passed from block to block, within a memory budget.

    acts = Activations(budget_bytes=4 << 30, spill_dir=work_dir / "activations",
                       store_dtype=None, store_device="cpu", compute_device="cuda")
    acts.append(hidden)          # batch 0, 1, ... (the first block's inputs)
    x = acts[b]                  # on the compute device, in the dtype it was computed in
    acts[b] = block_output       # replaced in place as each batch leaves the block

Each batch is held on `store_device` (the CPU when blocks compute on a GPU, so GPU memory
holds one block and one batch) in `store_dtype` (None: as computed: exact; bfloat16 halves the
memory at a rounding of the hidden states, opt-in). Batches past `budget_bytes` are written to
`spill_dir` (one safetensors file each, read back bit-exact) and read again when needed, so
memory stops growing with the calibration set beyond the budget; without a spill_dir the
budget is not enforced.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn


class Activations:
    def __init__(self, budget_bytes: int | None = None, spill_dir: Path | None = None,
                 store_dtype: torch.dtype | None = None, store_device: torch.device | str | None = None,
                 compute_device: torch.device | str | None = None):
        self.budget = budget_bytes
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.store_dtype, self.store_device = store_dtype, store_device
        self.compute_device = compute_device
        self._mem: dict[int, Tensor] = {}
        self._dtype: dict[int, torch.dtype] = {}  # the dtype each batch was computed in
        self._n = 0
        self.spilled = 0  # batches written to disk so far (a count, for reports and tests)

    def __len__(self) -> int:
        return self._n

    def _bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._mem.values())

    def _path(self, b: int) -> Path:
        assert self.spill_dir is not None
        return self.spill_dir / f"batch-{b:06d}.safetensors"

    def __setitem__(self, b: int, t: Tensor) -> None:
        if not 0 <= b < self._n:
            raise IndexError(b)
        self._dtype[b] = t.dtype
        t = t.detach()
        if self.store_dtype is not None and t.is_floating_point():
            t = t.to(self.store_dtype)
        if self.store_device is not None:
            t = t.to(self.store_device)
        self._mem.pop(b, None)
        size = t.numel() * t.element_size()
        if self.spill_dir is not None and self.budget is not None and self._bytes() + size > self.budget:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            save_file({"x": t.contiguous().cpu()}, str(self._path(b)))
            self.spilled += 1
        else:
            self._mem[b] = t
            if self.spill_dir is not None:
                self._path(b).unlink(missing_ok=True)

    def __getitem__(self, b: int) -> Tensor:
        if not 0 <= b < self._n:
            raise IndexError(b)
        t = self._mem.get(b)
        if t is None:
            t = load_file(str(self._path(b)))["x"]
        return t.to(device=self.compute_device or t.device, dtype=self._dtype[b])

    def append(self, t: Tensor) -> None:
        self._n += 1
        self[self._n - 1] = t

    def tensors(self) -> list[Tensor]:
        return [self[b] for b in range(self._n)]

    def clear(self) -> None:
        self._mem.clear()
        if self.spill_dir is not None and self.spill_dir.is_dir():
            for f in self.spill_dir.glob("batch-*.safetensors"):
                f.unlink()


def parked_within(budget: int, block: nn.Module, x: Tensor, n_batches: int) -> int | None:
    """How many batches the staged loop may keep parked within `budget` bytes (None: all), by a
    rough estimate: a parked batch keeps about the outputs of every Linear of the block plus a
    few hidden-sized tensors, in the dtype of `x` (one batch's block input)."""
    width = sum(m.out_features for m in block.modules() if isinstance(m, nn.Linear)) + 4 * x.shape[-1]
    per_batch = x.numel() // x.shape[-1] * width * x.element_size()
    limit = max(1, budget // max(1, per_batch))
    return None if limit >= n_batches else limit
