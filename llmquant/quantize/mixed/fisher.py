"""How much the model's loss cares about each output channel of each Linear: the diagonal
empirical Fisher of the Linears' outputs, from a streamed forward and backward pass.

For a Linear with outputs y_t (token t) and the per-sequence loss L = Σ_t CE(t) (next-token
cross-entropy on calibration text), the returned vector for that Linear is

    G_i = mean over tokens of (∂L/∂y_{t,i})²                 (one float per output channel)

A small perturbation Δy of the outputs then raises the mean per-token loss by about
½ Σ_i G_i E_t[Δy_{t,i}²] (second order; the Fisher stands in for the loss Hessian, as in
BRECQ's and SqueezeLLM's sensitivity measures). Unlike the layer's own output error, this sees
what happens *after* the layer: a residual-stream writer whose error the following blocks
amplify gets a large G, a Linear whose error the model ignores a small one.

Memory is planned for 7B models on 24 GB: the pass goes block by block like the sequential loop.
Forward: each block's weights are loaded (residency), its inputs are kept (in `Activations`,
spilling to disk past the budget: n_samples x n_blocks x seqlen x hidden values), then it is let
go. Backward: from the last block to the first, each block is loaded again, recomputed from its
kept input with autograd on, and the gradient of its output is pulled back to its input;
hooks on the Linears' outputs add up the squared gradients. Only one block's weights and one
sequence's activations with their autograd graph live at a time; weight gradients are never
formed (torch.autograd.grad asks for the input's only).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...progress import NULL_PROGRESS, Progress
from ..activations import Activations
from ..blockrun import _first
from ..capture import capture_inputs
from ..gptq.quantizer import _final_norm, module_name
from ..lazy import Blocks, EagerBlocks
from ..targets import find_blocks


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """The module's parameters without requires_grad while inside (no weight gradients)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def sequence_loss(logits: Tensor, ids: Tensor) -> Tensor:
    """Σ over positions of the next-token cross-entropy of one batch (logits [B, T, V], ids [B, T])."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                           reduction="sum")


def output_fisher(model: nn.Module, input_ids: Tensor, names: set[str], device: str | torch.device = "cpu",
                  residency: Blocks | None = None, progress: Progress = NULL_PROGRESS,
                  spill_dir: Path | None = None, budget_bytes: int | None = None,
                  store_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """{Linear name in `names`: G (float32 [out_features], on the CPU)} over the rows of
    `input_ids` (see the module docstring). Linears never reached get no entry."""
    residency = residency or EagerBlocks()
    device = torch.device(device)
    prefix, blocks = find_blocks(model)
    n, seqlen = input_ids.shape
    with residency.outer(model):
        first, kwargs = capture_inputs(model, blocks[0], input_ids, 1, device,
                                       None if device.type == "cpu" else torch.device("cpu"))
    kept = Activations(budget_bytes, spill_dir, store_dtype, None if device.type == "cpu" else "cpu", device)
    sums: dict[str, Tensor] = {}
    with progress.task("sensitivity: output gradients (forward, backward)", total=2 * len(blocks)) as advance:
        hidden = first
        for i, block in enumerate(blocks):  # forward: keep every block's inputs
            residency.load(f"{prefix}.{i}", block, device)
            with torch.no_grad():
                for b in range(n):
                    kept.append(hidden[b])
                    hidden[b] = _first(block(hidden[b].to(device), *kwargs[b]["args"], **kwargs[b]["kwargs"]))
            residency.unload(f"{prefix}.{i}", block)
            advance(1, note=f"block {i}: forward")
        grads = _head_gradients(model, hidden, input_ids, device, residency)
        del hidden
        for i in reversed(range(len(blocks))):  # backward: one block at a time
            block = blocks[i]
            residency.load(f"{prefix}.{i}", block, device)
            hooks = _gradient_hooks(block, f"{prefix}.{i}", names, sums)
            try:
                with _frozen(block):
                    for b in range(n):
                        x = kept[i * n + b].detach().requires_grad_(True)
                        with torch.enable_grad():
                            y = _first(block(x, *kwargs[b]["args"], **kwargs[b]["kwargs"]))
                            (gx,) = torch.autograd.grad(y, x, grads[b].to(y.dtype))
                        grads[b] = gx.detach()
            finally:
                for h in hooks:
                    h.remove()
                residency.unload(f"{prefix}.{i}", block)
            advance(1, note=f"block {i}: backward")
    kept.clear()
    return {k: (v / (n * seqlen)).float().cpu() for k, v in sums.items()}


def _head_gradients(model: nn.Module, hidden: list[Tensor], input_ids: Tensor, device: torch.device,
                    residency: Blocks) -> list[Tensor]:
    """∂L/∂(last block's output) per sequence, through the final norm and the output head."""
    head, norm = model.get_output_embeddings(), _final_norm(model)
    if head is None or norm is None:
        raise ValueError(f"cannot find the final norm and output head of {type(model).__name__}")
    names = [module_name(model, norm), module_name(model, head)]
    residency.load(names[0], norm, device)
    residency.load(names[1], head, device)
    out = []
    try:
        with _frozen(norm), _frozen(head), torch.enable_grad():
            for b, h in enumerate(hidden):
                h = h.detach().to(device).requires_grad_(True)
                loss = sequence_loss(head(norm(h)), input_ids[b:b + 1].to(device))
                (g,) = torch.autograd.grad(loss, h)
                out.append(g.detach())
    finally:
        residency.unload(names[0], norm)
        residency.unload(names[1], head)
    return out


def _gradient_hooks(block: nn.Module, name: str, names: set[str], sums: dict[str, Tensor]) -> list:
    """Forward hooks on the block's Linears in `names` that add Σ_tokens (∂L/∂y)² into sums[name]."""
    handles = []
    for sub, m in block.named_modules():
        full = f"{name}.{sub}"
        if not isinstance(m, nn.Linear) or full not in names:
            continue

        def on_output(module, args, out, full=full):
            def on_grad(g: Tensor) -> None:
                sq = g.detach().double().pow(2).reshape(-1, g.shape[-1]).sum(0)
                sums[full] = sums[full] + sq if full in sums else sq
            if out.requires_grad:
                out.register_hook(on_grad)

        handles.append(m.register_forward_hook(on_output))
    return handles
