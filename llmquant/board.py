"""The leaderboard: one SQLite row per evaluated variant, and its renderings.

Rows are written in one transaction per run (upserts keyed on run dir, variant and
protocol), with WAL journaling and a busy timeout so concurrent runs do not corrupt it.
Results from different protocols are never ranked together: renderings group by protocol.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from platformdirs import user_data_dir

from .errors import UserError

if TYPE_CHECKING:
    from .eval.results import EvalResult

COLUMNS = [
    ("created_at", "TEXT"), ("run", "TEXT"), ("run_dir", "TEXT"), ("model", "TEXT"), ("model_hash", "TEXT"),
    ("variant", "TEXT"), ("method", "TEXT"), ("bits", "INTEGER"), ("group_size", "INTEGER"),
    ("format", "TEXT"), ("is_baseline", "INTEGER"), ("size_bytes", "INTEGER"), ("ppl", "REAL"),
    ("delta_ppl_pct", "REAL"), ("ttft_ms_median", "REAL"), ("ttft_ms_p90", "REAL"),
    ("decode_tok_s", "REAL"), ("peak_rss_bytes", "INTEGER"), ("weights_bytes", "INTEGER"),
    ("protocol_key", "TEXT"), ("protocol", "TEXT"), ("version", "TEXT"), ("artifact", "TEXT"),
    ("artifact_hash", "TEXT"), ("result_json", "TEXT"),
    # generic task metrics (classic classifiers: accuracy in %), added later: migrated in by Board()
    ("metric_name", "TEXT"), ("metric", "REAL"), ("delta_metric_pts", "REAL"), ("latency_ms_median", "REAL"),
    ("latency_ms_p90", "REAL"), ("throughput", "REAL"), ("verdict", "TEXT"),
    # the peer tool that quantized the variant ("gptqmodel 7.6.0"); NULL for our own quantizers
    ("backend", "TEXT"),
    # the quantize step of the variant (its manifest): wall seconds, peak resident / device memory
    ("quantize_seconds", "REAL"), ("quantize_peak_rss_bytes", "INTEGER"), ("quantize_peak_device_bytes", "INTEGER"),
    # fidelity to the baseline (eval/fidelity.py): mean and p99 KL divergence, top-1 agreement (a fraction)
    ("kld_mean", "REAL"), ("kld_p99", "REAL"), ("top1", "REAL"),
]
NAMES = [c for c, _ in COLUMNS]
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    + ", ".join(f"{c} {t}" for c, t in COLUMNS)
    + ", UNIQUE(run_dir, variant, protocol_key))"
)


def migrate(con: sqlite3.Connection) -> None:
    """Add the columns a database made by an older llmquant lacks (existing rows get NULL)."""
    have = {r[1] for r in con.execute("PRAGMA table_info(results)")}
    for name, kind in COLUMNS:
        if name not in have:
            try:
                con.execute(f"ALTER TABLE results ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as e:  # another process added it first
                if "duplicate column" not in str(e):
                    raise


def default_board_path() -> Path:
    env = os.environ.get("LLMQUANT_BOARD")
    return Path(env) if env else Path(user_data_dir("llmquant")) / "board.sqlite"


@dataclass(frozen=True)
class Row:
    data: dict

    def __getattr__(self, k: str):
        try:
            return self.data[k]
        except KeyError:
            raise AttributeError(k) from None


class Board:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_board_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.execute(SCHEMA)
                migrate(con)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a usable leaderboard database ({e})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA busy_timeout=30000")
            con.row_factory = sqlite3.Row
            yield con
        finally:
            con.close()

    def record(self, rows: list[dict]) -> None:
        """Insert or replace all rows in one transaction: all land, or none."""
        if not rows:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        placeholders = ", ".join("?" for _ in NAMES)
        updates = ", ".join(f"{c}=excluded.{c}" for c in NAMES)
        sql = (f"INSERT INTO results ({', '.join(NAMES)}) VALUES ({placeholders}) "
               f"ON CONFLICT(run_dir, variant, protocol_key) DO UPDATE SET {updates}")
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    r = {"created_at": now, **r}
                    con.execute(sql, [r.get(c) for c in NAMES])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def rows(self, model: str | None = None, protocol_key: str | None = None, run: str | None = None) -> list[Row]:
        where, args = [], []
        for col, val in (("model", model), ("protocol_key", protocol_key), ("run", run)):
            if val:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM results" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        with self._connect() as con:
            return [Row(dict(r)) for r in con.execute(sql, args)]

    def find_baseline(self, model_hash: str, protocol_key: str) -> dict | None:
        """The stored result of a baseline with this model and protocol, for reuse."""
        with self._connect() as con:
            r = con.execute(
                "SELECT result_json FROM results WHERE is_baseline = 1 AND model_hash = ? AND protocol_key = ? "
                "ORDER BY id DESC LIMIT 1", (model_hash, protocol_key)).fetchone()
        return json.loads(r["result_json"]) if r and r["result_json"] else None


def result_row(*, run: str, run_dir: str, model: str, model_hash: str, variant: str, method: str,
               bits: float | None, group_size: int | None, fmt: str, is_baseline: bool, result: "EvalResult",
               baseline_ppl: float | None, artifact: str, artifact_hash: str,
               backend: str | None = None, quantize: dict | None = None) -> dict:
    """A leaderboard row for one evaluated checkpoint (`backend`: the peer tool that quantized it;
    `quantize`: the quantize step's measurements from the variant's manifest)."""
    from . import __version__

    lat, fid = result.latency, result.fidelity or {}
    return {
        "run": run, "run_dir": run_dir, "model": model, "model_hash": model_hash, "variant": variant,
        "method": method, "bits": bits, "group_size": group_size, "format": fmt, "is_baseline": int(is_baseline),
        "size_bytes": result.size_bytes, "ppl": result.ppl,
        "delta_ppl_pct": (result.ppl / baseline_ppl - 1.0) * 100.0 if baseline_ppl else None,
        "ttft_ms_median": lat.ttft_ms_median if lat else None, "ttft_ms_p90": lat.ttft_ms_p90 if lat else None,
        "decode_tok_s": lat.decode_tok_s if lat else None, "peak_rss_bytes": result.peak_rss_bytes,
        "weights_bytes": result.weights_bytes, "protocol_key": result.protocol.key,
        "protocol": result.protocol.describe(), "version": __version__, "artifact": artifact,
        "artifact_hash": artifact_hash, "result_json": json.dumps(result.to_dict(), sort_keys=True, default=str),
        "backend": backend,
        **{k: (quantize or {}).get(k) for k in ("quantize_seconds", "quantize_peak_rss_bytes",
                                                 "quantize_peak_device_bytes")},
        "kld_mean": fid.get("kld_mean"), "kld_p99": fid.get("kld_p99"), "top1": fid.get("top1"),
    }


# -- renderings ------------------------------------------------------------------------------

DISPLAY = [
    ("variant", "variant"), ("method", "method"), ("bits", "bits"), ("group_size", "group"),
    ("size_mb", "size MB"), ("ppl", "ppl"), ("delta_ppl_pct", "Δppl %"), ("kld_mean", "KLD"),
    ("kld_p99", "KLD p99"), ("top1_pct", "top-1 %"), ("ttft_ms_median", "TTFT ms"),
    ("ttft_ms_p90", "TTFT p90"), ("decode_tok_s", "decode tok/s"), ("peak_rss_mb", "peak RSS MB"),
    ("quantize_seconds", "quantize s"), ("quantize_rss_mb", "quantize RSS MB"),
]
FIDELITY_KEYS = ("kld_mean", "kld_p99", "top1_pct")
"""DISPLAY columns shown only in tables where some row has fidelity (gptq-paper protocol)."""


METRIC_DISPLAY = [
    ("variant", "variant"), ("method", "method"), ("format", "format"), ("size_mb", "size MB"),
    ("metric", "metric"), ("delta_metric_pts", "Δ pts"), ("verdict", "verdict"),
    ("latency_ms_median", "b1 ms"), ("latency_ms_p90", "b1 p90 ms"), ("throughput", "samples/s"),
]
"""Columns for rows that carry a task metric (accuracy) instead of perplexity."""


def _is_metric_group(rows: list[dict]) -> bool:
    return any(r.get("metric_name") for r in rows)


def method_label(r: dict) -> str:
    """'gptq', or 'gptq (gptqmodel 7.6.0)' for a variant a peer quantized."""
    from .peers import label

    return label(r.get("method"), r.get("backend"))


def _fmt(key: str, r: dict) -> str:
    if key == "method":
        return method_label(r)
    if key in ("metric", "delta_metric_pts", "latency_ms_median", "latency_ms_p90", "throughput"):
        v = r.get(key)
        if v is None:
            return "-"
        if key == "delta_metric_pts":
            return "baseline" if r.get("is_baseline") else f"{v:+.2f}"
        return f"{v:.3f}" if key.startswith("latency") else f"{v:.2f}" if key == "metric" else f"{v:.0f}"
    if key == "size_mb" and r.get("metric_name") and r.get("size_bytes") is not None:
        return f"{r['size_bytes'] / 1e6:.3f}"
    if key == "size_mb":
        return f"{r['size_bytes'] / 1e6:.1f}" if r.get("size_bytes") is not None else "-"
    if key == "peak_rss_mb":
        return f"{r['peak_rss_bytes'] / 1e6:.0f}" if r.get("peak_rss_bytes") else "-"
    if key in ("kld_mean", "kld_p99"):
        return "-" if r.get(key) is None else f"{r[key]:.4f}"
    if key == "top1_pct":
        return "-" if r.get("top1") is None else f"{r['top1'] * 100:.2f}"
    if key == "quantize_rss_mb":
        return f"{r['quantize_peak_rss_bytes'] / 1e6:.0f}" if r.get("quantize_peak_rss_bytes") else "-"
    v = r.get(key)
    if v is None:
        return "-"
    if key == "ppl":
        return f"{v:.3f}"
    if key == "delta_ppl_pct":
        return "baseline" if r.get("is_baseline") else f"{v:+.2f}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def group_by_protocol(rows: list[Row]) -> dict[tuple[str, str], list[dict]]:
    """{(model, protocol_key): rows ranked baseline first, then by perplexity (lower first) or, for
    rows with a task metric such as accuracy, by that metric (higher first)}. A protocol never mixes
    the two, so accuracy rows never rank against perplexity rows."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r.model, r.protocol_key), []).append(r.data)

    def rank(d: dict) -> tuple:
        if d.get("ppl") is not None:
            return (not d["is_baseline"], d["ppl"])
        if d.get("metric") is not None:
            return (not d["is_baseline"], -d["metric"])
        return (not d["is_baseline"], float("inf"))

    for k in groups:
        groups[k].sort(key=rank)
    return groups


def table_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    if _is_metric_group(rows):
        name = next(r["metric_name"] for r in rows if r.get("metric_name"))
        headers = [f"{name} %" if k == "metric" else h for k, h in METRIC_DISPLAY]
        return headers, [[_fmt(k, r) for k, _ in METRIC_DISPLAY] for r in rows]
    fidelity = any(r.get("kld_mean") is not None for r in rows)
    cols = [(k, h) for k, h in DISPLAY if fidelity or k not in FIDELITY_KEYS]
    return [h for _, h in cols], [[_fmt(k, r) for k, _ in cols] for r in rows]


def protocol_name(row: dict) -> str:
    """The protocol's name ("gptq-paper", "lm-eval-word", "llama-cpp"): the head of its description."""
    return str(row.get("protocol") or "?").split(":", 1)[0]


def render_markdown(rows: list[Row], title: str | None = None) -> str:
    out = [f"# {title}", ""] if title else []
    groups = group_by_protocol(rows)
    if len(groups) > 1:
        out += ["One table per model and protocol: results measured under different protocols are never "
                "ranked together.", ""]
    for (model, _), group in groups.items():
        out.append(f"## {model} · protocol {protocol_name(group[0])}")
        out.append("")
        out.append(f"Protocol: {group[0]['protocol']}")
        out.append("")
        headers, cells = table_cells(group)
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" for _ in headers) + "|")
        out.extend("| " + " | ".join(c) + " |" for c in cells)
        out.append("")
    return "\n".join(out)


def render_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    cols = [c for c in NAMES if c != "result_json"]
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow([r.data.get(c) for c in cols])
    return buf.getvalue()


def render_json(rows: list[Row]) -> str:
    return json.dumps([{k: v for k, v in r.data.items() if k != "result_json"} for r in rows], indent=2)
