"""AutoRound quantizes our calibration crops: `<auto-round venv>/bin/python autoround_worker.py JOB.json`.

Runs in the peer's venv and imports nothing from llmquant (worker_common sits beside it).
Tested with auto-round 0.16.1 on torch 2.13.0+cpu. Settings map one to one: bits, group_size,
sym, iters, lr, minmax_lr (0: enable_minmax_tuning off), batch_size, seed; nsamples and seqlen are
our crops' shape and the crops are its dataset (one [1, seqlen] tensor per sample). The model is
loaded in float32 and AutoRound's mixed precision is off (`amp=False`), as ours computes in float32.
Writes a GPTQ v1 checkpoint (format auto_gptq).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import worker_common as wc  # noqa: E402


def signround_config(s: dict, n_samples: int, seqlen: int) -> dict:
    iters = int(s["iters"])
    lr = s.get("lr")
    minmax_lr = s.get("minmax_lr")
    cfg = {"bits": s["bits"], "group_size": s["group_size"], "sym": s["sym"], "iters": iters,
           "nsamples": n_samples, "seqlen": seqlen, "batch_size": min(int(s["batch_size"]), n_samples),
           "seed": int(s.get("seed", 0)), "amp": False}
    if lr is not None:
        cfg["lr"] = lr
    if minmax_lr == 0:
        cfg["enable_minmax_tuning"] = False
    elif minmax_lr is not None:
        cfg["minmax_lr"] = minmax_lr
    return cfg


def move_up(staging: Path, out_dir: Path) -> None:
    """auto-round saves into a folder it names after the model and scheme (`<model>-w3g64`) under
    the directory it is given: its files go to `out_dir` itself."""
    saved = sorted({p.parent for p in staging.rglob("config.json")})
    if len(saved) != 1:
        raise RuntimeError(f"expected one checkpoint under {staging}, found {[str(p) for p in saved]}")
    for f in saved[0].iterdir():
        shutil.move(str(f), str(out_dir / f.name))
    shutil.rmtree(staging)


def quantize(job: dict, progress) -> dict:
    import torch
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(job.get("seed", 0))
    ids = wc.read_calibration(job["calibration"])
    n, seqlen = ids.shape
    cfg = signround_config(job["settings"], n, seqlen)
    dtype = job.get("dtype", "float32")
    t0 = time.perf_counter()
    with progress.task("signround (auto-round): load", None):
        model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=getattr(torch, dtype))
        tok = AutoTokenizer.from_pretrained(job["model_dir"])
    load_s = time.perf_counter() - t0
    layers = wc.decoder_layers(model)
    t0 = time.perf_counter()
    with progress.task("signround (auto-round): quantize", len(layers) or None) as advance:
        handles = wc.block_notes(layers, advance)
        ar = AutoRound(model, tokenizer=tok, dataset=[row.unsqueeze(0) for row in ids], device_map="cpu", **cfg)
        staging = Path(job["out_dir"]) / ".autoround"
        ar.quantize_and_save(str(staging), format="auto_gptq")
        for h in handles:
            h.remove()
        move_up(staging, Path(job["out_dir"]))
    seconds = time.perf_counter() - t0
    from auto_round.version import __version__

    return {"peer": "autoround", "version": __version__, "method": "signround", "dtype": dtype,
            "peer_config": {**cfg, "format": "auto_gptq"},
            "seconds": {"load": load_s, "quantize_and_save": seconds}}


METHODS = {"signround": quantize}

if __name__ == "__main__":
    sys.exit(wc.run(sys.argv[1:], METHODS))
