"""Architecture knowledge for AWQ, as data: which op feeds which Linears in a decoder block.

AWQ scales the input channels of a group of Linears by s (weights W·diag(s)) and folds 1/s into
the op that produces their input, so the float model computes exactly the same thing. That op
is a norm (its weight, and bias if any, divided by s) or a Linear (its output rows divided by s).
Every Linear reading that op's output must take the scale, quantized or not.

Each family lists its mappings "previous op -> the Linears it feeds", the module whose output the
scale search compares (`inspect`: the attention or MLP module; None: the Linears' own outputs),
and the Linears whose clipping is not searched. Names are relative to one decoder block.
Families are chosen by `config.model_type`; anything else is refused before weights are loaded.

Sources (read, not copied): mit-han-lab/llm-awq `awq/quantize/auto_scale.py` (`auto_scale_block`:
the four Llama mappings; v_proj -> o_proj only when the two weights have the same shape, see
llm-awq PR #67), AutoAWQ `awq/models/llama.py` / `qwen2.py` / `qwen3.py` / `mistral.py`
(`get_layers_for_scaling`, same four mappings, module2inspect self_attn / mlp), and
`awq/quantize/quantizer.py` (`_search_best_clip` skips q/k: "due to qk bmm, it is hard to clip
precisely").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Mapping:
    prev: str  # the op whose output feeds `linears` (a norm or a Linear)
    linears: tuple[str, ...]  # every Linear that reads it
    inspect: str | None = None  # the module whose output the search compares; None: the Linears
    tokenwise: bool = False  # `inspect` acts on each token alone (an MLP): the search may score a
    #                          subset of tokens spread over every sample instead of whole samples


@dataclass(frozen=True)
class Family:
    name: str
    mappings: tuple[Mapping, ...]
    no_clip: tuple[str, ...] = ()


LLAMA_LIKE = Family(
    "llama-like",
    (
        Mapping("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        # only where v's outputs are o's inputs one to one (no grouped KV heads): checked per block
        Mapping("self_attn.v_proj", ("self_attn.o_proj",)),
        Mapping("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp", tokenwise=True),
        Mapping("mlp.up_proj", ("mlp.down_proj",)),
    ),
    no_clip=("self_attn.q_proj", "self_attn.k_proj"),
)

ARCHITECTURES: dict[str, Family] = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "qwen3": LLAMA_LIKE,
}
"""config.model_type -> family. A new family with these module names and plain norms (weight
times normalised input) is one line here."""

# norms whose output is weight * normalised(x) (+ bias): dividing weight (and bias) by s divides
# the output by s. Gemma-style norms (1 + weight) are not of this kind.
FOLDABLE_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "LayerNorm")


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def family_for(model_type: str | None) -> Family | None:
    return ARCHITECTURES.get(model_type or "")


@dataclass(frozen=True)
class Resolved:
    """A mapping in one block: the modules, and whether its scale can be folded there."""

    mapping: Mapping
    prev: nn.Module
    linears: tuple[nn.Module, ...]
    foldable: bool
    why_not: str = ""


def resolve(family: Family, block: nn.Module, block_name: str) -> list[Resolved]:
    """The family's mappings bound to `block`'s modules. Raises ValueError naming what is missing
    or of an unexpected kind (the caller turns it into a user error)."""
    out = []
    for m in family.mappings:
        try:
            prev = block.get_submodule(m.prev)
            linears = tuple(block.get_submodule(n) for n in m.linears)
            if m.inspect is not None:
                block.get_submodule(m.inspect)
        except AttributeError as e:
            raise ValueError(f"{block_name}: {e} (AWQ mapping {m.prev} -> {', '.join(m.linears)} of the "
                             f"{family.name} family)") from None
        bad = [n for n, lin in zip(m.linears, linears) if not isinstance(lin, nn.Linear)]
        if bad:
            raise ValueError(f"{block_name}.{bad[0]} is a {type(block.get_submodule(bad[0])).__name__}, not a Linear")
        if m.inspect is not None and not all(n.startswith(m.inspect + ".") for n in m.linears):
            raise ValueError(f"{block_name}: {m.inspect} does not contain {', '.join(m.linears)}")
        width = {lin.in_features for lin in linears}
        if len(width) != 1:
            raise ValueError(f"{block_name}: {', '.join(m.linears)} have different input widths {sorted(width)}")
        (channels,) = width
        if isinstance(prev, nn.Linear):
            ok = prev.out_features == channels
            why = "" if ok else (f"{m.prev} has {prev.out_features} outputs, {m.linears[0]} {channels} inputs "
                                 "(grouped KV heads): no scale for this pair")
        else:
            kind = type(prev).__name__
            if kind not in FOLDABLE_NORMS:
                raise ValueError(f"{block_name}.{m.prev} is a {kind}; AWQ folds scales only into "
                                 f"{', '.join(FOLDABLE_NORMS)} or Linear layers")
            weight = getattr(prev, "weight", None)
            ok = weight is not None and weight.shape == (channels,)
            why = "" if ok else f"{m.prev} has no per-channel weight of {channels} elements"
        out.append(Resolved(m, prev, linears, ok, why))
    return out


def check_model(model_type: str | None, block: nn.Module, block_name: str) -> str | None:
    """Why AWQ cannot handle this model (None when it can); `block` may live on the meta device."""
    family = family_for(model_type)
    if family is None:
        return (f"model type {model_type!r} has no AWQ architecture mapping; supported model types: "
                f"{supported()} (llmquant/quantize/awq/awq_arch.py)")
    try:
        resolve(family, block, block_name)
    except ValueError as e:
        return str(e)
    return None
