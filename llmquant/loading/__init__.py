"""Where a model comes from and what it runs on:

  sources.py  local HF directory / .gguf file / hub id / alias: resolving, fetching (offline errors),
              fingerprinting, the config, a GGUF de-quantized into a plain HF directory
  models.py   reading a model and its tokenizer from an HF directory, with one-line errors
  runtime.py  compute dtypes, the device, CPU threads

New code imports from those modules. The names below are re-exported only for the callers that
still import `llmquant.loading` (kept so that the split did not touch their files); importing this
package imports torch, as the single module did.
"""

from .models import TOKENIZER_FILES, load_error, load_hf_model, load_tokenizer
from .runtime import DTYPES, cpu_has_bf16, pick_device, resolve_dtype, set_threads
from .sources import (
    ALIASES,
    HUB_ID_RE,
    WEIGHT_SUFFIXES,
    Alias,
    ModelSource,
    fetch_hub,
    fingerprint,
    is_hf_dir,
    load_config,
    local_dir,
    materialize_base,
    read_config_json,
    resolve_source,
    weights_size,
)

__all__ = [
    "ALIASES", "DTYPES", "HUB_ID_RE", "TOKENIZER_FILES", "WEIGHT_SUFFIXES", "Alias", "ModelSource",
    "cpu_has_bf16", "fetch_hub", "fingerprint", "is_hf_dir", "load_config", "load_error", "load_hf_model",
    "load_tokenizer", "local_dir", "materialize_base", "pick_device", "read_config_json", "resolve_dtype",
    "resolve_source", "set_threads", "weights_size",
]
