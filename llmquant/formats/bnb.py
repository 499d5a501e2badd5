"""Reading bitsandbytes checkpoints (`quant_method: bitsandbytes`, as transformers'
save_pretrained writes them) for evaluation, through transformers with bitsandbytes.

What the evaluation then computes (bitsandbytes 0.50, read in its autograd/_functions.py and
backends/default/ops.py):
- LLM.int8: each Linear casts its input to fp16, splits off the input columns holding a value
  >= threshold (kept in the input dtype against dequantized weight columns), quantizes the
  rest to int8 per token (row absmax) and multiplies with the int8 weights (row absmax);
  the output comes back in the input dtype. Activations are therefore quantized too.
- NF4/FP4: weights dequantized per block of 64 to the config's compute dtype for the matmul;
  except on CPUs with AVX512-BF16 (this team's machine), where the first forward repacks the
  weights and a fused kernel computes in bfloat16 (backends/cpu/ops.py `gemv_4bit` casts the
  input and absmax to bf16), whatever the compute dtype says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .detect import QuantSummary
from .format import CheckpointFormat
from .modules import ModuleQuant, layer_prefixes, read_small
from .vllm_compat import bnb_verdict

log = logging.getLogger("llmquant")

# bitsandbytes warns on every LLM.int8 matmul that it casts fp32 inputs to fp16: the compute
# note below says it once instead.
NOISY_LOGGERS = ("bitsandbytes.autograd._functions",)


def cpu_bf16_kernel() -> bool:
    """Whether bitsandbytes' fused CPU 4-bit kernel runs here (it needs AVX512-BF16)."""
    try:
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())
    except Exception:  # no bitsandbytes, or no native library
        return False


def compute_note(qc: dict, dtype: str, device: str = "cpu") -> str:
    """One line describing how a bitsandbytes checkpoint computes when evaluated in `dtype`."""
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        t = qc.get("llm_int8_threshold", 6.0)
        outliers = (f"input columns with a value >= {t:g} stay {dtype}" if t and t > 0
                    else "no outlier columns (threshold 0)")
        return (f"LLM.int8: Linear inputs rounded to fp16 and quantized to int8 per token, {outliers}; "
                f"int8 weights per row; output {dtype}")
    kind = qc.get("bnb_4bit_quant_type", "fp4")
    cd = str(qc.get("bnb_4bit_compute_dtype") or "float32").removeprefix("torch.")
    dq = ", double-quantized absmax" if qc.get("bnb_4bit_use_double_quant") else ""
    if device == "cpu" and cpu_bf16_kernel():
        return (f"{kind.upper()} weights in blocks of 64{dq}; on this CPU (AVX512-BF16) bitsandbytes repacks them "
                f"on the first forward and runs each matmul in bfloat16 (inputs and absmax cast to bf16, "
                f"the configured compute dtype {cd} is not used); other activations {dtype}")
    return f"{kind.upper()} weights in blocks of 64{dq}, dequantized to {cd} for each matmul; activations {dtype}"


def load(path: Path, info, dtype: torch.dtype, trust_remote_code: bool = False, device: str = "cpu") -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"{path}: a bitsandbytes checkpoint needs the bitsandbytes package: "
                        "pip install 'llmquant[bnb]'") from None
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map={"": device},
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot load the bitsandbytes checkpoint ({first})") from None
    cast_unquantized(model, dtype)
    return model.eval()


def cast_unquantized(model: nn.Module, dtype: torch.dtype) -> None:
    """Bring the unquantized parameters (embeddings, norms, head, biases) to the evaluation dtype.

    transformers 5.24 keeps a pre-quantized bitsandbytes checkpoint's unquantized tensors in
    their stored dtype (fp16 here) even when `dtype=` asks otherwise, and refuses `.to(dtype)`
    on such models; the bitsandbytes weight classes themselves are left alone.
    """
    import bitsandbytes as bnb

    packed = (bnb.nn.Int8Params, bnb.nn.Params4bit)
    with torch.no_grad():
        for p in model.parameters():
            if not isinstance(p, packed) and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


def state_bytes(model: nn.Module) -> int:
    """Bytes bitsandbytes keeps beside parameters (SCB row scales, 4-bit quant states), which
    parameter/buffer counts miss."""
    total = 0
    for p in model.parameters():
        scb = getattr(p, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for t in (getattr(qs, "absmax", None), getattr(qs, "code", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
            nested = getattr(qs, "state2", None)
            if nested is not None:
                for t in (getattr(nested, "absmax", None), getattr(nested, "code", None)):
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
    return total


def shape_problem(in_features: int, out_features: int, bits: int, group_size: int | None) -> str | None:
    """bitsandbytes stores any shape: LLM.int8 per row, 4-bit in blocks of 64 over the flattened weight."""
    return None


def summarize(qc: dict) -> QuantSummary:
    if qc.get("load_in_8bit") or qc.get("_load_in_8bit"):
        return QuantSummary("bnb-int8", 8, None, True, False)
    kind = qc.get("bnb_4bit_quant_type", "fp4")
    return QuantSummary(f"bnb-{kind}", 4, 64, True, False)


def modules(path: Path, index: dict, qc: dict) -> list[ModuleQuant]:
    out = []
    for name in layer_prefixes(index, ".SCB"):  # LLM.int8: int8 weight [out, in], fp32 row scales
        out_f, in_f = index[f"{name}.weight"].shape
        out.append(ModuleQuant(name, in_f, out_f, 8, None, True, index[f"{name}.SCB"].dtype))
    for key in sorted(k for k in index if ".weight.quant_state.bitsandbytes__" in k):
        name = key.split(".weight.quant_state.")[0]
        state = json.loads(bytes(read_small(path, key).tolist()).decode())
        out_f, in_f = state["shape"]
        out.append(ModuleQuant(name, in_f, out_f, 4, int(state.get("blocksize", 64)), True,
                               state.get("dtype", "").removeprefix("torch.") or None))
    return out


def vllm_args(qc: dict) -> tuple[list[str], list[str]]:
    return ["--quantization", "bitsandbytes"], ["bitsandbytes: pre-quantized"]


def info_compute_note(info, dtype: str, device: str = "cpu") -> str:
    return compute_note(info.quant_config, dtype, device)


CHECKPOINT_FORMAT = CheckpointFormat(
    quant_method="bitsandbytes",
    description="bitsandbytes LLM.int8 / NF4 / FP4 (transformers)",
    summarize=summarize,
    modules=modules,
    shape_problem=shape_problem,
    vllm_verdict=bnb_verdict,
    vllm_args=vllm_args,
    compute_note=info_compute_note,
    load=load,
    extra_resident_bytes=state_bytes,
)
