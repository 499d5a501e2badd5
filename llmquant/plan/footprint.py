"""What a model is made of, from its config (and tensor headers where present), no weights read.

The skeleton is built by transformers on the meta device (as preflight does), so every
architecture transformers knows is measured the same way: decoder blocks, their Linears, the
embeddings, the LM head and everything else, in parameters. `stored_bytes` is what one parameter
takes on disk: from the safetensors headers when the files are there, else the config's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class LinearShape:
    name: str  # inside the block, e.g. "mlp.down_proj"
    in_features: int
    out_features: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class Footprint:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    block_params: int  # the largest decoder block
    linears: tuple[LinearShape, ...]  # of the largest block
    embed_params: int
    head_params: int  # 0 when the LM head is tied to the embeddings
    other_params: int  # final norm and anything outside the blocks
    stored_bytes: float  # bytes per parameter on disk
    stored_dtype: str
    weights_on_disk: int | None = None  # from the headers; None when only the config is there
    max_positions: int | None = None

    @property
    def total_params(self) -> int:
        return self.block_params * self.layers + self.embed_params + self.head_params + self.other_params

    @property
    def outer_params(self) -> int:
        return self.embed_params + self.head_params + self.other_params

    def distinct_inputs(self) -> list[int]:
        """Input widths of the block's Linears, one per group that reads the same input (q/k/v
        share one, gate/up another): what a Hessian or a recorded input costs."""
        groups: dict[tuple[str, int], int] = {}
        for lin in self.linears:
            parent = lin.name.rsplit(".", 1)[0] if "." in lin.name else ""
            # projections of one parent with the same input width read the same tensor, except
            # the output projections (o_proj/down_proj/fc2), which read their own
            own = lin.name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS
            groups[(parent + ("/" + lin.name if own else ""), lin.in_features)] = lin.in_features
        return list(groups.values())

    @property
    def largest_linear(self) -> int:
        return max((lin.params for lin in self.linears), default=0)


OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "dense", "fc2", "c_proj", "dense_4h_to_h", "w2", "wo")


def _config_value(cfg, *names, default=None):
    text = getattr(cfg, "text_config", None) or cfg
    for n in names:
        v = getattr(text, n, None)
        if v is not None:
            return v
    return default


def footprint(model: nn.Module, config, stored_bytes: float | None = None, stored_dtype: str | None = None,
              weights_on_disk: int | None = None) -> Footprint:
    """The footprint of a (meta) model built from `config`."""
    from ..quantize.targets import find_blocks

    prefix, blocks = find_blocks(model)
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    big = max(range(len(blocks)), key=lambda i: sizes[i])
    linears = tuple(LinearShape(n, m.in_features, m.out_features)
                    for n, m in blocks[big].named_modules() if isinstance(m, nn.Linear))
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    embed_params = sum(p.numel() for p in embed.parameters()) if embed is not None else 0
    tied = head is not None and embed is not None and head.weight is embed.weight
    head_params = 0 if head is None or tied else sum(p.numel() for p in head.parameters())
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    other = total - sum(sizes) - embed_params - head_params
    hidden = int(_config_value(config, "hidden_size", "n_embd", "d_model"))
    heads = int(_config_value(config, "num_attention_heads", "n_head", default=1))
    if stored_dtype is None:
        dt = getattr(config, "dtype", None) or "float32"
        stored_dtype = str(dt).replace("torch.", "")
    if stored_bytes is None:
        stored_bytes = DTYPE_BYTES.get(stored_dtype, 4)
    return Footprint(
        layers=len(blocks), hidden=hidden,
        intermediate=int(_config_value(config, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden) or 4 * hidden),
        heads=heads, kv_heads=int(_config_value(config, "num_key_value_heads", default=heads) or heads),
        head_dim=int(_config_value(config, "head_dim", default=hidden // heads) or hidden // heads),
        vocab=int(_config_value(config, "vocab_size")), block_params=sizes[big], linears=linears,
        embed_params=embed_params, head_params=head_params, other_params=max(0, other),
        stored_bytes=stored_bytes, stored_dtype=stored_dtype, weights_on_disk=weights_on_disk,
        max_positions=_config_value(config, "max_position_embeddings"))


HEADER_DTYPES = {"F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2), "F64": ("float64", 8)}


def stored_from_headers(model_dir: Path) -> tuple[float, str, int] | None:
    """(bytes per float parameter, the dominant float dtype, bytes of weights) from the
    safetensors headers of a model directory; None when it has no safetensors files."""
    from ..serve.artifact import _DTYPE_BYTES, numel, tensor_table

    if not any(Path(model_dir).glob("*.safetensors")):
        return None
    by_dtype: dict[str, int] = {}
    total = 0
    for dtype, shape in tensor_table(Path(model_dir)).values():
        n = numel(shape)
        total += n * _DTYPE_BYTES.get(dtype, 4)
        if dtype in HEADER_DTYPES:
            by_dtype[dtype] = by_dtype.get(dtype, 0) + n
    if not by_dtype:
        return None
    main = max(by_dtype, key=by_dtype.get)
    name, size = HEADER_DTYPES[main]
    return float(size), name, total
