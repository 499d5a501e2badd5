"""Test-side writers of foreign checkpoint layouts, written from each tool's documented layout
(see the docstrings of llmquant/formats/*.py for the sources) and deliberately independent of
llmquant's own packers: explicit per-value bit loops on Python/numpy integers.

Each writer takes a float model directory and returns (checkpoint dir, reference model): the
reference is the float model with every quantized weight replaced by its dequantized value,
computed here from the integers, and every other tensor rounded through fp16 as stored.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Grid:
    q: torch.Tensor  # [out, in] int64, 0..2**bits-1
    scales: torch.Tensor  # [n_groups, out] fp16-exact float32
    zeros: torch.Tensor  # [n_groups, out] integers as float32
    g_idx: torch.Tensor  # [in] int64
    bits: int

    def dequantize(self) -> torch.Tensor:
        s = self.scales[self.g_idx].t()
        z = self.zeros[self.g_idx].t()
        return s * (self.q.float() - z)


def rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool, act_order_seed: int | None = None,
        min_zero: int = 0) -> Grid:
    """Round-to-nearest with groups over any column assignment (act-order when seeded)."""
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else group_size
    n_groups = in_f // gs
    if act_order_seed is None:
        g_idx = torch.arange(in_f) // gs
    else:  # GPTQ act-order: groups follow a column permutation, g_idx maps back
        perm = torch.randperm(in_f, generator=torch.Generator().manual_seed(act_order_seed))
        g_idx = torch.empty(in_f, dtype=torch.int64)
        g_idx[perm] = torch.arange(in_f) // gs
    maxq = (1 << bits) - 1
    q = torch.empty(out_f, in_f, dtype=torch.int64)
    scales = torch.empty(n_groups, out_f)
    zeros = torch.empty(n_groups, out_f)
    for g in range(n_groups):
        cols = (g_idx == g).nonzero().squeeze(1)
        wg = w[:, cols].float()
        lo = wg.min(1).values.clamp(max=0)
        hi = wg.max(1).values.clamp(min=0)
        if sym:
            hi = torch.maximum(-lo, hi)
            lo = -hi
        s = ((hi - lo) / maxq).clamp(min=1e-6).half().float()
        z = torch.full_like(s, float((maxq + 1) // 2)) if sym else torch.round(-lo / s).clamp(min_zero, maxq)
        q[:, cols] = torch.clamp(torch.round(wg / s[:, None]) + z[:, None], 0, maxq).long()
        scales[g], zeros[g] = s, z
    return Grid(q, scales, zeros, g_idx, bits)


# -- bit packing, one value at a time -------------------------------------------------------

def pack_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """[K, N] values packed along axis 0 as a little-endian bit stream into uint32 words [K*bits/32, N]."""
    k, n = values.shape
    words = np.zeros((k * bits + 31) // 32, dtype=np.uint64).repeat(n).reshape(-1, n)
    for i in range(k):
        pos = i * bits
        w, off = divmod(pos, 32)
        v = values[i].astype(np.uint64)
        words[w] |= (v << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        if off + bits > 32:
            words[w + 1] |= v >> np.uint64(32 - off)
    return words.astype(np.uint32)


def as_int32(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int32).copy())


# -- whole checkpoints --------------------------------------------------------------------

def _base(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _write(model_dir: Path, out: Path, model, tensors: dict[str, torch.Tensor], qc: dict,
           extra_files: dict[str, dict] | None = None, dtype: str = "float16") -> None:
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["quantization_config"] = qc
    cfg["dtype"] = cfg["torch_dtype"] = dtype  # the dtype the tool says the model runs in
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config")):
            shutil.copy(f, out / f.name)
    for name, obj in (extra_files or {}).items():
        (out / name).write_text(json.dumps(obj, indent=2))


def _dense_state(model, skip: set[str]) -> dict[str, torch.Tensor]:
    """Unquantized tensors as the tools save them: fp16, tied lm_head written once."""
    state = {}
    for k, v in model.state_dict().items():
        if k.rsplit(".", 1)[0] in skip and k.endswith(".weight"):
            continue
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        state[k] = v.detach().half()
    return state


def _reference(model, grids: dict[str, Grid]):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
        for name, g in grids.items():
            model.get_submodule(name).weight.copy_(g.dequantize())
    return model.eval()


def _targets(model, rules) -> dict[str, tuple]:
    """{module: settings} for block Linears; rules(name) -> settings or None (left dense)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            s = rules(name)
            if s is not None:
                out[name] = s
    return out


def write_gptq(model_dir: Path, out: Path, bits: int = 4, group_size: int = 32, sym: bool = True,
               desc_act: bool = False, v2: bool = False, dynamic: dict | None = None, tool: str = "gptqmodel:4.0.0"):
    """A GPTQ checkpoint as GPTQModel/AutoGPTQ write it: qweight packed along the input dim,
    qzeros along the output dim storing zero-1 (v1) or zero (v2), fp16 scales, g_idx."""
    model = _base(model_dir)

    def rules(name):
        b, gs, s = bits, group_size, sym
        for pattern, over in (dynamic or {}).items():
            sign, regex = (pattern[0], pattern[2:]) if pattern[:2] in ("+:", "-:") else ("+", pattern)
            if re.match(regex, name):
                if sign == "-":
                    return None
                b, gs, s = over.get("bits", b), over.get("group_size", gs), over.get("sym", s)
                break
        return b, gs, s

    targets = _targets(model, rules)
    tensors = _dense_state(model, set(targets))
    grids = {}
    for i, (name, (b, gs, s)) in enumerate(targets.items()):
        w = model.get_submodule(name).weight.detach()
        g = rtn(w, b, gs, s, act_order_seed=i if desc_act else None, min_zero=0 if v2 else 1)
        grids[name] = g
        stored_zero = g.zeros.long() - (0 if v2 else 1)
        tensors[f"{name}.qweight"] = as_int32(pack_stream(g.q.t().numpy(), b))
        tensors[f"{name}.qzeros"] = as_int32(pack_stream(stored_zero.t().numpy(), b).T)
        tensors[f"{name}.scales"] = g.scales.half()
        tensors[f"{name}.g_idx"] = g.g_idx.to(torch.int32)
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "sym": sym, "desc_act": desc_act,
          "static_groups": False, "true_sequential": True, "lm_head": False, "damp_percent": 0.01,
          "checkpoint_format": "gptq_v2" if v2 else "gptq", "meta": {"quantizer": [tool]}}
    if dynamic:
        qc["dynamic"] = dynamic
    _write(model_dir, out, model, tensors, qc, {"quantize_config.json": qc})
    return out, _reference(model, grids)


AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_pack_row(values: np.ndarray) -> np.ndarray:
    """One row of output-dim values -> AutoAWQ GEMM words: nibble i of word c = value[8c + ORDER[i]]."""
    words = np.zeros(len(values) // 8, dtype=np.uint64)
    for c in range(len(words)):
        for i in range(8):
            words[c] |= np.uint64(int(values[8 * c + AWQ_ORDER[i]])) << np.uint64(4 * i)
    return words.astype(np.uint32)


def write_awq(model_dir: Path, out: Path, group_size: int = 32, zero_point: bool = True,
              version: str = "gemm", skip: tuple[str, ...] = (), dtype: str = "float16"):
    """An AutoAWQ GEMM checkpoint: 4-bit, qweight [in, out/8] and qzeros [in/g, out/8] in AWQ's order.
    version "gemv" writes GEMV-shaped tensors instead (qweight [out, in/8], scales [out, groups])."""
    model = _base(model_dir)
    targets = _targets(model, lambda n: None if any(s in n for s in skip) else (4, group_size, not zero_point))
    tensors = _dense_state(model, set(targets))
    grids = {}
    for name in targets:
        w = model.get_submodule(name).weight.detach()
        g = rtn(w, 4, group_size, sym=not zero_point)
        grids[name] = g
        if version == "gemv":  # only the shapes matter: nothing reads GEMV values
            tensors[f"{name}.qweight"] = as_int32(pack_stream(g.q.t().numpy(), 4).T)
            tensors[f"{name}.qzeros"] = as_int32(pack_stream(g.zeros.long().numpy(), 4).T)
            tensors[f"{name}.scales"] = g.scales.t().half()
            continue
        qT = g.q.t().numpy()  # [in, out]
        tensors[f"{name}.qweight"] = as_int32(np.stack([awq_pack_row(r) for r in qT]))
        if zero_point:
            tensors[f"{name}.qzeros"] = as_int32(np.stack([awq_pack_row(r) for r in g.zeros.long().numpy()]))
        tensors[f"{name}.scales"] = g.scales.half()
    qc = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": zero_point,
          "version": version, "modules_to_not_convert": list(skip) or None}
    _write(model_dir, out, model, tensors, qc,
           {"quant_config.json": {"w_bit": 4, "q_group_size": group_size, "zero_point": zero_point,
                                  "version": version.upper()}}, dtype=dtype)
    return out, _reference(model, grids)


def ct_pack_cols(values: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors `pack_to_int32` layout along the last dim: word j holds elements
    j*per .. j*per+per-1, element k of the run at bit k*bits; values already offset to unsigned."""
    rows, cols = values.shape
    per = 32 // bits
    padded = np.zeros((rows, -(-cols // per) * per), dtype=np.uint64)
    padded[:, :cols] = values
    shifts = (np.arange(per, dtype=np.uint64) * np.uint64(bits))
    return (padded.reshape(rows, -1, per) << shifts).sum(axis=2).astype(np.uint32)


def write_compressed_tensors(model_dir: Path, out: Path, bits: int = 4, group_size: int | None = 32,
                             sym: bool = True, actorder: bool = False, ignore: tuple[str, ...] = (),
                             scale_dtype: torch.dtype = torch.bfloat16, old_zero_points: bool = False):
    """An llm-compressor pack-quantized checkpoint (W4A16 / W8A16; group or channel strategy)."""
    model = _base(model_dir)
    gs = -1 if group_size is None else group_size
    targets = _targets(model, lambda n: None if any(re.match(i[3:], n) if i.startswith("re:") else i == n
                                                    for i in ignore) else (bits, gs, sym))
    tensors = _dense_state(model, set(targets))
    offset = 1 << (bits - 1)
    grids = {}
    for i, name in enumerate(targets):
        w = model.get_submodule(name).weight.detach()
        g = rtn(w, bits, gs, sym, act_order_seed=i if actorder else None)
        # compressed-tensors' scales are in the model dtype: make the reference use the same values
        g.scales = g.scales.to(scale_dtype).float()
        grids[name] = g
        tensors[f"{name}.weight_packed"] = as_int32(ct_pack_cols(g.q.numpy(), bits))
        tensors[f"{name}.weight_scale"] = g.scales.t().to(scale_dtype).contiguous()
        tensors[f"{name}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
        if not sym:
            zp_signed = g.zeros.long().t() - offset  # [out, n_groups]
            if old_zero_points:
                tensors[f"{name}.weight_zero_point"] = zp_signed.to(torch.int8)
            else:
                tensors[f"{name}.weight_zero_point"] = as_int32(ct_pack_cols((zp_signed + offset).t().numpy(), bits).T)
        if actorder:
            tensors[f"{name}.weight_g_idx"] = g.g_idx.to(torch.int32)
    weights = {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False, "observer": "minmax",
               "strategy": "channel" if group_size is None else "group", "group_size": group_size,
               "actorder": "group" if actorder else None, "block_structure": None}
    qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                        "output_activations": None, "format": "pack-quantized"}},
          "ignore": ["lm_head", *ignore], "kv_cache_scheme": None, "global_compression_ratio": None,
          "sparsity_config": {}}
    _write(model_dir, out, model, tensors, qc)
    return out, _reference(model, grids)
