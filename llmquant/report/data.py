"""What a report shows, gathered from leaderboard rows (and, for per-layer errors and winners, the run
directories they came from). Plain data, no rendering: one `Group` per model and protocol key, so
results measured under different protocols never share a table or a plot."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..board import Row, group_by_protocol, protocol_name, result_row
from ..runs import read_json

LayerReport = list[dict]  # [{"module": str, "rel_error": float, "bits": int, ...}], as quantizers write it


@dataclass(frozen=True)
class Winner:
    run_dir: str
    name: str | None  # None: no variant qualified
    reason: str

    @property
    def run(self) -> str:
        return Path(self.run_dir).name


@dataclass
class Group:
    model: str
    protocol_key: str
    protocol: str  # the protocol's one-line description
    protocol_name: str  # gptq-paper | lm-eval-word | llama-cpp
    rows: list[dict]  # ranked: baselines first, then by perplexity; with deltas and "label"
    layers: dict[str, LayerReport] = field(default_factory=dict)  # label -> per-layer report
    winners: list[Winner] = field(default_factory=list)

    @property
    def word_ppl(self) -> bool:
        return self.protocol_name == "lm-eval-word"


@dataclass
class Report:
    title: str
    groups: list[Group]
    subtitle: str = ""
    generated: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))


def _pct(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return (value / base - 1.0) * 100.0


def with_deltas(rows: list[dict]) -> list[dict]:
    """Copies of `rows` with deltas against the baseline of the same run (else the group's first
    baseline): delta_ppl_pct, size_ratio, ttft_delta_pct, decode_delta_pct; and a display `label`
    (the variant, prefixed by its run where two runs share a variant name)."""
    bases = [r for r in rows if r.get("is_baseline")]
    by_run = {r.get("run_dir"): r for r in bases}
    names = [r.get("variant") for r in rows]
    out = []
    for r in rows:
        b = by_run.get(r.get("run_dir")) or (bases[0] if bases else None)
        d = dict(r)
        d["label"] = f"{r.get('run')}/{r.get('variant')}" if names.count(r.get("variant")) > 1 else str(r.get("variant"))
        if b is not None:
            d["delta_ppl_pct"] = 0.0 if r.get("is_baseline") else _pct(r.get("ppl"), b.get("ppl"))
            d["size_ratio"] = r["size_bytes"] / b["size_bytes"] if r.get("size_bytes") and b.get("size_bytes") else None
            d["ttft_delta_pct"] = _pct(r.get("ttft_ms_median"), b.get("ttft_ms_median"))
            d["decode_delta_pct"] = _pct(r.get("decode_tok_s"), b.get("decode_tok_s"))
        out.append(d)
    return out


_BLOCK = re.compile(r"^(?P<prefix>.*?)\.(?P<block>\d+)\.(?P<kind>.+)$")


def split_module(name: str) -> tuple[int | None, str]:
    """'model.layers.3.self_attn.q_proj' -> (3, 'self_attn.q_proj'); (None, name) outside blocks."""
    m = _BLOCK.match(name)
    return (int(m["block"]), m["kind"]) if m else (None, name)


def layers_from_run_dir(run_dir: str | Path, variant: str) -> LayerReport | None:
    """The per-layer report a quantizer left in <run_dir>/variants/<variant>/manifest.json."""
    root = Path(run_dir)
    path = root / "variants" / variant / "manifest.json"
    if root.resolve() not in path.resolve().parents:  # a variant name never reads outside its run
        return None
    layers = ((read_json(path) or {}).get("summary") or {}).get("layers")
    ok = isinstance(layers, list) and all(isinstance(x, dict) and "module" in x and "rel_error" in x for x in layers)
    return layers if ok and layers else None


def winner_from_run_dir(run_dir: str | Path, protocol_key: str) -> Winner | None:
    """The winner a run recorded in results.json, when that run was measured under `protocol_key`."""
    from ..eval.results import EvalResult

    data = read_json(Path(run_dir) / "results.json")
    try:
        if EvalResult.from_dict(data["baseline"]).protocol.key != protocol_key:
            return None
        w = data["winner"]
        return Winner(run_dir=str(run_dir), name=w.get("name"), reason=str(w.get("reason", "")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def build_groups(rows: list[Row] | list[dict], layers: dict[str, LayerReport] | None = None,
                 winners: list[Winner] | None = None, read_run_dirs: bool = False) -> list[Group]:
    """One Group per (model, protocol key). Per-layer reports come from `layers` (by variant name) or,
    with `read_run_dirs`, from each row's run directory; so do winners."""
    rows = [r if isinstance(r, Row) else Row(r) for r in rows]
    groups = []
    for (model, key), ranked in group_by_protocol(rows).items():
        g = Group(model=model, protocol_key=key, protocol=str(ranked[0].get("protocol") or ""),
                  protocol_name=protocol_name(ranked[0]), rows=with_deltas(ranked))
        for r in g.rows:
            if r.get("is_baseline"):
                continue
            rep = (layers or {}).get(r["variant"])
            if rep is None and read_run_dirs and r.get("run_dir"):
                rep = layers_from_run_dir(r["run_dir"], r["variant"])
            if rep:
                g.layers[r["label"]] = rep
        if winners is not None:
            g.winners = list(winners)
        elif read_run_dirs:
            run_dirs = dict.fromkeys(r["run_dir"] for r in g.rows if r.get("run_dir"))
            g.winners = [w for d in run_dirs if (w := winner_from_run_dir(d, key)) is not None]
        _mark_winners(g)
        groups.append(g)
    return groups


def _same_dir(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()


def _mark_winners(g: Group) -> None:
    for r in g.rows:
        r["is_winner"] = any(w.name is not None and r.get("variant") == w.name and not r.get("is_baseline")
                             and _same_dir(r.get("run_dir"), w.run_dir) for w in g.winners)


def rows_from_results(results: dict, run_dir: str | Path, run: str | None = None) -> list[dict]:
    """Leaderboard rows rebuilt from a run's results.json (to re-render a report from its run directory)."""
    from ..eval.results import EvalResult

    base = EvalResult.from_dict(results["baseline"])
    common = dict(run=run or Path(run_dir).name, run_dir=str(run_dir), model=results.get("model", "?"),
                  model_hash="", baseline_ppl=base.ppl)
    rows = [result_row(**common, variant="baseline", method="none", bits=None, group_size=None, fmt="hf",
                       is_baseline=True, result=base, artifact="", artifact_hash="")]
    for v in results.get("variants", []):
        cfg = (v.get("quantize") or {}).get("config") or {}
        rows.append(result_row(**common, variant=v["name"], method=v.get("method", "?"), bits=cfg.get("bits"),
                               group_size=cfg.get("group_size"), fmt=(v.get("quantize") or {}).get("format", "?"),
                               is_baseline=False, result=EvalResult.from_dict(v["result"]),
                               artifact=v.get("checkpoint", ""), artifact_hash=v.get("key", ""),
                               backend=(v.get("quantize") or {}).get("backend")))
    return rows


def run_report_data(results: dict, run_dir: str | Path, title: str, rows: list[dict] | None = None) -> Report:
    """The report of one run: its rows, its per-layer reports and its winner, from results.json's content."""
    rows = rows if rows is not None else rows_from_results(results, run_dir)
    layers = {v["name"]: v["quantize"]["layers"] for v in results.get("variants", [])
              if isinstance(v.get("quantize"), dict) and v["quantize"].get("layers")}
    w = results.get("winner") or {}
    winner = Winner(run_dir=str(run_dir), name=w.get("name"), reason=str(w.get("reason", "")))
    sel = results.get("select") or {}
    sub = f"policy {sel.get('policy')}, max perplexity increase {sel.get('max_ppl_increase_pct')} %" if sel else ""
    return Report(title=title, groups=build_groups(rows, layers=layers, winners=[winner]), subtitle=sub)


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{path}: no readable results.json ({e})") from None
