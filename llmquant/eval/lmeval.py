"""Word perplexity the way lm-evaluation-harness's `wikitext` task measures it ("lm-eval-word").

The rules, read from EleutherAI/lm-evaluation-harness:
- documents (`lm_eval/tasks/wikitext/wikitext.yaml`: dataset EleutherAI/wikitext_document_level,
  `page` field; the builder `wikitext_document_level.py`): the raw text is split on "\\n"; a line
  starts a new page when, after "= = =" -> "===" and "= =" -> "==" and stripping, it starts with
  "= " and ends with " ="; a page is its lines joined with "\\n"; blank pages are dropped;
- what is scored (`preprocess_wikitext.py: wikitext_detokenizer`): the page with wikitext's
  tokenisation undone (" @-@ " -> "-", " , " -> ", ", bracket spacing, ...), encoded without
  special tokens (HFLM.tok_encode for causal models);
- rolling windows (`lm_eval/utils.py: get_rolling_token_windows(..., context_len=1)` +
  `make_disjoint_window`, as called by HFLM.loglikelihood_rolling): the document's tokens are
  predicted in non-overlapping spans of max_length tokens; the first span is conditioned on the
  prefix token (BOS, else EOS), every later one on the max_length tokens before its end
  (`_loglikelihood_tokens` feeds (context + continuation)[-(max_length + 1):][:-1]);
- words (`preprocess_wikitext.py: process_results`): len(re.split(r"\\s+", page)) of the
  *original* page, before detokenisation;
- word_perplexity = exp(sum of document NLL / sum of words) (`weighted_perplexity`).
Applied to a corpus without wikitext headings, the whole text is one document.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import islice
from typing import Iterator

import torch
from torch import Tensor, nn

from ..progress import NULL_PROGRESS, Progress
from .perplexity import PerplexityResult, nll_at

PROTOCOL_NAME = "lm-eval-word"

# wikitext's tokenisation, undone: (pattern, replacement, is_regex), applied in this order
_DETOKENIZE: tuple[tuple[str, str, bool], ...] = (
    ("s '", "s'", False),
    (r"/' [0-9]/", r"/'[0-9]/", True),
    (" @-@ ", "-", False), (" @,@ ", ",", False), (" @.@ ", ".", False),
    (" : ", ": ", False), (" ; ", "; ", False), (" . ", ". ", False), (" ! ", "! ", False),
    (" ? ", "? ", False), (" , ", ", ", False),
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)", True), (r"\[\s*([^\]]*?)\s*\]", r"[\1]", True),
    (r"{\s*([^}]*?)\s*}", r"{\1}", True), (r"\"\s*([^\"]*?)\s*\"", r'"\1"', True),
    (r"'\s*([^']*?)\s*'", r"'\1'", True),
    ("= = = =", "====", False), ("= = =", "===", False), ("= =", "==", False),
    (" \u00b0 ", "\u00b0", False), (" \n", "\n", False), ("\n ", "\n", False),
    (" N ", " 1 ", False), (" 's", "'s", False),
)


def wikitext_detokenize(page: str) -> str:
    for old, new, is_regex in _DETOKENIZE:
        page = re.sub(old, new, page) if is_regex else page.replace(old, new)
    return page


def _is_heading(line: str) -> bool:
    r = line.replace("= = =", "===").replace("= =", "==").strip()
    return r.startswith("= ") and r.endswith(" =")


def wikitext_pages(text: str) -> list[str]:
    """The documents of a wikitext file: a new one at each top-level "= Title =" line."""
    pages, lines = [], []
    for line in text.split("\n"):
        if _is_heading(line) and lines:
            pages.append("\n".join(lines))
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return [p for p in pages if p.strip()]


def count_words(page: str) -> int:
    """lm-eval's word count: pieces of re.split on whitespace runs (edge whitespace counts one each)."""
    return len(re.split(r"\s+", page))


def rolling_spans(n_tokens: int, max_len: int) -> list[tuple[int, int, int]]:
    """(a, s, e) per window over seq = [prefix] + doc: the model reads seq[a:e] and its logits at
    seq positions s .. e - 1 predict doc[s:e] (= seq[s + 1:e + 1]). Spans of doc are consecutive
    blocks of max_len tokens (the last shorter); the input is the max_len tokens ending at e."""
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return [(max(0, min(s + max_len, n_tokens) - max_len), s, min(s + max_len, n_tokens))
            for s in range(0, n_tokens, max_len)]


@dataclass(frozen=True)
class Documents:
    """Tokenised documents: `ids` all documents' tokens back to back, `lengths` and `words` per document."""

    ids: Tensor  # [N]
    lengths: list[int]
    words: list[int]
    prefix_id: int

    def __iter__(self) -> Iterator[Tensor]:
        start = 0
        for n in self.lengths:
            yield self.ids[start:start + n]
            start += n


def window_count(lengths: list[int], max_len: int) -> int:
    return sum(len(rolling_spans(n, max_len)) for n in lengths)


@torch.inference_mode()
def document_nll(model: nn.Module, doc: Tensor, prefix_id: int, max_len: int, device: str | torch.device) -> float:
    """Sum of -log p over every token of one document, in lm-eval's rolling windows."""
    seq = torch.cat([torch.tensor([prefix_id], dtype=doc.dtype), doc]).unsqueeze(0)
    total = 0.0
    for a, s, e in rolling_spans(doc.numel(), max_len):
        x = seq[:, a:e].to(device)
        total += nll_at(model, x, s - a, seq[:, s + 1:e + 1].to(device))
    return total


def word_perplexity(model: nn.Module, docs: Documents, max_len: int, max_docs: int | None = None,
                    device: str | torch.device = "cpu", progress: Progress = NULL_PROGRESS) -> PerplexityResult:
    n = min(len(docs.lengths), max_docs) if max_docs else len(docs.lengths)
    if n == 0:
        raise ValueError("no documents to score")
    total, words, tokens = 0.0, 0, 0
    with progress.task("word perplexity (lm-eval rolling windows)", total=n) as advance:
        for i, doc in enumerate(islice(docs, n)):
            total += document_nll(model, doc, docs.prefix_id, max_len, device)
            words += docs.words[i]
            tokens += docs.lengths[i]
            advance(1, note=f"word ppl so far {math.exp(total / words):.3f}")
    return PerplexityResult(ppl=math.exp(total / words), nll_sum=total, tokens_scored=tokens,
                            windows=window_count(docs.lengths[:n], max_len), documents=n, words=words)
