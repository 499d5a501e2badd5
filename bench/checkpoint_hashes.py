"""Hashes of the checkpoints our quantizers write for one tiny model: run it in two checkouts to
show a refactor changed no byte (behaviour unchanged), e.g.

    git worktree add /tmp/old <commit>
    (cd /tmp/old && python /path/to/bench/checkpoint_hashes.py /tmp/tiny /tmp/out-old)
    python bench/checkpoint_hashes.py /tmp/tiny /tmp/out-new        # from this checkout

Prints {variant: [sha256 of the safetensors files, sha256 of quantization_config]}; the tiny
model (tests/conftest.py's, trained in a few seconds) is built at MODEL_DIR on first use.
One thread, so the numbers do not depend on the machine's core count.
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path[0] = "tests"  # not bench/: its kernels.py would shadow the `kernels` package transformers probes
from conftest import pydoc_text, train_tiny_llama  # noqa: E402

try:
    from llmquant.quantize.awq.config import AWQVariant
    from llmquant.quantize.gptq.config import GPTQVariant
    from llmquant.quantize.rtn.config import RTNVariant
except ImportError:  # checkouts from before each method owned its config
    from llmquant.recipe import AWQVariant, GPTQVariant, RTNVariant
from llmquant.quantize import get_quantizer  # noqa: E402
from llmquant.quantize.base import CalibrationSet, QuantizeContext  # noqa: E402

VARIANTS = [
    RTNVariant(name="rtn-w4", method="rtn", bits=4, group_size=32),
    RTNVariant(name="rtn-w3-asym", method="rtn", bits=3, group_size=32, sym=False),
    GPTQVariant(name="gptq-w4", method="gptq", bits=4, group_size=32),
    GPTQVariant(name="gptq-w3-actorder", method="gptq", bits=3, group_size=32, desc_act=True),
    AWQVariant(name="awq-w4", method="awq", bits=4, group_size=32, n_grid=5, clip_n_grid=5),
]


def main(model_dir: Path, out_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    if not model_dir.exists():
        train_tiny_llama(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(pydoc_text("train"), return_tensors="pt").input_ids
    starts = torch.randint(0, ids.shape[1] - 65, (12,), generator=torch.Generator().manual_seed(0))
    calib = CalibrationSet(torch.stack([ids[0, s:s + 64] for s in starts]), "hashes")
    out = {}
    for v in VARIANTS:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        d = out_dir / v.name
        get_quantizer(v.method).quantize(model, v, calib if v.method != "rtn" else None, d,
                                         QuantizeContext(tokenizer=tok, work_dir=out_dir / f"{v.name}-work"))
        tensors = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(d.glob("*.safetensors"))))
        qc = json.loads((d / "config.json").read_text())["quantization_config"]
        out[v.name] = [tensors.hexdigest()[:16], hashlib.sha256(json.dumps(qc, sort_keys=True).encode()).hexdigest()[:12]]
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2])), indent=1))
