"""Reading a model and its tokenizer from a Hugging Face directory, with one-line errors for the
ways a directory can be unreadable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .runtime import DTYPES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tokenizer_config.json")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = Path(path)
    if path.is_dir() and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise UserError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                        "copy the tokenizer of the original model into this directory")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{path}: no usable tokenizer ({first_line(e)})") from None


def load_error(path: Path, e: BaseException) -> UserError | None:
    """A one-line UserError for the ways a model directory can be unreadable, else None (a bug)."""
    import pickle

    name = type(e).__name__
    if name == "SafetensorError":
        return UserError(f"{path}: corrupted or truncated safetensors file ({first_line(e)})")
    if isinstance(e, pickle.UnpicklingError):
        return UserError(f"{path}: refusing to load pickled weights that hold more than tensors (only "
                         "torch.load(weights_only=True) is allowed); convert the checkpoint to safetensors")
    if isinstance(e, (OSError, ValueError, KeyError)):
        return UserError(f"{path}: cannot load model ({first_line(e)})")
    return None


def load_hf_model(path: Path, dtype: str, device: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except Exception as e:
        err = load_error(path, e)
        if err is None:
            raise
        raise err from None
    return model.to(device).eval()
