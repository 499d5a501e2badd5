"""A model whose weights stay in its safetensors files until a block needs them.

    model = skeleton(model_dir)                       # every parameter on the meta device
    source = WeightSource(model_dir)                  # name -> file (sharded checkpoints too)
    blocks = LazyBlocks(source, torch.float32)
    blocks.load("model.layers.3", layer, device)      # read, cast, place: this block only
    ...
    blocks.unload("model.layers.3", layer)            # back to meta: its memory is freed

The skeleton is built by transformers from the config on the meta device (no weight memory, no
random initialisation); buffers computed rather than stored (rotary inverse frequencies) are
computed on the CPU by transformers' own initialiser. Files are opened (memory-mapped) only
while a module's tensors are read, so file pages are not kept resident either.

`EagerBlocks` is the same interface over a model already in memory (moved to the device and
back), so the quantizers run one code path either way.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Protocol

import torch
from torch import Tensor, nn

from ..errors import UserError
from .targets import find_blocks


class WeightSource:
    """Where each tensor of an HF safetensors checkpoint lives; reads a few at a time."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        self.file_of: dict[str, Path] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise UserError(f"{index}: not a safetensors index ({e})") from None
            self.file_of = {k: self.dir / v for k, v in weight_map.items()}
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise UserError(f"{self.dir}: no .safetensors files (quantizing reads safetensors checkpoints)")
            for f in files:
                with safe_open(str(f), framework="pt") as h:
                    self.file_of.update({k: f for k in h.keys()})
        missing = sorted({str(f) for f in self.file_of.values() if not f.is_file()})
        if missing:
            raise UserError(f"{index}: lists {missing[0]}, which does not exist")

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def read(self, names: list[str]) -> dict[str, Tensor]:
        """The tensors `names`, in their stored dtype, each a private copy (files closed after)."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self.file_of[n], []).append(n)
        out = {}
        for f, ns in by_file.items():
            with safe_open(str(f), framework="pt") as h:
                for n in ns:
                    out[n] = h.get_tensor(n)
        return out


def skeleton(model_dir: Path, trust_remote_code: bool = False) -> nn.Module:
    """The model of `model_dir` with every parameter on the meta device, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    for name, module in model.named_modules():
        meta = [b for b in module._buffers.values() if b is not None and b.is_meta]
        if meta and not list(module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
    still = [n for n, b in model.named_buffers() if b.is_meta and n not in model.state_dict()]
    if still:
        raise UserError(f"{model_dir}: cannot compute buffer {still[0]} without loading the whole model")
    if (Path(model_dir) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model.eval()


def tensor_names(module: nn.Module, prefix: str) -> dict[str, str]:
    """{name in the checkpoint: name inside `module`} of its parameters and persistent buffers."""
    pre = f"{prefix}." if prefix else ""
    names = {pre + n: n for n, _ in module.named_parameters(remove_duplicate=False)}
    for mod_name, mod in module.named_modules():
        for b in mod._buffers:
            if b not in mod._non_persistent_buffers_set and mod._buffers[b] is not None:
                rel = f"{mod_name}.{b}" if mod_name else b
                names[pre + rel] = rel
    return names


def _set(module: nn.Module, rel: str, t: Tensor) -> Tensor:
    owner, _, leaf = rel.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    old = sub._parameters.get(leaf) if leaf in sub._parameters else sub._buffers[leaf]
    if leaf in sub._parameters:
        sub._parameters[leaf] = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)
    else:
        sub._buffers[leaf] = t
    return old


class OwnTensors(nn.Module):
    """A view of one module's own tensors (it shares their dicts), so loading it leaves the
    module's children alone."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._parameters = module._parameters
        self._buffers = module._buffers
        self._non_persistent_buffers_set = module._non_persistent_buffers_set


class Blocks(Protocol):
    """Makes a module's weights usable on a device, and lets go of them afterwards."""

    lazy: bool

    def load(self, name: str, module: nn.Module, device: torch.device | str | None,
             dtype: torch.dtype | None = None) -> None: ...

    def unload(self, name: str, module: nn.Module) -> None: ...

    def outer(self, model: nn.Module) -> contextlib.AbstractContextManager: ...


class EagerBlocks:
    """A model in memory: load moves a module to the device, unload moves it back."""

    lazy = False

    def __init__(self) -> None:
        self._home: dict[str, torch.device] = {}

    def load(self, name: str, module: nn.Module, device, dtype: torch.dtype | None = None) -> None:
        if device is None:  # (dtype: the tensors are already in memory; the writer casts them)
            return
        p = next(module.parameters(), None)
        self._home[name] = p.device if p is not None else torch.device("cpu")
        module.to(device)

    def unload(self, name: str, module: nn.Module) -> None:
        home = self._home.pop(name, None)
        if home is not None:
            module.to(home)

    def outer(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class LazyBlocks:
    """A skeleton model: load reads a module's tensors from `source` in `dtype` (floating point
    tensors; others as stored) onto the device (CPU when None); unload puts the meta tensors back."""

    lazy = True

    def __init__(self, source: WeightSource, dtype: torch.dtype = torch.float32, aliases: dict[str, str] | None = None):
        self.source, self.dtype = source, dtype
        self.aliases = aliases or {}  # tied names absent from the files -> the name they are stored under
        self._saved: dict[str, dict[str, Tensor]] = {}

    def load(self, name: str, module: nn.Module, device, dtype: torch.dtype | None = None) -> None:
        """`dtype` overrides the loader's for floating point tensors (e.g. the save dtype of
        tensors only written out: stored -> save dtype directly rounds exactly as through float32)."""
        names = tensor_names(module, name)
        stored = {full: full if full in self.source else self.aliases.get(full, full) for full in names}
        missing = [full for full, s in stored.items() if s not in self.source]
        if missing:
            raise UserError(f"{self.source.dir}: the checkpoint has no tensor {missing[0]} (the model's config "
                            "expects it); is the directory complete?")
        tensors = self.source.read(sorted(set(stored.values())))
        saved = {}
        for full, rel in names.items():
            t = tensors[stored[full]]
            t = t.to(dtype or self.dtype) if t.is_floating_point() else t
            saved[rel] = _set(module, rel, t.to(device or "cpu"))
        self._saved[name] = saved

    def unload(self, name: str, module: nn.Module) -> None:
        for rel, old in self._saved.pop(name, {}).items():
            _set(module, rel, old)

    @contextlib.contextmanager
    def outer(self, model: nn.Module) -> Iterator[None]:
        """Every module outside the decoder blocks except the output head, on the CPU (what a
        forward up to the first block needs: embeddings, positions)."""
        prefix, _ = find_blocks(model)
        head = model.get_output_embeddings()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        embed_ids = {id(p) for p in model.get_input_embeddings().parameters()}
        loaded = []
        for name, module in model.named_modules():
            if name == prefix or name.startswith(prefix + ".") or not name:
                continue
            own = list(module.parameters(recurse=False))
            if not own or any(id(p) in head_ids and id(p) not in embed_ids for p in own):
                continue
            flat = OwnTensors(module)
            self.load(name, flat, None)
            loaded.append((name, flat))
        try:
            yield
        finally:
            for name, flat in loaded:
                self.unload(name, flat)


def tied_aliases(model: nn.Module, source: WeightSource) -> dict[str, str]:
    """Names sharing one parameter (a tied lm_head) -> the name that is in the files."""
    groups: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    out = {}
    for names in groups.values():
        stored = [n for n in names if n in source]
        if stored:
            out.update({n: stored[0] for n in names if n not in source})
    return out


def lazy_model(model_dir: Path, trust_remote_code: bool = False) -> tuple[nn.Module, LazyBlocks]:
    """The skeleton of `model_dir` and the loader of its blocks (float32 compute)."""
    model = skeleton(model_dir, trust_remote_code)
    source = WeightSource(model_dir)
    return model, LazyBlocks(source, torch.float32, tied_aliases(model, source))


def missing_tensors(model: nn.Module, blocks: LazyBlocks) -> list[str]:
    """Tensors the skeleton expects that the files lack (checkpoints whose names transformers
    converts while loading, e.g. older or fused layouts): such a model is loaded whole instead."""
    names = tensor_names(model, "")
    return [n for n in names if n not in blocks.source and blocks.aliases.get(n, n) not in blocks.source]
