"""A stand-in for the `gptqmodel` package, for tests of the peer protocol on machines without it.

tests/unit/test_peer_backends.py installs this file as `gptqmodel/__init__.py` (with a
dist-info saying version 7.6.0) in a temporary site directory, behind a fake interpreter
script, and llmquant runs its real gptqmodel worker against it. It offers the slice of
gptqmodel's API that the worker calls: QuantizeConfig, GPTQModel.load, .model, .quantize,
.save, gptqmodel.version.__version__.

What it does is known exactly, so tests can check the protocol: it runs the base model on every
calibration sample it is given (so the worker's per-block progress fires), records those token
ids and the config it got in $FAKE_PEER_RECORD (JSON), and writes a GPTQ v1 checkpoint with
llmquant's own RTN quantizer and writer; a variant `rtn` with the same bits/group/sym must
therefore score exactly the same. With `method="awq"` it writes an AWQ GEMM checkpoint of the
same round-to-nearest grid (zero points when sym is false), so an `rtn` variant with sym: false
scores the same. $FAKE_PEER_FAIL makes `quantize` raise.
"""

from __future__ import annotations

import json
import os


class BACKEND:
    TORCH_AWQ = "torch_awq"


class QuantizeConfig:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class GPTQModel:
    def __init__(self, model_dir: str, qc: QuantizeConfig, model):
        self.model_dir = model_dir
        self.qc = qc
        self.model = model
        self.seen: list[list[int]] = []

    @classmethod
    def load(cls, model_dir: str, qc: QuantizeConfig, dtype=None):
        from transformers import AutoModelForCausalLM

        return cls(model_dir, qc, AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype))

    def quantize(self, calibration: list[dict], batch_size: int = 1, backend=None) -> None:
        import torch

        if os.environ.get("FAKE_PEER_FAIL"):
            raise RuntimeError(os.environ["FAKE_PEER_FAIL"])
        with torch.no_grad():
            for sample in calibration:
                ids = torch.tensor([sample["input_ids"]])
                self.model(input_ids=ids, attention_mask=torch.tensor([sample["attention_mask"]]))
                self.seen.append(list(sample["input_ids"]))
        record = os.environ.get("FAKE_PEER_RECORD")
        if record:
            with open(record, "w") as f:
                json.dump({"input_ids": self.seen, "config": self.qc.kwargs, "backend": backend,
                           "dtype": str(next(self.model.parameters()).dtype)}, f)

    def save(self, out_dir: str) -> None:
        from pathlib import Path

        from transformers import AutoTokenizer

        from llmquant.quantize.base import QuantizeContext
        from llmquant.quantize.rtn.quantizer import RTNQuantizer
        from llmquant.quantize.rtn.config import RTNVariant

        kw = self.qc.kwargs
        if kw.get("method") == "awq":
            return self._save_awq(out_dir)
        variant = RTNVariant(name="fake", method="rtn", bits=kw["bits"], group_size=kw["group_size"], sym=kw["sym"])
        ctx = QuantizeContext(tokenizer=AutoTokenizer.from_pretrained(self.model_dir), model_dir=Path(self.model_dir))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        RTNQuantizer().quantize(self.model, variant, None, Path(out_dir), ctx)

    def _save_awq(self, out_dir: str) -> None:
        from pathlib import Path

        from torch import nn
        from transformers import AutoTokenizer

        from llmquant.formats.intweight import IntWeight
        from llmquant.formats.write import write_quantized
        from llmquant.quantize.grid import group_index, quantize_rtn
        from llmquant.quantize.targets import find_blocks
        from llmquant.quantize.awq.config import AWQVariant

        kw = self.qc.kwargs
        prefix, blocks = find_blocks(self.model)
        layers = {}
        for i, block in enumerate(blocks):
            for sub, m in block.named_modules():
                if isinstance(m, nn.Linear):
                    q, scales, zeros = quantize_rtn(m.weight.detach().float(), kw["bits"], kw["group_size"], kw["sym"])
                    layers[f"{prefix}.{i}.{sub}"] = IntWeight(q, scales, zeros, group_index(m.in_features, kw["group_size"]),
                                                              kw["bits"])
        variant = AWQVariant(name="fake", method="awq", bits=kw["bits"], group_size=kw["group_size"],
                             zero_point=not kw["sym"])
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_quantized(self.model, layers, "awq", variant, AutoTokenizer.from_pretrained(self.model_dir),
                        Path(out_dir))
