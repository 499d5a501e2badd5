"""ONNX Runtime: export a torch model to ONNX, quantize it with `quantize_dynamic` or
`quantize_static` (QDQ format, a calibration reader over the same calibration split the torch
methods use), and run the result (`runners.OrtRunner`).

Export uses torch's TorchScript-based exporter (`dynamo=False`): the torch.export-based one needs
the onnxscript package, which the environment does not have. The batch axis is dynamic.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .data import Dataset, Splits
from .export import example_inputs
from .ptq import CALIBRATION_BATCH, ClassicContext

log = logging.getLogger("llmquant")
OPSET = 17


def export_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, ...], path: Path) -> Path:
    axes = {n: {0: "batch"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, input_names=list(names),
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET)
    return path


def _float_onnx(source, splits: Splits, work: Path) -> Path:
    if source.onnx_path is not None:
        return source.onnx_path
    work.mkdir(parents=True, exist_ok=True)
    return export_onnx(source.module, example_inputs(splits.calibration.inputs),
                       splits.calibration.input_names, work / "float.onnx")


def _preprocess(path: Path, work: Path, notes: list[str]) -> Path:
    """Shape inference and graph optimisation, as ONNX Runtime recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dest = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(path), str(dest))
        return dest
    except Exception as e:  # onnxruntime raises assorted exception types here
        notes.append(f"pre-processing skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        return path


class CalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over a Dataset, in batches."""

    def __init__(self, input_names: list[str], data: Dataset, batch: int = CALIBRATION_BATCH):
        self.feeds = [{n: np.ascontiguousarray(x.numpy()) for n, x in zip(input_names, data.batch(s, s + batch))}
                      for s in range(0, len(data), batch)]
        self._it = iter(self.feeds)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def _input_names(path: Path, n_inputs: int) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != n_inputs:
        raise UserError(f"{path}: the model takes {len(names)} inputs ({', '.join(names)}) but the data gives {n_inputs}")
    return names


def onnx_fp32(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    src = _float_onnx(source, splits, ctx.work_dir)
    shutil.copyfile(src, out / "model.onnx")
    return {"artifact": "model.onnx", "format": "onnx", "config": {"opset": OPSET, "exporter": "torchscript"}}


def onnx_dynamic(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    notes: list[str] = []
    pre = _preprocess(_float_onnx(source, splits, ctx.work_dir), ctx.work_dir, notes)
    quantize_dynamic(str(pre), str(out / "model.onnx"), weight_type=QuantType.QInt8, per_channel=variant.per_channel)
    return {"artifact": "model.onnx", "format": "onnx", "notes": notes,
            "config": {"weights": "int8", "activations": "uint8 at run time", "per_channel": variant.per_channel}}


def onnx_static(source, variant, splits: Splits, out: Path, ctx: ClassicContext) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    notes: list[str] = []
    pre = _preprocess(_float_onnx(source, splits, ctx.work_dir), ctx.work_dir, notes)
    reader = CalibrationReader(_input_names(pre, len(splits.calibration.inputs)), splits.calibration)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[variant.calibrate_method]
    with ctx.progress.task(f"calibrate {variant.name} ({len(splits.calibration)} samples, ONNX Runtime)", total=None):
        quantize_static(str(pre), str(out / "model.onnx"), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=variant.per_channel, calibrate_method=method,
                        op_types_to_quantize=list(variant.op_types))
    return {"artifact": "model.onnx", "format": "onnx", "notes": notes,
            "config": {"format": "QDQ", "weights": "int8", "activations": "uint8, calibrated",
                       "per_channel": variant.per_channel, "calibrate_method": variant.calibrate_method,
                       "op_types": list(variant.op_types)}}


def onnx_weights_bytes(path: Path) -> int:
    """Bytes of the initializers (weights, scales, zero points) stored in an ONNX file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))
