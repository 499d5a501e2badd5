"""Running a peer as a quantizer: our calibration crops to a file, a JSON job, the peer's worker
in the peer's interpreter (progress relayed as JSON lines), and a summary the pipeline records
like any quantizer's. The checkpoint it leaves is evaluated by our loader and protocol."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from safetensors.torch import save_file

from ..errors import UserError
from ..formats.load import inspect_checkpoint
from ..loading.sources import read_config_json
from ..progress import Progress
from ..runs import read_json
from ..worker_io import run_relayed
from . import BACKENDS
from .interpreter import Peer, peer_environ
from .job import make_job

log = logging.getLogger("llmquant")


def resolve_save_dtype(model_dir: Path, choice: str) -> str:
    """What our own writer would store unquantized tensors in (formats/checkpoint.save_dtype),
    read from config.json instead of a loaded model."""
    if choice != "auto":
        return choice
    cfg = read_config_json(Path(model_dir))
    return "bfloat16" if (cfg.get("dtype") or cfg.get("torch_dtype")) == "bfloat16" else "float16"


def threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def run_worker(cmd: list[str], env: dict, cwd: Path, log_path: Path, progress: Progress) -> int:
    """Start the worker, relay its progress lines (worker_io.py), and return its exit code. The peer
    library's own output goes to `log_path`; the worker is stopped if we are interrupted."""
    return run_relayed(cmd, env, log_path, progress, cwd=cwd)


class PeerQuantizer:
    """A `Quantizer` whose work is done by a peer tool in its own interpreter."""

    def __init__(self, method: str, peer: Peer):
        self.method = method
        self.peer = peer
        self.backend = BACKENDS[peer.backend]
        # part of the cache key: another peer version re-quantizes
        self.version = f"peer-1 {peer.backend} {peer.version}"

    def quantize(self, model, variant, calib, out_dir: Path, ctx):
        if calib is None:
            raise UserError(f"variants: {variant.name}: backend {self.peer.backend} needs a 'calibration' section")
        if ctx.model_dir is None or ctx.work_dir is None:
            raise ValueError("a peer needs ctx.model_dir (the base model directory) and ctx.work_dir")
        work = Path(ctx.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        calib_path = work / "calibration.safetensors"
        save_file({"input_ids": calib.input_ids.contiguous()}, str(calib_path), metadata={"key": calib.key})
        result_path = work / "peer-result.json"
        result_path.unlink(missing_ok=True)
        job = make_job(self.method, variant, Path(ctx.model_dir), calib_path, Path(out_dir), result_path,
                       resolve_save_dtype(Path(ctx.model_dir), variant.save_dtype))
        job_path = work / "peer-job.json"
        job_path.write_text(json.dumps(job.to_dict(), indent=2, sort_keys=True))
        n = threads()
        env = peer_environ({k: v.format(threads=n) for k, v in self.backend.env.items()})
        log_path = work / "peer.log"
        ignored = self.backend.ignored(self.method, variant)
        for setting, why in ignored.items():
            ctx.progress.message(f"{variant.name}: {self.peer.backend} ignores {setting}: {why}")
        # cwd is the work dir: gptqmodel writes a logs/ folder into its working directory
        rc = run_worker([self.peer.python, str(self.backend.worker_path), str(job_path)], env, work, log_path,
                        ctx.progress)
        result = read_json(result_path) or {}
        if rc != 0 or "error" in result or not result:
            why = result.get("error") or f"exit {rc}, no result written"
            raise UserError(f"variants: {variant.name}: {self.peer.label} failed: {why}; log: {log_path}")
        info = inspect_checkpoint(Path(out_dir))
        expected = self.backend.formats[self.method]
        if info.format != expected:
            raise UserError(f"variants: {variant.name}: {self.peer.label} wrote a {info.format} checkpoint, "
                            f"expected {expected}; log: {log_path}")
        from .layers import layer_errors

        config = {"bits": info.bits, "group_size": info.group_size, "sym": info.sym, "desc_act": info.desc_act,
                  "quantization_config": info.quant_config}
        from ..quantize.base import QuantizeResult

        return QuantizeResult(info.format, config, layer_errors(Path(out_dir), Path(ctx.model_dir)), {
            "backend": f"{result.get('peer', self.peer.backend)} {result.get('version', self.peer.version)}",
            "peer": {k: v for k, v in result.items() if k != "error"}, "ignored": ignored})
