"""The page: one static HTML file, style and script inline, every interpolated value escaped."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Callable

from .. import __version__
from ..board import method_label
from .assets import CSS, JS
from .data import Group, Report


@dataclass(frozen=True)
class GroupPlots:
    size: str | None = None  # <svg> markup from plots.py (matplotlib's own, trusted)
    latency: str | None = None
    layer_profile: str | None = None
    layer_heatmaps: str | None = None


def e(value: object) -> str:
    return escape(str(value), quote=True)


def _num(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    text: Callable[[dict], str]
    value: Callable[[dict], object]  # what the column sorts by (data-v)
    is_text: bool = False
    tone: Callable[[dict], str] = lambda r: ""  # css class: better | worse | na


def _delta_tone(key: str) -> Callable[[dict], str]:
    def tone(r: dict) -> str:
        v = r.get(key)
        if v is None or r.get("is_baseline"):
            return "na"
        worse = v > 0 if key != "decode_delta_pct" else v < 0
        return "worse" if worse and abs(v) >= 0.005 else "better" if abs(v) >= 0.005 else ""
    return tone


def _delta_text(key: str) -> Callable[[dict], str]:
    return lambda r: "baseline" if r.get("is_baseline") else _num(r.get(key), "+.2f")


def columns(group: Group) -> list[Column]:
    runs = {r.get("run_dir") for r in group.rows}
    cols = [Column("variant", "variant", lambda r: r["label"], lambda r: r["label"], is_text=True)]
    if len(runs) > 1:
        cols.append(Column("run", "run", lambda r: r.get("run") or "–", lambda r: r.get("run") or "", is_text=True))
    cols += [
        Column("method", "method", lambda r: method_label(r) if r.get("method") else "–",
               lambda r: method_label(r) if r.get("method") else "", is_text=True),
        Column("bits", "bits", lambda r: _num(r.get("bits"), "g"), lambda r: r.get("bits")),
        Column("group", "group", lambda r: _num(r.get("group_size"), "d"), lambda r: r.get("group_size")),
        Column("size", "size MB", lambda r: _num(r["size_bytes"] / 1e6 if r.get("size_bytes") else None, ".1f"),
               lambda r: r.get("size_bytes")),
        Column("size_ratio", "size vs base", lambda r: _num(r.get("size_ratio"), ".2f") + ("×" if r.get("size_ratio") else ""),
               lambda r: r.get("size_ratio")),
        Column("ppl", "word ppl" if group.word_ppl else "ppl", lambda r: _num(r.get("ppl"), ".3f"), lambda r: r.get("ppl")),
        Column("dppl", "Δppl %", _delta_text("delta_ppl_pct"), lambda r: r.get("delta_ppl_pct"),
               tone=_delta_tone("delta_ppl_pct")),
    ]
    if any(r.get("kld_mean") is not None for r in group.rows):  # the gptq-paper protocol: fidelity measured
        cols += [
            Column("kld", "KLD", lambda r: _num(r.get("kld_mean"), ".4f"), lambda r: r.get("kld_mean")),
            Column("kld_p99", "KLD p99", lambda r: _num(r.get("kld_p99"), ".4f"), lambda r: r.get("kld_p99")),
            Column("top1", "top-1 %", lambda r: _num(r["top1"] * 100 if r.get("top1") is not None else None, ".2f"),
                   lambda r: r.get("top1")),
        ]
    cols += [
        Column("ttft", "TTFT ms", lambda r: _num(r.get("ttft_ms_median"), ".1f"), lambda r: r.get("ttft_ms_median")),
        Column("dttft", "ΔTTFT %", _delta_text("ttft_delta_pct"), lambda r: r.get("ttft_delta_pct"),
               tone=_delta_tone("ttft_delta_pct")),
        Column("decode", "decode tok/s", lambda r: _num(r.get("decode_tok_s"), ".1f"), lambda r: r.get("decode_tok_s")),
        Column("rss", "peak RSS MB", lambda r: _num(r["peak_rss_bytes"] / 1e6 if r.get("peak_rss_bytes") else None, ".0f"),
               lambda r: r.get("peak_rss_bytes")),
        Column("qsec", "quantize s", lambda r: _num(r.get("quantize_seconds"), ".1f"), lambda r: r.get("quantize_seconds")),
        Column("qrss", "quantize RSS MB",
               lambda r: _num(r["quantize_peak_rss_bytes"] / 1e6 if r.get("quantize_peak_rss_bytes") else None, ".0f"),
               lambda r: r.get("quantize_peak_rss_bytes")),
    ]
    return cols


def _table(group: Group) -> str:
    cols = columns(group)
    head = "".join(f'<th data-key="{e(c.key)}" class="{"text" if c.is_text else "num"}" scope="col" '
                   f'aria-sort="none">{e(c.header)}</th>' for c in cols)
    body = []
    for r in group.rows:
        cls = "baseline" if r.get("is_baseline") else "winner" if r.get("is_winner") else "variant"
        cells = []
        for i, c in enumerate(cols):
            v = c.value(r)
            tone = c.tone(r) or ("na" if c.text(r) == "–" else "")
            classes = " ".join(x for x in ("text" if c.is_text else "", tone) if x)
            text = e(c.text(r))
            if i == 0 and r.get("is_baseline"):
                text += '<span class="tag base">baseline</span>'
            elif i == 0 and r.get("is_winner"):
                text += '<span class="tag">winner</span>'
            attr = f' class="{classes}"' if classes else ""
            cells.append(f'<td{attr} data-v="{e("" if v is None else v)}">{text}</td>')
        body.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    return (f'<div class="table-wrap"><table class="board" data-protocol="{e(group.protocol_name)}">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _winners(group: Group) -> str:
    if not group.winners:
        return ""
    many = len({w.run_dir for w in group.winners}) > 1
    out = []
    for w in group.winners:
        run = f'<span class="run">run {e(w.run)}</span>' if many else ""
        if w.name:
            out.append(f'<div class="winner">{run}<b>Winner: {e(w.name)}</b><br>{e(w.reason)}</div>')
        else:
            out.append(f'<div class="winner none">{run}<b>No winner</b><br>{e(w.reason)}</div>')
    return "".join(out)


def _figure(svg: str | None, caption: str, wide: bool = False) -> str:
    if not svg:
        return ""
    return f'<figure class="{"wide" if wide else ""}">{svg}<figcaption>{e(caption)}</figcaption></figure>'


def _group(i: int, g: Group, plots: GroupPlots | None, plots_missing: str | None) -> str:
    parts = [
        f'<section class="group" id="g{i}" data-protocol="{e(g.protocol_name)}">',
        f'<h2>{e(g.model)}<span class="badge">protocol {e(g.protocol_name)}</span></h2>',
        f'<p class="protocol">{e(g.protocol)}</p>',
        _winners(g), _table(g),
        '<p class="hint">Click a column header to sort (the baseline stays on top). Δ and “size vs base” compare '
        "with the baseline of the same run; lower perplexity and latency are better.</p>",
    ]
    if plots_missing:
        parts.append(f'<p class="note">{e(plots_missing)}</p>')
    elif plots:
        figs = _figure(plots.size, "Each point is a checkpoint; the dashed line joins the Pareto frontier — the "
                                   "variants no other variant beats on both size and perplexity.") + \
               _figure(plots.latency, "Median time to the first token of a prompt (batch 1); the faint bar runs to "
                                      "the 90th percentile.")
        if figs:
            parts.append(f'<div class="plots">{figs}</div>')
        if plots.layer_profile or plots.layer_heatmaps:
            parts.append("<h3>Per-layer quantization error</h3>")
            parts.append(_figure(plots.layer_profile, "Relative weight error ‖W − Ŵ‖ / ‖W‖ of each quantized "
                                                      "linear layer, averaged over each decoder block.", wide=True))
            parts.append(_figure(plots.layer_heatmaps, "Every quantized linear layer: module kind by decoder "
                                                       "block, darker is worse; each variant on its own colour "
                                                       "scale (the line chart compares variants).", wide=True))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def render_html(report: Report, plots: list[GroupPlots | None], plots_missing: str | None = None) -> str:
    toc = ""
    if len(report.groups) > 1:
        links = "".join(f'<a href="#g{i}">{e(g.model)} · {e(g.protocol_name)}</a>' for i, g in enumerate(report.groups))
        toc = (f'<nav class="toc">{len(report.groups)} tables, one per model and protocol — results under '
               f"different protocols are never ranked together: {links}</nav>")
    body = "\n".join(_group(i, g, p, plots_missing) for i, (g, p) in enumerate(zip(report.groups, plots)))
    if not report.groups:
        body = '<p class="note">No results yet: run a recipe first.</p>'
    sub = " · ".join(x for x in (report.subtitle, f"generated {report.generated}", f"llmquant {__version__}") if x)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(report.title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{e(report.title)}</h1><p>{e(sub)}</p></header>
<main>
{toc}
{body}
</main>
<footer>Perplexity, latency and memory are measured by one code path for every checkpoint; a table only holds
results whose protocols (corpus, token stream, windows, dtype, device, latency set-up) are equal.</footer>
<script>{JS}</script>
</body>
</html>
"""
