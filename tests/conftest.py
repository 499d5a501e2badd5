"""Shared fixtures: a tiny Llama trained for a few seconds on text every Python ships,
so tests exercise real behaviour on any fresh machine without a download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmquant.cpu import cpu_info, isolate_inductor_cache  # noqa: E402

isolate_inductor_cache()  # torch.compile kernels must not cross dispatch capabilities


def pytest_report_header(config):
    return f"llmquant cpu: {cpu_info().line()}"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pydoc_text(split: str = "train") -> str:
    from llmquant.data import _pydoc_text

    return _pydoc_text(split, "test")


def build_tokenizer(text: str, vocab: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([text], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")
    return tok


def train_tiny_llama(out: Path, layers: int = 3, hidden: int = 64, intermediate: int = 128, steps: int = 120,
                     seed: int = 0, tie: bool = True) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    text = pydoc_text("train")
    tok = build_tokenizer(text)
    ids = tok(text, return_tensors="pt").input_ids[0]
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                      max_position_embeddings=1024, tie_word_embeddings=tie,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - 129, (8,), generator=g)
        x = torch.stack([ids[s:s + 128] for s in starts])
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def load_fp32(model_dir: Path):
    """An HF model directory loaded in float32, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return train_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_untied_dir(tmp_path_factory) -> Path:
    return train_tiny_llama(tmp_path_factory.mktemp("tiny-untied") / "model", layers=2, tie=False, steps=60)


@pytest.fixture()
def board_path(tmp_path, monkeypatch) -> Path:
    p = tmp_path / "board.sqlite"
    monkeypatch.setenv("LLMQUANT_BOARD", str(p))
    return p


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture()
def tiny_recipe(tmp_path, tiny_model_dir):
    """A recipe for the tiny model: baseline + RTN W8/W4, quick protocol, in-process eval."""

    def make(variants: str | None = None, extra: str = "", isolate: bool = False) -> Path:
        v = variants if variants is not None else """
  - {name: w8, method: rtn, bits: 8, group_size: 32}
  - {name: w4, method: rtn, bits: 4, group_size: 32}
  - {name: w3, method: rtn, bits: 3, group_size: 32}
"""
        return write_recipe(tmp_path / "recipe.yaml", f"""
name: tiny
model: {{source: {tiny_model_dir}, dtype: float32, device: cpu}}
eval:
  dataset: {{source: "builtin:pydoc", split: test}}
  seqlen: 128
  max_windows: 8
  isolate: {str(isolate).lower()}
  latency: {{prompt_tokens: 16, decode_tokens: 4, repeats: 2, warmup: 1}}
variants:{v}
output: {{dir: {tmp_path / 'run'}, board: {tmp_path / 'board.sqlite'}}}
{extra}
""")

    return make


def requires_shared(*parts: str):
    path = SHARED.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"needs {path} (the team's ../shared corpora); absent here")


class Crash(Exception):
    """A simulated kill of a quantize run (crash_after_block)."""


@pytest.fixture()
def crash_after_block(monkeypatch):
    """`with crash_after_block(1): quantize(...)`: the sequential loop writes block 1's resume
    state, then the run dies (the block absorbs that crash, and fails the test if the run never got
    there); leaving the block undoes the patch."""
    import contextlib

    from llmquant.quantize import sequential

    real_save = sequential._StateStore.save

    @contextlib.contextmanager
    def crash(index: int):
        def save_then_crash(self, i, result):
            real_save(self, i, result)
            if i == index:
                raise Crash(f"killed after block {index}")

        monkeypatch.setattr(sequential._StateStore, "save", save_then_crash)
        try:
            yield
        except Crash:
            return
        finally:
            monkeypatch.setattr(sequential._StateStore, "save", real_save)
        pytest.fail(f"the run finished without reaching the crash after block {index}")

    return crash


@pytest.fixture(scope="session")
def tiny_calib(tiny_model_dir):
    """(CalibrationSet of 12 random 64-token crops of the pydoc train text, seed 0; tokenizer)."""
    from transformers import AutoTokenizer

    from llmquant.quantize.base import CalibrationSet

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(pydoc_text("train"), return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, ids.shape[1] - 65, (12,), generator=g)
    return CalibrationSet(torch.stack([ids[0, s:s + 64] for s in starts]), "tiny-calib"), tok
