"""Generic metric columns on the leaderboard: migration of older databases, and accuracy rows
grouped and ranked apart from perplexity rows."""

from __future__ import annotations

import sqlite3

from llmquant.board import NAMES, Board, group_by_protocol, render_markdown, table_cells

OLD_COLUMNS = NAMES[:NAMES.index("result_json") + 1]  # the schema before the metric columns


def old_database(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE results (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                + ", ".join(OLD_COLUMNS) + ", UNIQUE(run_dir, variant, protocol_key))")
    con.execute("INSERT INTO results (run, run_dir, model, variant, method, is_baseline, ppl, protocol_key) "
                "VALUES ('old', '/r', 'llm', 'baseline', 'none', 1, 30.5, 'p-llm')")
    con.commit()
    con.close()


def accuracy_row(variant, metric, baseline=False, **kw):
    return {"run": "c", "run_dir": "/c", "model": "cnn", "model_hash": "h", "variant": variant, "method": "static",
            "is_baseline": int(baseline), "size_bytes": 1000, "metric_name": "accuracy", "metric": metric,
            "delta_metric_pts": metric - 98.0, "verdict": "excellent", "latency_ms_median": 0.2,
            "protocol_key": "p-acc", "protocol": "classic", **kw}


def test_old_database_gains_the_metric_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    old_database(path)
    b = Board(path)  # migrates
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(results)")}
    assert {"metric_name", "metric", "delta_metric_pts", "latency_ms_median", "throughput", "verdict"} <= cols
    old = b.rows(run="old")
    assert len(old) == 1 and old[0].ppl == 30.5 and old[0].metric is None
    b.record([accuracy_row("baseline", 98.0, baseline=True)])
    assert Board(path).rows(run="c")[0].metric == 98.0  # a second open does not migrate again


def test_accuracy_rows_rank_by_metric_and_never_with_perplexity(tmp_path):
    b = Board(tmp_path / "b.sqlite")
    b.record([accuracy_row("baseline", 98.0, baseline=True), accuracy_row("dyn", 97.2),
              accuracy_row("static", 97.9)])
    b.record([{"run": "l", "run_dir": "/l", "model": "cnn", "variant": "rtn", "method": "rtn", "is_baseline": 0,
               "ppl": 12.0, "protocol_key": "p-llm", "protocol": "ppl"}])
    groups = group_by_protocol(b.rows())
    assert [d["variant"] for d in groups[("cnn", "p-acc")]] == ["baseline", "static", "dyn"]
    assert [d["variant"] for d in groups[("cnn", "p-llm")]] == ["rtn"]
    headers, cells = table_cells(groups[("cnn", "p-acc")])
    assert "accuracy %" in headers and "verdict" in headers and "ppl" not in headers
    assert cells[1][headers.index("Δ pts")] == "-0.10" and cells[0][headers.index("Δ pts")] == "baseline"
    llm_headers, _ = table_cells(groups[("cnn", "p-llm")])
    assert "ppl" in llm_headers and "accuracy %" not in llm_headers
    md = render_markdown(b.rows())
    assert md.count("## cnn") == 2 and "| static | static |" in md
