"""torch.export programs: how torch variants are captured, saved and loaded.

Every torch variant (the fp32 baseline too) is saved with `torch.export.save` as one `.pt2`
file holding its graph and its tensors (INT8 weights stay INT8; torchao's Int8Tensor weights
are serialised as such), and loaded back with `torch.export.load` before it is validated. The
batch dimension is dynamic, so one program serves batch 1 and the throughput batch.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

MAX_BATCH = 1 << 16


def dynamic_batch(example: tuple[torch.Tensor, ...]) -> tuple[dict, ...]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return tuple({0: batch} for _ in example)


def example_inputs(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Two samples: a batch of one would be specialised to a constant by torch.export. Copies, not
    views: torch.export.save stores the example inputs, and a view would drag the whole dataset's
    storage into every saved program."""
    return tuple(x[:2].clone() for x in inputs)


def export(module: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    shapes = dynamic_batch(example)
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        shapes = (shapes,)  # forward(*xs): one entry, a tuple
    try:
        return torch.export.export(module, example, dynamic_shapes=shapes)
    except Exception as e:  # torch.export raises many types; all mean "this model cannot be captured"
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"model: torch.export cannot capture {type(module).__name__} with a dynamic batch "
                        f"({type(e).__name__}: {first}); the torch methods and the saved programs need an "
                        "exportable model (the onnx_* methods trace it instead)") from e


def capture(module: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """The graph pt2e quantizers annotate (export, then `.module()`)."""
    return export(module, example).module()


def prune_unused(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop parameters and buffers the graph no longer reads (convert_pt2e leaves the float
    weights behind next to their INT8 copies; saving them would double the size)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)
    return gm


def save_program(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    torch.export.save(export(module, example), str(path))
    return path


def register_quantized_ops() -> None:
    """Programs from pt2e and torchao refer to ops (quantized_decomposed.*) and tensor subclasses
    (Int8Tensor) that exist once torchao is imported; a fresh process must import it to load them."""
    import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401


def load_program(path: Path) -> nn.Module:
    register_quantized_ops()
    return torch.export.load(str(path)).module()


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's storage; tensor subclasses (torchao Int8Tensor) count their parts."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def program_weights_bytes(path: Path) -> int:
    register_quantized_ops()
    ep = torch.export.load(str(path))
    tensors = list(ep.state_dict.values()) + [c for c in ep.constants.values() if isinstance(c, torch.Tensor)]
    return sum(tensor_bytes(t) for t in tensors)
