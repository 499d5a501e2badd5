"""Post-training methods on torchao: dynamic INT8 (`quantize_` with
Int8DynamicActivationInt8WeightConfig), static INT8 (pt2e with the X86 inductor quantizer:
export, prepare, calibrate, convert) and FP16/BF16 casting. Each writes one `.pt2` program.

torch.ao.quantization (deprecated for removal) is not used. torchao 0.18 quantizes Linear layers
dynamically; it has no dynamic LSTM/GRU, so recurrent layers stay in float (reported as a note).
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..progress import NULL_PROGRESS, Progress
from .data import Dataset, Splits
from .export import capture, example_inputs, prune_unused, save_program

STATIC_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)
DYNAMIC_KINDS = (nn.Linear,)
RECURRENT_KINDS = (nn.LSTM, nn.GRU, nn.RNN)
CALIBRATION_BATCH = 32


@dataclass
class ClassicContext:
    work_dir: Path
    progress: Progress = NULL_PROGRESS


def layer_names(module: nn.Module, kinds: tuple[type, ...]) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, kinds) and n]


def matching(names: list[str], patterns: list[str]) -> list[str]:
    return [n for n in names if any(re.search(p, n) for p in patterns)]


def recurrent_note(module: nn.Module) -> list[str]:
    rec = layer_names(module, RECURRENT_KINDS)
    if not rec:
        return []
    return [f"{len(rec)} recurrent layer(s) ({', '.join(rec[:3])}) left in float: torchao 0.18 has no dynamic "
            "INT8 LSTM/GRU (torch.ao.quantization's is deprecated for removal and not used)"]


# -- dynamic -------------------------------------------------------------------------------------


def dynamic_model(module: nn.Module, keep_float: list[str] = (), only: list[str] | None = None) -> nn.Module:
    """A copy with Linear weights in INT8 and activations quantized per row at run time."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    m = copy.deepcopy(module).eval()
    keep = set(keep_float)

    def wanted(mod: nn.Module, fqn: str) -> bool:
        return isinstance(mod, DYNAMIC_KINDS) and fqn not in keep and (only is None or fqn in only)

    # set_inductor_config=False: it would change process-wide inductor settings
    quantize_(m, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False), filter_fn=wanted)
    return m


def dynamic_int8(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    names = layer_names(source.module, DYNAMIC_KINDS)
    keep = matching(names, variant.skip)
    m = dynamic_model(source.module, keep)
    save_program(m, example_inputs(splits.calibration.inputs), out / "model.pt2")
    return {"artifact": "model.pt2", "format": "pt2", "quantized": [n for n in names if n not in keep],
            "float": keep, "notes": recurrent_note(source.module),
            "config": {"weights": "int8 per output channel, symmetric", "activations": "int8 per row, at run time"}}


# -- static --------------------------------------------------------------------------------------


def x86_quantizer(is_qat: bool = False, keep_float: list[str] = (), only: list[str] | None = None):
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    cfg = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    q = X86InductorQuantizer()
    if only is not None:
        for name in only:
            q.set_module_name_qconfig(name, cfg)
        return q
    q.set_global(cfg)
    for name in keep_float:
        q.set_module_name_qconfig(name, None)
    return q


def calibrate(prepared: nn.Module, data: Dataset, batch: int = CALIBRATION_BATCH) -> None:
    with torch.no_grad():
        for start in range(0, len(data), batch):
            prepared(*data.batch(start, start + batch))


def static_convert(module: nn.Module, calib: Dataset, keep_float: list[str] = (),
                   only: list[str] | None = None) -> torch.fx.GraphModule:
    """export → prepare_pt2e (observers) → calibrate → convert_pt2e (INT8 weights, q/dq activations)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input of maxpool2d is not quantized" and the like
        gm = capture(copy.deepcopy(module).eval(), example_inputs(calib.inputs))
        prepared = prepare_pt2e(gm, x86_quantizer(keep_float=keep_float, only=only))
        calibrate(prepared, calib)
        return prune_unused(convert_pt2e(prepared))


def int8_tensors(gm: nn.Module) -> int:
    """INT8 weight tensors held by a converted graph (a check that layers really were quantized)."""
    return sum(1 for t in list(gm.parameters()) + list(gm.buffers()) if t.dtype == torch.int8)


def static_int8(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    names = layer_names(source.module, STATIC_KINDS)
    keep = matching(names, variant.skip)
    with ctx.progress.task(f"calibrate {variant.name} ({len(splits.calibration)} samples)", total=None):
        gm = static_convert(source.module, splits.calibration, keep)
    save_program(gm, example_inputs(splits.calibration.inputs), out / "model.pt2")
    return {"artifact": "model.pt2", "format": "pt2", "quantized": [n for n in names if n not in keep],
            "float": keep, "int8_weight_tensors": int8_tensors(gm), "notes": recurrent_note(source.module),
            "config": {"weights": "int8 per output channel, symmetric", "activations": "uint8 per tensor, "
                       "ranges from the calibration split (histogram observer)", "quantizer": "X86InductorQuantizer"}}


# -- casting -------------------------------------------------------------------------------------


class CastModel(nn.Module):
    """The model in a lower float dtype; float inputs are cast in, logits cast back to float32."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = module.to(dtype)
        self.dtype = dtype

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.model(*(x.to(self.dtype) if x.is_floating_point() else x for x in xs)).float()


def cast(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[variant.dtype]
    m = CastModel(copy.deepcopy(source.module).eval(), dtype).eval()
    save_program(m, example_inputs(splits.calibration.inputs), out / "model.pt2")
    notes = []
    if dtype == torch.float16:
        notes.append("float16 on a CPU halves the size; speed depends on the CPU's fp16 support (GPUs gain most)")
    return {"artifact": "model.pt2", "format": "pt2", "config": {"dtype": variant.dtype}, "notes": notes}
