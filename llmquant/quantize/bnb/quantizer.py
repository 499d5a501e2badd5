"""bitsandbytes variants: transformers loads the base model with a BitsAndBytesConfig (which
quantizes the Linear layers while loading), and the result is saved with save_pretrained.

The checkpoint is written BEFORE any forward pass: on CPU, bitsandbytes repacks 4-bit weights
into another layout on the first forward, and a model saved after that reloads with wrong
weights (measured with bitsandbytes 0.50.2: logits off by 0.6 on the tiny test model).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open

from ...errors import UserError
from ...formats.checkpoint import save_dtype
from ...loading.runtime import DTYPES
from ..base import CalibrationSet, QuantizeContext, QuantizeResult
from ..metrics import relative_error
from .config import BnbVariant

log = logging.getLogger("llmquant")

INSTALL = "pip install 'llmquant[bnb]'"


def require_bnb() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"method bnb needs the bitsandbytes package: {INSTALL}") from None


def bnb_config(variant: BnbVariant):
    """The transformers BitsAndBytesConfig for a variant."""
    from transformers import BitsAndBytesConfig

    if variant.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=variant.threshold,
                                  llm_int8_skip_modules=variant.skip_modules)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=variant.mode, bnb_4bit_use_double_quant=variant.double_quant,
        bnb_4bit_compute_dtype=DTYPES[variant.compute_dtype] if variant.compute_dtype else torch.float32,
        bnb_4bit_quant_storage=getattr(torch, variant.quant_storage), llm_int8_skip_modules=variant.skip_modules)


def dequantized_weight(module) -> torch.Tensor | None:
    """The float weight a bitsandbytes Linear holds (None for other modules)."""
    import bitsandbytes as bnb

    w = module.weight
    if isinstance(module, bnb.nn.Linear8bitLt):
        return w.data.float() * (w.SCB.float().unsqueeze(1) / 127.0)
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    return None


def _original_weights(model_dir: Path, names: list[str]) -> dict[str, torch.Tensor]:
    keys = {f"{n}.weight": n for n in names}
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                if k in keys:
                    out[keys[k]] = h.get_tensor(k).float()
    return out


def layer_report(model, model_dir: Path, variant: BnbVariant) -> list[dict]:
    """Relative weight error of each quantized Linear against the base checkpoint's weight."""
    quantized = {n: m for n, m in model.named_modules() if _is_bnb(m)}
    originals = _original_weights(model_dir, list(quantized))
    report = []
    for name, mod in quantized.items():
        w_hat = dequantized_weight(mod)
        w = originals.get(name)
        err = None if w is None else relative_error(w, w_hat)
        report.append({"module": name, "bits": variant.bits, "group_size": variant.group_size, "rel_error": err})
    return report


def _is_bnb(module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit))


class BnbQuantizer:
    method = "bnb"
    version = "1"

    def quantize(self, model, variant: BnbVariant, calib: CalibrationSet | None, out_dir: Path,
                 ctx: QuantizeContext) -> dict:
        from transformers import AutoConfig, AutoModelForCausalLM

        require_bnb()
        if ctx.model_dir is None:
            raise ValueError("method bnb loads the base model itself: QuantizeContext.model_dir is required")
        t0 = time.perf_counter()
        config = AutoConfig.from_pretrained(ctx.model_dir)
        # unquantized tensors are loaded (and saved) in the save dtype, as RTN saves them
        dtype = save_dtype(SimpleNamespace(config=config), variant.save_dtype)
        with ctx.progress.task(f"bnb {variant.name}: quantize ({variant.mode})", total=None):
            qmodel = AutoModelForCausalLM.from_pretrained(
                ctx.model_dir, quantization_config=bnb_config(variant), dtype=dtype,
                device_map={"": ctx.device})
            # save before any forward pass (see the module docstring)
            qmodel.save_pretrained(out_dir, safe_serialization=True)
            if ctx.tokenizer is not None:
                ctx.tokenizer.save_pretrained(out_dir)
        seconds = time.perf_counter() - t0
        report = layer_report(qmodel, Path(ctx.model_dir), variant)
        for r in report:
            r["seconds"] = seconds / max(1, len(report))
        qc = qmodel.config.quantization_config.to_dict()
        del qmodel
        return QuantizeResult(f"bnb-{variant.mode}",
                              {"quant_method": "bitsandbytes", "mode": variant.mode, "bits": variant.bits,
                               "group_size": variant.group_size, "dtype": str(dtype).removeprefix("torch."),
                               "bitsandbytes_config": qc},
                              report)
