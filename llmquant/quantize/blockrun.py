"""The types a block handler and the sequential loop share (see sequential.py for the loop):
the input groups of a block, the per-block run, what a solved block leaves, and the handler
protocol."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _input_of(args: tuple, kwargs: dict) -> Tensor:
    if args:
        return args[0]
    for key in ("input", "hidden_states", "x"):
        if key in kwargs:
            return kwargs[key]
    raise RuntimeError("cannot find the input tensor of a hooked module")



@dataclass(frozen=True)
class InputGroup:
    """Target modules of a block that receive the same input tensor, in first-call order."""

    names: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    called: bool = True  # False: the probe forward never called them (no statistics will come)


@dataclass
class BlockRun:
    index: int
    name: str
    block: nn.Module
    groups: list[InputGroup]
    inputs: list[Tensor]  # the block's input hidden states per batch (on `device`); the final
    #                       pass replaces each batch's entry with its output once it is done
    kwargs: list[dict]  # the block's other arguments, per batch
    device: torch.device
    note: Callable[[str], None] = lambda text: None
    autocast: torch.dtype | None = None  # block forwards run under torch.autocast in this dtype

    def compute(self):
        """The context every block forward runs in (autocast is per thread: enter it in the thread)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def forward(self, b: int, block: nn.Module | None = None, x: Tensor | None = None) -> Tensor:
        """The block's output for batch `b` (no hooks of this loop involved); `x`: other hidden
        states for that batch (e.g. a second stream's) in place of `inputs[b]`."""
        x = self.inputs[b] if x is None else x
        with torch.no_grad(), self.compute():
            return _first((block or self.block)(x, *self.kwargs[b]["args"], **self.kwargs[b]["kwargs"]))


@dataclass
class BlockResult:
    """What a solved block leaves: `state` (tensors, or a function making them, called only when
    a work_dir is set) to restore the block later, and its report rows."""

    state: dict[str, Tensor] | Callable[[], dict[str, Tensor]]
    report: list[dict] = field(default_factory=list)


class BlockHandler(Protocol):
    state_key: str

    def targets(self, index: int, name: str, block: nn.Module) -> dict[str, nn.Module]: ...

    def begin_block(self, run: BlockRun) -> None: ...

    def observe(self, group: InputGroup, x: Tensor) -> None: ...

    def solve(self, group: InputGroup) -> None: ...

    def finish_block(self, run: BlockRun) -> BlockResult: ...

    def restore_block(self, run: BlockRun, state: dict[str, Tensor]) -> None: ...

