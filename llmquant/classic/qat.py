"""Quantization-aware training on torchao's pt2e flow: export the model in training mode,
`prepare_qat_pt2e` with the X86 inductor quantizer (fake quantization of weights and
activations), fine-tune a few epochs at a low learning rate on the training split, switch the
graph to eval mode, `convert_pt2e`. The result is a static-INT8 program like `static` gives."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from .data import Splits
from .export import capture, example_inputs, prune_unused, save_program
from .ptq import STATIC_KINDS, ClassicContext, int8_tensors, layer_names, matching, x86_quantizer
from .train import fit


def qat_int8(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    names = layer_names(source.module, STATIC_KINDS)
    keep = matching(names, variant.skip)
    # dropout draws from the global generator: seed it inside a fork, so the caller's state is left alone
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(variant.seed)
        warnings.simplefilter("ignore", UserWarning)
        gm = capture(copy.deepcopy(source.module).train(), example_inputs(splits.train.inputs))
        prepared = prepare_qat_pt2e(gm, x86_quantizer(is_qat=True, keep_float=keep))
        losses = fit(prepared, splits.train, variant.epochs, variant.lr, variant.batch_size, variant.seed,
                     ctx.progress, label=f"QAT {variant.name} ({len(splits.train)} samples)")
        move_exported_model_to_eval(prepared)
        gm = prune_unused(convert_pt2e(prepared))
    save_program(gm, example_inputs(splits.calibration.inputs), out / "model.pt2")
    return {"artifact": "model.pt2", "format": "pt2", "quantized": [n for n in names if n not in keep],
            "float": keep, "int8_weight_tensors": int8_tensors(gm), "train_loss": losses,
            "config": {"epochs": variant.epochs, "lr": variant.lr, "batch_size": variant.batch_size,
                       "train_samples": len(splits.train), "quantizer": "X86InductorQuantizer (is_qat)"}}
