"""The report's plots, drawn with matplotlib's object API (no pyplot state) into SVG strings that are
embedded in the page. Text is drawn as paths, so the page needs no fonts and fetches nothing."""

from __future__ import annotations

import io
import math
import re
from collections import OrderedDict

from ..board import method_label
from .data import Group, LayerReport, split_module

METHOD_COLORS = {"none": "#222222", "rtn": "#d1495b", "gptq": "#2e86ab", "awq": "#3b8b5a", "bnb": "#edae49",
                 "signround": "#7b2d8b"}
OTHER_COLORS = ["#8e6c8a", "#6c757d", "#b56576", "#4d908e", "#f28482", "#577590"]
VARIANT_COLORS = ["#2e86ab", "#d1495b", "#3b8b5a", "#edae49", "#8e6c8a", "#4d908e", "#b56576", "#577590"]
RC = {
    "svg.fonttype": "path", "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold",
    "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#888888",
    "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.7, "axes.axisbelow": True,
    "xtick.color": "#444444", "ytick.color": "#444444", "axes.labelcolor": "#333333",
    "legend.frameon": False, "legend.fontsize": 8, "axes.formatter.useoffset": False,
    "axes.formatter.limits": (-4, 7),
}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimised), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def plain(text: object) -> str:
    """Data shown as text in a plot: a '$' must not switch matplotlib into math mode."""
    return str(text).replace("$", r"\$")


def method_color(method: str | None) -> str:
    m = (method or "").lower()
    if m in METHOD_COLORS:
        return METHOD_COLORS[m]
    return OTHER_COLORS[sum(map(ord, m)) % len(OTHER_COLORS)]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig) -> str:
    """The figure as an inline <svg> element (no XML prolog, no doctype, no metadata)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)


def _rc():
    import matplotlib

    return matplotlib.rc_context(RC)


def _value_axis(ax, values: list[float]) -> None:
    """Logarithmic when the values span more than 3x, else linear (no offset: plain numbers)."""
    if values and min(values) > 0 and max(values) / min(values) > 3:
        ax.set_yscale("log")


def _ppl_axis(ax, values: list[float], word: bool) -> None:
    ax.set_ylabel("word perplexity" if word else "perplexity")
    _value_axis(ax, values)


def _label_points(ax, xs, ys, labels) -> None:
    for k, (x, y, text) in enumerate(zip(xs, ys, labels)):
        ax.annotate(plain(text), (x, y), xytext=(6, 5 if k % 2 == 0 else -11), textcoords="offset points",
                    fontsize=7.5, color="#333333")


def _scatter(ax, rows: list[dict], x_key: str) -> None:
    for r in rows:
        base, win = bool(r.get("is_baseline")), bool(r.get("is_winner"))
        ax.scatter([r[x_key]], [r["ppl"]], s=90 if base or win else 48, marker="*" if base else "o",
                   color=method_color(method_label(r)), edgecolors="#111111" if win else "white",
                   linewidths=1.6 if win else 0.6, zorder=3)
    _label_points(ax, [r[x_key] for r in rows], [r["ppl"] for r in rows],
                  [r["label"] + (" ★ winner" if r.get("is_winner") else "") for r in rows])


def _legend(ax, rows: list[dict], extra: list | None = None) -> None:
    from matplotlib.lines import Line2D

    handles = []
    if any(r.get("is_baseline") for r in rows):
        handles.append(Line2D([], [], marker="*", linestyle="", color=method_color("none"), markersize=8,
                              label="baseline"))
    for m in OrderedDict.fromkeys(method_label(r) for r in rows if not r.get("is_baseline")):
        handles.append(Line2D([], [], marker="o", linestyle="", color=method_color(m), markersize=6,
                              label="unquantized" if m == "none" else plain(m)))
    ax.legend(handles=handles + (extra or []), loc="best")


def ppl_vs_size(group: Group) -> str | None:
    rows = [dict(r, size_mb=r["size_bytes"] / 1e6) for r in group.rows if r.get("ppl") is not None and r.get("size_bytes")]
    if not rows:
        return None
    from matplotlib.lines import Line2D

    with _rc():
        fig = _figure(5.6, 3.7)
        ax = fig.add_subplot()
        pts = [(r["size_mb"], r["ppl"]) for r in rows]
        front = pareto_front(pts)
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="#999999", linestyle="--", linewidth=1.2, zorder=2)
        ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="#bbbbbb", linewidths=1.0, zorder=2)
        _scatter(ax, rows, "size_mb")
        ax.set_xlabel("size on disk (MB)")
        _ppl_axis(ax, [r["ppl"] for r in rows], group.word_ppl)
        ax.set_title("Perplexity vs size")
        ax.margins(x=0.15, y=0.12)
        _legend(ax, rows, [Line2D([], [], color="#999999", linestyle="--", label="Pareto frontier")])
        return to_svg(fig)


def ppl_vs_latency(group: Group) -> str | None:
    rows = [r for r in group.rows if r.get("ppl") is not None and r.get("ttft_ms_median") is not None]
    if not rows:
        return None
    with _rc():
        fig = _figure(5.6, 3.7)
        ax = fig.add_subplot()
        for r in rows:
            if r.get("ttft_ms_p90") is not None:  # median to p90
                ax.plot([r["ttft_ms_median"], r["ttft_ms_p90"]], [r["ppl"], r["ppl"]],
                        color=method_color(method_label(r)), linewidth=2, alpha=0.35, zorder=2)
        _scatter(ax, rows, "ttft_ms_median")
        ax.set_xlabel("first-token latency, median (ms; bar to p90)")
        _ppl_axis(ax, [r["ppl"] for r in rows], group.word_ppl)
        ax.set_title("Perplexity vs first-token latency")
        ax.margins(x=0.15, y=0.12)
        _legend(ax, rows)
        return to_svg(fig)


def _block_matrix(report: LayerReport) -> tuple[list[int], list[str], dict[tuple[int, str], float], int]:
    """(blocks, module kinds, {(block, kind): rel_error}, modules outside decoder blocks)."""
    cells: dict[tuple[int, str], float] = {}
    kinds: OrderedDict[str, None] = OrderedDict()
    outside = 0
    for layer in report:
        block, kind = split_module(str(layer["module"]))
        if block is None:
            outside += 1
            continue
        kinds[kind] = None
        cells[(block, kind)] = float(layer["rel_error"])
    return sorted({b for b, _ in cells}), list(kinds), cells, outside


def _short(kind: str, kinds: list[str]) -> str:
    tail = kind.rsplit(".", 1)[-1]
    return tail if sum(k.rsplit(".", 1)[-1] == tail for k in kinds) == 1 else kind


def layer_error_profile(layers: dict[str, LayerReport]) -> str | None:
    """Mean relative weight error per decoder block, one line per variant."""
    series = []
    for label, rep in layers.items():
        blocks, _, cells, _ = _block_matrix(rep)
        if blocks:
            means = [sum(v for (b, _), v in cells.items() if b == blk) /
                     sum(1 for (b, _) in cells if b == blk) for blk in blocks]
            series.append((label, blocks, means))
    if not series:
        return None
    with _rc():
        fig = _figure(11.4, 3.2)
        ax = fig.add_subplot()
        for k, (label, blocks, means) in enumerate(series):
            ax.plot(blocks, means, marker="o", markersize=3, linewidth=1.6,
                    color=VARIANT_COLORS[k % len(VARIANT_COLORS)], label=plain(label))
        from matplotlib.ticker import MaxNLocator

        _value_axis(ax, [m for _, _, means in series for m in means])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("decoder block")
        ax.set_ylabel("mean ‖W − Ŵ‖ / ‖W‖")
        ax.set_title("Per-layer quantization error (mean over the block's linear layers)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return to_svg(fig)


def layer_error_heatmaps(layers: dict[str, LayerReport]) -> str | None:
    """One heatmap per variant: module kind x decoder block, each on its own colour scale
    (so the layers that suffer most stand out; the profile compares variants with each other)."""
    mats = [(label, *_block_matrix(rep)) for label, rep in layers.items()]
    mats = [m for m in mats if m[1]]
    if not mats:
        return None
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.ticker import FormatStrFormatter

    with _rc():
        fig = _figure(11.4, 0.5 + 1.6 * len(mats))
        axes = fig.subplots(len(mats), 1, squeeze=False)[:, 0]
        for ax, (label, blocks, kinds, cells, outside) in zip(axes, mats):
            grid = np.full((len(kinds), len(blocks)), np.nan)
            for (b, kind), v in cells.items():
                grid[kinds.index(kind), blocks.index(b)] = max(v, 1e-12)
            lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
            hi = hi if hi > lo else lo * 1.0001
            im = ax.imshow(grid, aspect="auto", cmap="magma_r", interpolation="nearest", norm=Normalize(lo, hi))
            ax.set_yticks(range(len(kinds)), [plain(_short(k, kinds)) for k in kinds], fontsize=7)
            step = max(1, len(blocks) // 15)
            ax.set_xticks(range(0, len(blocks), step), [str(blocks[i]) for i in range(0, len(blocks), step)],
                          fontsize=7)
            ax.grid(False)
            note = f"  ({outside} module(s) outside decoder blocks not shown)" if outside else ""
            ax.set_title(f"{plain(label)}: {lo:.3g} – {hi:.3g}{note}", loc="left", fontsize=9)
            cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, ticks=np.linspace(lo, hi, 4))
            cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            cb.ax.tick_params(labelsize=7)
        axes[-1].set_xlabel("decoder block")
        return to_svg(fig)
