"""Per-layer weight error of a peer's checkpoint, measured the way our quantizers report it
(||W - dequantized|| / ||W|| against the base model's weight), read back with our readers, so
the report's per-layer plots put the peer beside ours."""

from __future__ import annotations

from pathlib import Path

from ..formats.load import inspect_checkpoint, read_tensors
from ..formats.table import FORMATS
from ..quantize.metrics import relative_error


def layer_errors(checkpoint: Path, base_dir: Path) -> list[dict]:
    """[{"module", "bits", "group_size", "rel_error"}] for every packed layer of `checkpoint`."""
    info = inspect_checkpoint(checkpoint)
    fmt = FORMATS.get(info.method)
    if fmt is None or fmt.read_layers is None:
        return []
    state = read_tensors(checkpoint)
    layers = dict(fmt.read_layers(checkpoint, info, state))
    wanted = {f"{name}.weight" for name in layers}
    base = read_tensors(base_dir, names=lambda k: k in wanted)
    rows = []
    for name, w in layers.items():
        ref = base.get(f"{name}.weight")
        if ref is None or tuple(ref.shape) != (w.out_features, w.in_features):
            continue
        group = w.in_features // w.n_groups if w.n_groups > 1 else -1
        rows.append({"module": name, "bits": w.bits, "group_size": group, "rel_error": relative_error(ref, w.dequantize())})
    return rows
