"""The job a peer worker gets: a JSON file naming the base model, our calibration crops (a
safetensors file with "input_ids" [n_samples, seqlen]), our settings, and where to write.

Settings are OUR names and values; each worker maps them to its tool's API (and records
what it passed as "peer_config" in its result).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

JOB_VERSION = 1  # must equal worker_common.JOB_VERSION
SETTINGS = {
    "gptq": ("bits", "group_size", "sym", "desc_act", "static_groups", "act_group_aware", "damp_percent",
             "true_sequential", "block_size", "quantize_lm_head"),
    "awq": ("bits", "group_size", "quantize_lm_head"),
    "signround": ("bits", "group_size", "sym", "iters", "lr", "minmax_lr", "batch_size", "seed"),
}
"""Our settings passed to a peer, per method (the rest of a variant: name, save_dtype, backend);
AWQ's grid goes as `sym` (not zero_point), the name both peers use."""


@dataclass(frozen=True)
class PeerJob:
    method: str
    model_dir: str
    calibration: str
    out_dir: str
    result: str
    settings: dict
    save_dtype: str  # the dtype our own checkpoints store unquantized tensors in
    dtype: str = "float32"  # the peer's compute dtype while quantizing
    seed: int = 0
    version: int = JOB_VERSION

    def to_dict(self) -> dict:
        return asdict(self)


def settings_for(method: str, variant) -> dict:
    settings = {k: getattr(variant, k) for k in SETTINGS[method] if hasattr(variant, k)}
    if method == "awq":
        settings["sym"] = not variant.zero_point
    return settings


def make_job(method: str, variant, model_dir: Path, calibration: Path, out_dir: Path, result: Path,
             save_dtype: str, seed: int = 0) -> PeerJob:
    return PeerJob(method=method, model_dir=str(model_dir), calibration=str(calibration), out_dir=str(out_dir),
                   result=str(result), settings=settings_for(method, variant), save_dtype=save_dtype, seed=seed)
