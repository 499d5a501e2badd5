"""What to serve: a run directory's winner (or a named variant), or a checkpoint directly; and the
facts about it the fit check needs, read from config.json and the safetensors headers (no weights)."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..formats.load import CheckpointInfo, inspect_checkpoint
from ..loading.sources import is_hf_dir, read_config_json
from ..runs import read_json
from .fit import ModelShape, WeightBytes


@dataclass(frozen=True)
class ServeTarget:
    checkpoint: Path
    name: str  # the variant's name: the default served model name
    run_dir: Path | None
    info: CheckpointInfo


def _baseline_dir(run_dir: Path, results: dict) -> Path:
    base = run_dir / "base-model"
    if is_hf_dir(base):
        return base
    recipe_path = results.get("recipe")
    if recipe_path and Path(recipe_path).is_file():
        from ..loading.sources import local_dir, resolve_source
        from ..recipe import load_recipe

        r = load_recipe(recipe_path)
        src = resolve_source(r.model.source, r.base_dir, r.model.gguf_file, r.model.revision)
        return src.path if src.kind == "gguf" else local_dir(src)
    raise UserError(f"{run_dir}: the baseline's model directory is unknown (no base-model/ and no recipe)")


def resolve_target(path: Path, variant: str | None = None) -> ServeTarget:
    """A run directory (its winner, or `variant`; 'baseline' for the unquantized model), a
    checkpoint directory, or a .gguf file."""
    path = Path(path)
    results_path = path / "results.json"
    if path.is_dir() and results_path.is_file():
        results = read_json(results_path)
        if not isinstance(results, dict):
            raise UserError(f"{results_path}: unreadable; rerun the recipe")
        names = [v["name"] for v in results.get("variants", [])]
        name = variant or (results.get("winner") or {}).get("name")
        if name is None:
            reason = (results.get("winner") or {}).get("reason", "no winner")
            raise UserError(f"{path}: the run picked no winner ({reason}); name one with --variant "
                            f"({', '.join(names + ['baseline'])})")
        if name == "baseline":
            ckpt = _baseline_dir(path, results)
        else:
            match = [v for v in results.get("variants", []) if v["name"] == name]
            if not match:
                raise UserError(f"--variant: {name!r} is not in {results_path}; choose from "
                                f"{', '.join(names + ['baseline'])}")
            ckpt = Path(match[0]["checkpoint"])
        return ServeTarget(ckpt, name, path, inspect_checkpoint(ckpt))
    if variant:
        raise UserError(f"--variant: only for a run directory (with results.json); {path} is not one")
    info = inspect_checkpoint(path)  # raises a UserError for anything unreadable
    if path.is_file():
        name = path.stem
    else:
        name = path.parent.name if path.name == "checkpoint" else path.name
    return ServeTarget(path, _safe_name(name), None, info)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", name) or "model"


# -- shapes and sizes ---------------------------------------------------------------------------


def model_shape(checkpoint: Path) -> ModelShape:
    cfg = read_config_json(checkpoint)
    text = cfg.get("text_config") or cfg
    try:
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        layers = int(text["num_hidden_layers"])
        vocab = int(text["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{checkpoint}/config.json: missing or bad {e}; the fit check needs hidden_size, "
                        "num_attention_heads, num_hidden_layers and vocab_size") from None
    return ModelShape(
        layers=layers, heads=heads, kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads), hidden=hidden,
        intermediate=int(text.get("intermediate_size") or 4 * hidden), vocab=vocab,
        max_positions=text.get("max_position_embeddings"),
        tied=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
    )


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOAT = {"F64", "F32", "F16", "BF16"}
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)\.")
_EMBED_RE = re.compile(r"(?:embed_tokens|wte|word_embeddings|embed_in)\.")
_HEAD_RE = re.compile(r"^(?:lm_head|embed_out|output)\.")


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file: {name: {dtype, shape, data_offsets}}."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UserError(f"{path}: not a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise UserError(f"{path}: corrupt safetensors header") from None
    header.pop("__metadata__", None)
    return header


def tensor_table(checkpoint: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} over every safetensors file of a checkpoint."""
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise UserError(f"{checkpoint}: no .safetensors weights found")
    out = {}
    for f in files:
        for name, meta in safetensors_header(f).items():
            out[name] = (meta["dtype"], tuple(meta["shape"]))
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def weight_bytes(tensors: dict[str, tuple[str, tuple[int, ...]]], n_layers: int, float_bytes: int,
                 inflight_4bit: bool = False) -> WeightBytes:
    """Bytes on the GPU: float tensors at the served dtype (`float_bytes`), integer (packed) tensors
    as stored. `inflight_4bit`: the layers' 2-D float weights quantized while loading by bitsandbytes
    (4 bits + one fp32 absmax per 64 weights = 0.5625 bytes per weight; an estimate)."""
    embed = head = final = 0
    per_layer = [0] * n_layers
    for name, (dtype, shape) in tensors.items():
        n = numel(shape)
        m = _LAYER_RE.search(name)
        if dtype in _FLOAT:
            if inflight_4bit and m and len(shape) == 2:
                size = n // 2 + (n + 63) // 64 * 4
            else:
                size = n * float_bytes
        else:
            size = n * _DTYPE_BYTES.get(dtype, 4)
        if m and int(m.group(1)) < n_layers:
            per_layer[int(m.group(1))] += size
        elif _EMBED_RE.search(name):
            embed += size
        elif _HEAD_RE.search(name):
            head += size
        else:
            final += size
    return WeightBytes(embed, head, final, tuple(per_layer))
