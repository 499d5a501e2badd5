"""The CLI end to end on the tiny model: run, rerun (cached), bad input, validate, eval, board."""

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from llmquant.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def board_rows(path):
    if not path.exists():
        return []
    with sqlite3.connect(path) as con:
        return con.execute("SELECT variant, ppl FROM results").fetchall()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """One real run of the tiny recipe (module-scoped: several tests read it)."""
    from tests.conftest import write_recipe

    tmp = tmp_path_factory.mktemp("run")
    recipe = write_recipe(tmp / "tiny.yaml", f"""
name: tiny
model: {{source: {tiny_model_dir}, dtype: float32, device: cpu}}
eval:
  dataset: {{source: "builtin:pydoc", split: test}}
  seqlen: 128
  max_windows: 8
  isolate: false
  latency: {{prompt_tokens: 16, decode_tokens: 4, repeats: 2, warmup: 1}}
variants:
  - {{name: w8, method: rtn, bits: 8, group_size: 32}}
  - {{name: w4, method: rtn, bits: 4, group_size: 32}}
  - {{name: w3, method: rtn, bits: 3, group_size: 32}}
select: {{policy: smallest_within, max_ppl_increase_pct: 2.0}}
output: {{dir: run, board: board.sqlite}}
""")
    res = invoke("run", recipe)
    return tmp, recipe, res


def test_run_prints_board_and_winner(finished_run):
    tmp, _, res = finished_run
    assert res.exit_code == 0, res.output
    assert "winner:" in res.output and "baseline" in res.output
    results = json.loads((tmp / "run" / "results.json").read_text())
    base = results["baseline"]["ppl"]
    ppl = {v["name"]: v["result"]["ppl"] for v in results["variants"]}
    assert abs(ppl["w8"] / base - 1) < 0.01  # 8-bit RTN is near-lossless
    assert ppl["w3"] > ppl["w4"] > ppl["w8"]
    sizes = {v["name"]: v["result"]["size_bytes"] for v in results["variants"]}
    within = [n for n in ppl if ppl[n] <= base * 1.02]
    assert results["winner"]["name"] == min(within, key=sizes.get)  # smallest within 2 %
    assert (tmp / "run" / "leaderboard.md").read_text().count("| w") == 3
    rows = board_rows(tmp / "board.sqlite")
    assert sorted(r[0] for r in rows) == ["baseline", "w3", "w4", "w8"]
    proto = results["baseline"]["protocol"]
    assert proto["windows"] == 8 and proto["tokens_scored"] == 8 * 127 and proto["name"] == "gptq-paper"
    lat = results["variants"][0]["result"]["latency"]
    assert lat["runs"] == 2 and lat["ttft_ms_median"] > 0 and lat["decode_tok_s"] > 0


def test_rerun_skips_finished_steps(finished_run):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    tmp, recipe, _ = finished_run
    before = json.loads((tmp / "run" / "results.json").read_text())
    summary = run(load_recipe(recipe))
    assert summary.baseline_reused
    assert not any(o.quantized_now or o.evaluated_now for o in summary.variants)
    assert [o.result.ppl for o in summary.variants] == [v["result"]["ppl"] for v in before["variants"]]
    assert len(board_rows(tmp / "board.sqlite")) == 4  # upserted, not duplicated


def test_changed_variant_is_redone_alone(finished_run):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    tmp, recipe, _ = finished_run
    text = recipe.read_text().replace("{name: w4, method: rtn, bits: 4, group_size: 32}",
                                      "{name: w4, method: rtn, bits: 4, group_size: 32, sym: false}")
    changed = recipe.with_name("tiny2.yaml")
    changed.write_text(text.replace("name: tiny\n", "name: tiny\n", 1))
    summary = run(load_recipe(changed))
    redone = {o.name for o in summary.variants if o.quantized_now}
    assert redone == {"w4"}


def test_board_formats(finished_run):
    tmp, _, _ = finished_run
    b = tmp / "board.sqlite"
    md = invoke("board", "--board", b, "--format", "md")
    assert md.exit_code == 0 and "| baseline |" in md.output
    js = json.loads(invoke("board", "--board", b, "--format", "json").output)
    assert {r["variant"] for r in js} >= {"baseline", "w8"}
    assert invoke("board", "--board", b, "--format", "csv").output.startswith("created_at,")
    assert invoke("board", "--board", b).exit_code == 0
    bad = invoke("board", "--board", b, "--format", "xml")
    assert bad.exit_code == 2 and "--format: 'xml' is not allowed" in bad.output


def test_eval_command_adds_row(finished_run):
    tmp, _, _ = finished_run
    ckpt = tmp / "run" / "variants" / "w4" / "checkpoint"
    res = invoke("eval", ckpt, "--seqlen", 128, "--max-windows", 8, "--no-latency", "--board", tmp / "board.sqlite",
                 "--model", "tiny-eval", "--no-isolate", "--dtype", "float32")  # the run evaluated in fp32
    assert res.exit_code == 0, res.output
    assert "format gptq-v1" in res.output
    ppl_run = json.loads((tmp / "run" / "results.json").read_text())["variants"][1]["result"]["ppl"]
    ppl_eval = float(res.output.split("perplexity ")[1].split()[0])
    assert ppl_eval == pytest.approx(ppl_run, rel=1e-4)  # same protocol, same number


def test_validate(finished_run, tmp_path):
    _, recipe, _ = finished_run
    ok = invoke("validate", recipe)
    assert ok.exit_code == 0 and "ok" in ok.output


BAD = {
    "unknown key": ("model: {source: MODEL, colour: red}", "model.colour: unknown key"),
    "wrong type": ("eval: {dataset: 'builtin:pydoc', seqlen: lots}", "eval.seqlen: got 'lots'"),
    "bits 9": ("variants: [{name: a, method: rtn, bits: 9}]", "variants[0].bits: got 9"),
    "group size not dividing": ("variants: [{name: a, method: rtn, bits: 4, group_size: 48}]",
                                "variants[0].group_size: group size 48 does not divide in_features 64"),
    "missing model path": ("model: {source: ./no/such/model}", "model.source"),
    "empty corpus": ("eval: {dataset: EMPTY, seqlen: 128}", "is empty"),
    "speed guard without latency": ("select: {min_decode_ratio: 1.0}", "select.min_decode_ratio: a speed guard needs"),
    "corpus shorter than a window": ("eval: {dataset: SHORT, seqlen: 128}", "fewer than one window of eval.seqlen=128"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_recipes_exit_2_one_line_no_rows(case, tmp_path, tiny_model_dir):
    override, expected = BAD[case]
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("only a few words here")
    doc = {
        "model": f"model: {{source: {tiny_model_dir}, dtype: float32, device: cpu}}",
        "eval": "eval: {dataset: 'builtin:pydoc', seqlen: 128, max_windows: 2, isolate: false, latency: {enabled: false}}",
        "variants": "variants: [{name: a, method: rtn, bits: 4, group_size: 32}]",
    }
    key = override.split(":")[0]
    doc[key] = override.replace("MODEL", str(tiny_model_dir)).replace("EMPTY", str(tmp_path / "empty.txt")) \
        .replace("SHORT", str(tmp_path / "short.txt"))
    recipe = tmp_path / "bad.yaml"
    board = tmp_path / "board.sqlite"
    recipe.write_text("\n".join(doc.values()) + f"\noutput: {{dir: run, board: {board}}}\n")
    res = invoke("run", recipe)
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output  # one line (progress lines above it are the display)
    line = errors[0]
    assert str(recipe) in line and expected in line, line
    assert "Traceback" not in res.output
    assert board_rows(board) == []


def test_hub_id_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "hub.yaml"
    recipe.write_text("model: {source: nobody-here/no-such-model}\n"
                      "eval: {dataset: 'builtin:pydoc', seqlen: 128, isolate: false}\n"
                      "variants: [{name: a, method: rtn}]\n" f"output: {{dir: run, board: {tmp_path / 'b.sqlite'}}}\n")
    res = invoke("run", recipe)
    assert res.exit_code == 2
    assert "not in the local cache and the Hugging Face hub could not be reached" in res.output
    assert "local directory" in res.output


def test_debug_shows_traceback(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {source: x}\n")
    with pytest.raises(Exception):
        runner.invoke(app, ["--debug", "validate", str(recipe)], catch_exceptions=False)
