"""HTML reports: `llmquant board --html` and each run's report.html.

data.py gathers what to show (groups by model and protocol, deltas, per-layer errors, winners),
plots.py draws it (matplotlib to inline SVG), html.py lays out the single self-contained page.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..runs import atomic_write_text
from .data import Report, build_groups, load_results, run_report_data
from .html import GroupPlots, render_html

log = logging.getLogger("llmquant")
PLOTS_MISSING = "Plots need matplotlib: pip install 'llmquant[report]'."


def group_plots(report: Report) -> list[GroupPlots]:
    from . import plots

    return [GroupPlots(size=plots.ppl_vs_size(g), latency=plots.ppl_vs_latency(g),
                       layer_profile=plots.layer_error_profile(g.layers),
                       layer_heatmaps=plots.layer_error_heatmaps(g.layers)) for g in report.groups]


def render_report(report: Report) -> str:
    try:
        figures, missing = group_plots(report), None
    except ImportError:
        log.warning("matplotlib is not installed: the report has tables but no plots")
        figures, missing = [None] * len(report.groups), PLOTS_MISSING
    return render_html(report, figures, missing)


def board_report(rows, title: str = "llmquant leaderboard") -> str:
    """The page of `llmquant board --html`: every model and protocol in `rows`, one table each."""
    return render_report(Report(title=title, groups=build_groups(rows, read_run_dirs=True)))


def run_report(results: dict, run_dir: Path, title: str, rows: list[dict] | None = None) -> str:
    """The page of one run (its results.json content; `rows` as recorded on the leaderboard)."""
    return render_report(run_report_data(results, run_dir, title, rows))


def report_from_run_dir(run_dir: Path, title: str | None = None) -> str:
    """Re-render a finished run's report from its run directory."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    return run_report(results, run_dir, title or f"{run_dir.name} — leaderboard")


def write_html(path: Path, html: str) -> Path:
    atomic_write_text(Path(path), html)
    return Path(path)
