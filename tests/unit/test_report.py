"""The HTML report: data gathering, the Pareto frontier, escaping, protocols kept apart, no network."""

import json
import random
import re
import sys

import pytest

from llmquant.board import Board
from llmquant.report import board_report, render_report
from llmquant.report.data import Report, build_groups, layers_from_run_dir, split_module, with_deltas
from llmquant.report.plots import pareto_front


def row(variant, ppl, size, protocol="gptq-paper", base=False, run_dir="/runs/a", run="a", method="rtn", **kw):
    return {"run": run, "run_dir": run_dir, "model": "m", "model_hash": "h", "variant": variant, "method": method,
            "bits": None if base else 4, "group_size": None if base else 64, "format": "gptq-v1",
            "is_baseline": int(base), "size_bytes": size, "ppl": ppl, "protocol_key": protocol + "-key",
            "protocol": f"{protocol}: corpus, 4 windows x 64 tokens", "ttft_ms_median": kw.pop("ttft", None),
            "ttft_ms_p90": None, "decode_tok_s": kw.pop("decode", None), "peak_rss_bytes": 2e8, **kw}


def layers(n_blocks=3, scale=0.1):
    kinds = ["self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"]
    return [{"module": f"model.layers.{b}.{k}", "rel_error": scale * (1 + b + i / 10), "bits": 4}
            for b in range(n_blocks) for i, k in enumerate(kinds)]


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        pts = [(rng.choice([1.0, 2.0, 3.0, 4.0]), rng.choice([5.0, 6.0, 7.0])) for _ in range(rng.randint(1, 8))]
        dominated = {i for i, p in enumerate(pts) for q in pts
                     if q[0] <= p[0] and q[1] <= p[1] and (q[0] < p[0] or q[1] < p[1])}
        front = pareto_front(pts)
        assert {pts[i] for i in front} == {p for i, p in enumerate(pts) if i not in dominated}
        assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)
        assert len({pts[i] for i in front}) == len(front)  # a duplicate point is drawn once


def test_deltas_against_the_same_runs_baseline_and_labels():
    rows = [row("baseline", 10.0, 400, base=True, ttft=100.0, decode=20.0),
            row("w4", 12.0, 100, ttft=150.0, decode=10.0),
            row("baseline", 20.0, 800, base=True, run_dir="/runs/b", run="b"),
            row("w4", 21.0, 200, run_dir="/runs/b", run="b")]
    d = {(r["run"], r["variant"]): r for r in with_deltas(rows)}
    assert d["a", "w4"]["delta_ppl_pct"] == pytest.approx(20.0)
    assert d["a", "w4"]["size_ratio"] == pytest.approx(0.25)
    assert d["a", "w4"]["ttft_delta_pct"] == pytest.approx(50.0) and d["a", "w4"]["decode_delta_pct"] == pytest.approx(-50.0)
    assert d["b", "w4"]["delta_ppl_pct"] == pytest.approx(5.0) and d["b", "w4"]["ttft_delta_pct"] is None
    assert d["b", "w4"]["label"] == "b/w4"  # two runs share the name: the run tells them apart
    assert with_deltas([row("only", 3.0, 10)])[0]["label"] == "only"


def test_split_module():
    assert split_module("model.layers.12.self_attn.q_proj") == (12, "self_attn.q_proj")
    assert split_module("transformer.h.0.mlp.c_fc") == (0, "mlp.c_fc")
    assert split_module("lm_head") == (None, "lm_head")


def test_one_table_per_protocol_with_its_name():
    rows = [row("baseline", 10.0, 400, base=True), row("w4", 12.0, 100),
            row("baseline", 30.0, 400, "lm-eval-word", base=True), row("w4", 33.0, 100, "lm-eval-word")]
    html = render_report(Report("t", build_groups(rows)))
    tables = re.findall(r'<table class="board" data-protocol="([^"]+)">(.*?)</table>', html, flags=re.S)
    assert [p for p, _ in tables] == ["gptq-paper", "lm-eval-word"]
    for _, body in tables:
        assert body.count('<tr class="baseline">') == 1 and body.count("<tr class=") == 2
    assert ">word ppl</th>" in tables[1][1] and ">ppl</th>" in tables[0][1]
    assert "protocol gptq-paper</span>" in html and "protocol lm-eval-word</span>" in html
    assert "never ranked together" in html
    assert html.count("<svg") == 2  # ppl vs size per table; no latency, no layer reports here


EVIL = '<script>alert("x")</script>'


def test_everything_interpolated_is_escaped(tmp_path):
    rows = [row("baseline", 10.0, 400, base=True), row(EVIL, 12.0, 100, method=EVIL + "m", run=EVIL),
            {**row("w8", 10.1, 200), "model": "m", "protocol": 'gptq-paper: "quoted" & <b>bold</b>'}]
    rows[1]["model"] = rows[2]["model"] = rows[0]["model"] = 'm"><img src=x onerror=alert(1)>'
    groups = build_groups(rows, layers={EVIL: layers()})
    html = render_report(Report(EVIL, groups, subtitle=EVIL))
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # the page's own sorting script
    # matplotlib writes each label into an SVG comment: it must not be able to close the comment
    assert not re.search(r"<!--(?:(?!-->).)*<script", html, flags=re.S)


def test_dollar_signs_in_names_are_plain_text():
    # matplotlib reads "$...$" as math: "$\\frac$" would not even parse, "$x^2$" would be typeset
    rows = [row("baseline", 10.0, 400, base=True), row("w$\\frac$", 12.0, 100, method="m$x^2$", ttft=5.0)]
    html = render_report(Report("t", build_groups(rows, layers={"w$\\frac$": layers()})))
    assert html.count("<svg") == 4 and "<!-- m$x^2$ -->" in html


def test_no_network_assets():
    rows = [row("baseline", 10.0, 400, base=True, ttft=100.0), row("w4", 12.0, 100, ttft=90.0)]
    html = render_report(Report("t", build_groups(rows, layers={"w4": layers()})))
    assert html.count("<svg") == 4  # size, latency, per-layer profile and heatmaps
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and not re.search(r"url\(\s*['\"]?https?:", html)
    assert "<metadata>" not in html


def test_per_layer_reports_from_run_dirs(tmp_path):
    run = tmp_path / "run"
    (run / "variants" / "w4").mkdir(parents=True)
    (run / "variants" / "w4" / "manifest.json").write_text(json.dumps({"summary": {"layers": layers()}}))
    (run / "variants" / "bad").mkdir(parents=True)
    (run / "variants" / "bad" / "manifest.json").write_text(json.dumps({"summary": {"layers": [{"x": 1}]}}))
    assert layers_from_run_dir(run, "w4") == layers()
    assert layers_from_run_dir(run, "bad") is None  # not a per-layer report: ignored
    assert layers_from_run_dir(run, "../../etc") is None  # never reads outside the run
    b = Board(tmp_path / "b.sqlite")
    b.record([row("baseline", 10.0, 400, base=True, run_dir=str(run)), row("w4", 12.0, 100, run_dir=str(run))])
    html = board_report(b.rows())
    assert "Per-layer quantization error" in html and html.count("<svg") == 3


def test_without_matplotlib_the_tables_remain(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.delitem(sys.modules, "llmquant.report.plots", raising=False)
    html = render_report(Report("t", build_groups([row("baseline", 10.0, 400, base=True), row("w4", 12.0, 100)])))
    assert "<svg" not in html and "pip install &#x27;llmquant[report]&#x27;" in html
    assert html.count('<tr class="') == 2


def test_run_writes_report_and_board_html(tiny_recipe, tmp_path):
    from typer.testing import CliRunner

    from llmquant.cli import app
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    summary = run(load_recipe(tiny_recipe(variants="""
  - {name: w8, method: rtn, bits: 8, group_size: 32}
  - {name: w3, method: rtn, bits: 3, group_size: 32}
""")))
    html = (summary.run_dir / "report.html").read_text()
    body = re.search(r'<table class="board" data-protocol="gptq-paper">(.*?)</table>', html, flags=re.S).group(1)
    assert body.count('<tr class="baseline">') == 1 and body.count('<tr class="winner">') == 1
    assert f"Winner: {summary.decision.winner}" in html and summary.decision.reason in html.replace("&#x27;", "'")
    assert html.count("<svg") == 4  # size, latency, layer profile, layer heatmaps
    out = tmp_path / "board.html"
    res = CliRunner().invoke(app, ["board", "--board", str(tmp_path / "board.sqlite"), "--html", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert page.count('<table class="board"') == 1 and "Per-layer quantization error" in page
    assert f"Winner: {summary.decision.winner}" in page  # read back from the run's results.json
    bad = CliRunner().invoke(app, ["board", "--board", str(tmp_path / "board.sqlite"), "--html", str(tmp_path)])
    assert bad.exit_code == 2 and "is a directory" in bad.output
