"""Capturing the inputs of a model's first decoder block: the hidden states and the other
arguments the block is called with (attention mask, position embeddings / ids), per batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class _StopForward(Exception):
    pass


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _share(prev: Any, cur: Any) -> Any:
    """`cur` with tensors equal to those at the same place in `prev` replaced by prev's (memory)."""
    if isinstance(cur, Tensor) and isinstance(prev, Tensor):
        same = prev.shape == cur.shape and prev.dtype == cur.dtype and prev.device == cur.device and torch.equal(prev, cur)
        return prev if same else cur
    if isinstance(cur, (tuple, list)) and isinstance(prev, type(cur)) and len(prev) == len(cur):
        return type(cur)(_share(p, c) for p, c in zip(prev, cur))
    if isinstance(cur, dict) and isinstance(prev, dict):
        return {k: _share(prev.get(k), v) for k, v in cur.items()}
    return cur


def capture_inputs(model: nn.Module, first_block: nn.Module, input_ids: Tensor, batch_size: int,
                   device: torch.device, hidden_device: torch.device | None = None) -> tuple[list[Tensor], list[dict]]:
    """Run the model up to its first block on each batch; return that block's inputs.

    A pre-hook records the block's arguments and stops the forward, so nothing past the
    embeddings (and the mask / rotary set-up) is computed. The block's other arguments go to
    `device`, its hidden states to `hidden_device` (default `device`; the CPU when the block
    runs on a GPU, which then holds one batch at a time).
    """
    captured: list[tuple[tuple, dict]] = []

    def hook(module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    embed_device = model.get_input_embeddings().weight.device
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    inputs, kwargs_list = [], []
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                batch = input_ids[start:start + batch_size].to(embed_device)
                try:
                    model(input_ids=batch, use_cache=False)
                except _StopForward:
                    pass
                if not captured:
                    raise RuntimeError("the model's forward never reached its first decoder block")
                args, kw = captured.pop()
                kw = dict(kw)
                hidden = args[0] if args else kw.pop("hidden_states")
                rest = {"args": _to(tuple(args[1:]), device), "kwargs": _to(kw, device)}
                if kwargs_list:
                    rest = _share(kwargs_list[-1], rest)
                inputs.append(hidden.to(hidden_device or device))
                kwargs_list.append(rest)
    finally:
        handle.remove()
    return inputs, kwargs_list
