"""`llmquant eval PATH`: evaluate a checkpoint someone already has, on our protocol."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_dir

from ..board import Board, result_row
from ..data import cached_tokens, check_eval_length, load_corpus
from ..errors import UserError
from ..formats.load import CheckpointInfo, inspect_checkpoint
from ..loading.models import load_tokenizer
from ..loading.runtime import pick_device, resolve_dtype
from ..loading.sources import fingerprint, resolve_source
from ..progress import Progress
from ..recipe import DatasetSpec
from ..runs import content_hash
from ..steps import cached_file
from .evaluate import EvalJob, evaluate_checkpoint, evaluate_isolated
from .protocols import eval_tensors, tensors_bytes, tensors_sha256


def _tokenizer_for(path: Path, info: CheckpointInfo):
    if info.format == "gguf":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return load_tokenizer(path)


def evaluate_path(path: Path, dataset: str, split: str | None, field: str, seqlen: int, max_windows: int | None,
                  dtype: str, device: str, latency: bool, model_label: str | None, board_path: Path | None,
                  isolate: bool, progress: Progress, cache_dir: Path | None = None, protocol: str = "gptq-paper",
                  compile_kernels: bool = False):
    path = Path(path)
    info = inspect_checkpoint(path)
    device = pick_device(device)
    cache = Path(cache_dir) if cache_dir else Path(user_cache_dir("llmquant")) / "eval"
    src = resolve_source(str(path.resolve()), Path.cwd(), field="PATH")
    model_hash = fingerprint(src) if src.kind == "gguf" else content_hash(
        {"dir": str(path.resolve()), "size": info.size_bytes})
    with progress.task("eval data", total=None):
        tok = _tokenizer_for(path, info)
        corpus = load_corpus(DatasetSpec(source=dataset, split=split, field=field), Path.cwd(), "--dataset")
        ids = cached_tokens(cache, {"tokenizer": type(tok).__name__, "vocab": len(tok), "corpus": corpus.sha256,
                                    "tok": content_hash(sorted(tok.get_vocab().items())[:2000])}, tok, corpus.text)
        try:
            if protocol == "gptq-paper":
                check_eval_length(ids, seqlen, corpus.label)
            tensors = eval_tensors(protocol, tok, corpus.text, ids)
        except UserError as e:
            raise UserError(str(e).replace("eval.seqlen", "--seqlen").replace("eval.dataset", "--dataset")
                            .replace("eval.protocol", "--protocol")) from None
        tokens_path = cache / f"stream-{tensors_sha256(tensors)[:16]}.safetensors"  # the name carries the key
        cached_file(tokens_path, lambda: tensors_bytes(tensors))
    job = EvalJob(checkpoint=str(path.resolve()), tokens_path=str(tokens_path), corpus=corpus.label,
                  corpus_sha256=corpus.sha256, seqlen=seqlen, max_windows=max_windows,
                  dtype=resolve_dtype(dtype, device), device=device, check_windows=2,
                  latency={"prompt_tokens": 128, "decode_tokens": 32, "repeats": 5, "warmup": 1} if latency else None,
                  protocol=protocol, compile_kernels=compile_kernels)
    with progress.task(f"evaluate {path.name}", total=None):
        if isolate:
            result = evaluate_isolated(job, cache / "logs" / content_hash(job.to_json()), progress)
        else:
            result = evaluate_checkpoint(job, progress)
    board = Board(board_path)
    label = model_label or path.name
    base = next((r for r in board.rows(model=label, protocol_key=result.protocol.key) if r.is_baseline), None)
    board.record([result_row(
        run="eval", run_dir=str(path.resolve()), model=label, model_hash=model_hash, variant=path.name,
        method=info.method, bits=info.bits, group_size=info.group_size, fmt=info.format, is_baseline=False,
        result=result, baseline_ppl=base.ppl if base else None, artifact=str(path.resolve()),
        artifact_hash=model_hash)])
    return result, info
