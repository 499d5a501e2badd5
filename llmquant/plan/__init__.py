"""`llmquant plan`: will a recipe fit this machine? Estimated peak host memory, GPU memory and
disk of each step, from the model's config (and safetensors headers where present) only.

    plan = plan_for(recipe)          # resolves the source, reads config.json, builds a meta skeleton
    for line in render_text(plan): print(line)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .build import Plan, Step, plan_recipe
from .machine import Machine, this_machine
from .render import render_json, render_text

__all__ = ["Plan", "Step", "Machine", "checkpoint_estimate", "plan_for", "plan_from_config", "render_json",
           "render_text", "hub_config", "this_machine"]


def hub_config(hub_id: str, revision: str | None, trust_remote_code: bool):
    """The config of a hub model: the local cache, else a download of config.json only."""
    from huggingface_hub import hf_hub_download
    from transformers import AutoConfig

    for local in (True, False):
        try:
            path = hf_hub_download(hub_id, "config.json", revision=revision, local_files_only=local, etag_timeout=10)
            return AutoConfig.from_pretrained(Path(path).parent, trust_remote_code=trust_remote_code)
        except Exception as e:  # not cached / offline / 401 / 404
            reason = type(e).__name__
    raise UserError(f"model.source: the config of {hub_id!r} is not in the local cache and the Hugging Face hub "
                    f"could not be reached ({reason}); plan from a local directory holding its config.json "
                    "(llmquant plan --source DIR)")


def plan_from_config(recipe, label: str, config, model, source_dir: Path | None, machine: Machine | None = None,
                     device: str | None = None, gguf: bool = False) -> Plan:
    """The plan when the config and meta skeleton are already built (preflight has them)."""
    import torch

    from ..loading.runtime import resolve_dtype
    from .footprint import stored_from_headers

    if device is None:
        choice = recipe.model.device
        device = ("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice
    machine = machine or this_machine(recipe.run_dir(), device.startswith("cuda"))
    stored = stored_from_headers(source_dir) if source_dir is not None else None
    if gguf:  # quantized from the de-quantized float32 copy the run saves
        stored = (4.0, "float32", None)
    return plan_recipe(recipe, label, config, model, machine, device, resolve_dtype(recipe.model.dtype, device),
                       stored, gguf)


def checkpoint_estimate(checkpoint: Path, dtype: str, tokens: int, trust_remote_code: bool = False) -> Step:
    """The built-in server's (or an evaluation's) peak for a checkpoint on disk, by plan's
    arithmetic: packed tensors as stored, the rest at `dtype`, one request of `tokens`."""
    from transformers import AutoConfig

    from ..eval.upcast import PACKED_SUFFIXES
    from ..preflight import meta_model
    from ..serve.artifact import _DTYPE_BYTES, numel, tensor_table
    from . import memory as mem
    from .build import _dtype_bytes
    from .footprint import footprint, stored_from_headers

    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    table = tensor_table(Path(checkpoint))
    packed = sum(numel(shape) * _DTYPE_BYTES.get(dt, 4) for name, (dt, shape) in table.items()
                 if name.endswith(PACKED_SUFFIXES))
    dense = sum(numel(shape) for name, (dt, shape) in table.items() if not name.endswith(PACKED_SUFFIXES))
    fp = footprint(meta_model(config), config, *(stored_from_headers(Path(checkpoint)) or (None, None, None)))
    terms = mem.local_serve_terms(fp, packed if packed else None, dense, _dtype_bytes(dtype), tokens)
    return Step(f"serve {Path(checkpoint).name}", mem.total(terms), terms=terms)


def plan_for(recipe, machine: Machine | None = None) -> Plan:
    from ..loading.sources import load_config, resolve_source
    from ..preflight import meta_model

    m = recipe.model
    src = resolve_source(m.source, recipe.base_dir, m.gguf_file, m.revision)
    if src.kind == "hub":
        config = hub_config(src.hub_id, src.revision, m.trust_remote_code)
    else:
        config = load_config(src, m.trust_remote_code)
    source_dir = src.path if src.kind == "hf-dir" else None
    return plan_from_config(recipe, src.label, config, meta_model(config), source_dir, machine,
                            gguf=src.kind == "gguf")
