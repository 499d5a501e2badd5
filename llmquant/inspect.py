"""`llmquant inspect PATH`: what a checkpoint is and whether vLLM can serve it, from its
metadata and tensor headers only (no weights loaded, no GPU, no vLLM)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .formats.load import CheckpointInfo, inspect_checkpoint
from .formats.modules import ModuleQuant, checkpoint_modules
from .formats.vllm_compat import Finding, VllmVerdict, vllm_verdict
from .loading.sources import read_config_json


@dataclass
class InspectReport:
    path: str
    format: str
    method: str
    bits: list[int]
    group_sizes: list[int]
    sym: bool | None
    desc_act: bool | None
    model_dtype: str | None
    size_bytes: int
    quantized: list[dict]  # per-module-pattern summaries
    dense: list[str]  # Linear layers left unquantized (patterns)
    n_quantized: int
    vllm: VllmVerdict
    tp: int = 1
    sm: int = 80
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vllm"] = self.vllm.to_dict()
        return d


def pattern(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name)


def summarize_modules(mods: list[ModuleQuant]) -> list[dict]:
    """One row per (name pattern, bits, group size, sym), in first-seen order, with a count."""
    rows: dict[tuple, dict] = {}
    for m in mods:
        key = (pattern(m.name), m.bits, m.group_size, m.sym)
        row = rows.setdefault(key, {"modules": key[0], "count": 0, "bits": m.bits, "group_size": m.group_size,
                                    "sym": m.sym, "shape": [m.out_features, m.in_features]})
        row["count"] += 1
    return list(rows.values())


def model_dtype(path: Path, info: CheckpointInfo) -> str | None:
    if info.format == "gguf":
        return None
    cfg = read_config_json(path)
    d = cfg.get("dtype") or cfg.get("torch_dtype")
    return str(d).removeprefix("torch.") if d else None


def head_findings(cfg: dict, tp: int) -> list[Finding]:
    """vLLM splits attention heads across GPUs: the head count must divide evenly, and KV heads
    must divide tp or be divisible by it (they are replicated when fewer than tp)."""
    heads = cfg.get("num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    out = []
    if heads and heads % tp:
        out.append(Finding("tp-heads", "blocker", f"{heads} attention heads do not split over tensor parallel {tp}"))
    if kv and kv % tp and tp % kv:
        out.append(Finding("tp-kv-heads", "blocker", f"{kv} KV heads neither divide nor are divided by tensor parallel {tp}"))
    return out


def inspect_path(path: Path, tp: int = 1, sm: int = 80) -> InspectReport:
    path = Path(path)
    info = inspect_checkpoint(path)
    if info.format in ("gguf", "hf"):
        quantized, dense = [], []
    else:
        quantized, dense = checkpoint_modules(path, info.method, info.quant_config)
    dtype = model_dtype(path, info)
    verdict = vllm_verdict(info.method, info.format, info.quant_config, quantized, dense, dtype, tp, sm)
    if tp > 1 and info.format != "gguf":
        verdict.findings += head_findings(read_config_json(path), tp)
    bits = sorted({m.bits for m in quantized if m.bits is not None}) or ([info.bits] if info.bits else [])
    groups = sorted({m.group_size for m in quantized if m.group_size is not None})
    notes = []
    if info.method != "none" and info.format not in ("gguf",) and not quantized:
        notes.append("no quantized tensors found for this quant_method")
    dense_names = sorted({pattern(m.name) for m in dense})
    return InspectReport(path=str(path), format=info.format, method=info.method, bits=bits, group_sizes=groups,
                         sym=info.sym, desc_act=info.desc_act, model_dtype=dtype, size_bytes=info.size_bytes,
                         quantized=summarize_modules(quantized), dense=dense_names, n_quantized=len(quantized),
                         vllm=verdict, tp=tp, sm=sm, notes=notes)
