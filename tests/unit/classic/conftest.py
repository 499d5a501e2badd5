"""Fixtures for the classic path: a small CNN trained on scikit-learn's bundled digits and a
tiny BERT classifier trained on a synthetic text task, each in seconds on one thread."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from llmquant.classic.data import Splits, load_dataset, make_splits
from llmquant.classic.recipe import ClassicDataSpec
from llmquant.classic.train import fit
from llmquant.classic.zoo import digits_cnn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Shared cores: two threads that wait for each other make timings and tests erratic.
    Module scope: the setting is restored before tests outside this directory run."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def digits_splits() -> Splits:
    ds = load_dataset(ClassicDataSpec(source="builtin:digits"), Path("."))
    return make_splits(ds, 0.2, 256, 0)


def train_digits_cnn(splits: Splits, epochs: int = 8, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = digits_cnn().train()
        fit(net, splits.train, epochs, 1e-2, 64, seed)
    return net.eval()


@pytest.fixture(scope="session")
def digits_model(digits_splits, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """(trained CNN, its state_dict file)."""
    net = train_digits_cnn(digits_splits)
    path = tmp_path_factory.mktemp("digits") / "cnn.pt"
    torch.save(net.state_dict(), path)
    return net, path


# -- tiny BERT on a synthetic task -------------------------------------------------------------------

POSITIVE = [f"good{i}" for i in range(4)]
NEGATIVE = [f"bad{i}" for i in range(4)]
NEUTRAL = [f"w{i}" for i in range(40)]


def synthetic_texts(n: int, seed: int) -> list[dict]:
    """Label "pos" when the sentence holds a positive word, "neg" when it holds a negative one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(NEUTRAL, k=rng.randint(6, 12))
        label = rng.choice(["pos", "neg"])
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def build_word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *POSITIVE, *NEGATIVE, *NEUTRAL])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> tuple[Path, Path]:
    """(HF directory of a trained tiny BertForSequenceClassification, jsonl data file)."""
    from transformers import BertConfig, BertForSequenceClassification

    from llmquant.classic.data import tokenize

    root = tmp_path_factory.mktemp("tiny-bert")
    rows = synthetic_texts(700, seed=0)
    data = root / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_word_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2,
                     label2id={"neg": 0, "pos": 1}, id2label={0: "neg", 1: "pos"})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForSequenceClassification(cfg)
        ids, mask = tokenize(tok, [r["text"] for r in rows], 16)
        y = torch.tensor([cfg.label2id[r["label"]] for r in rows])
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(4):
            for i in range(0, len(rows), 32):
                out = model(input_ids=ids[i:i + 32], attention_mask=mask[i:i + 32], labels=y[i:i + 32])
                opt.zero_grad()
                out.loss.backward()
                opt.step()
    model.eval()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model", data
