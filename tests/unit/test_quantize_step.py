"""Every variant's manifest records its quantize step (wall seconds, peak resident memory),
and the board shows them beside the evaluation figures."""

import json

import pytest

from llmquant.eval.evaluate import peak_rss_bytes
from llmquant.quantize.measure import measure_step, reset_peak_rss


def test_the_step_peak_leaves_out_what_the_process_did_before():
    if not reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its resident high-water mark")
    big = bytearray(300 << 20)
    big[::4096] = b"\x01" * len(big[::4096])  # ~300 MB resident, then freed
    before = peak_rss_bytes()
    del big
    with measure_step("cpu") as m:
        small = bytearray(20 << 20)
        small[::4096] = b"\x01" * len(small[::4096])
    assert m["quantize_peak_rss_scope"] == "step"
    assert m["quantize_peak_rss_bytes"] < before - (200 << 20)  # the 300 MB are not in the step's peak
    assert m["quantize_seconds"] >= 0
    del small


def test_manifest_and_board_record_the_quantize_step(tiny_recipe):
    from llmquant.board import Board
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    recipe = load_recipe(tiny_recipe(variants="""
  - {name: w4, method: rtn, bits: 4, group_size: 32}
"""))
    summary = run(recipe)
    manifest = json.loads((summary.run_dir / "variants" / "w4" / "manifest.json").read_text())
    assert manifest["quantize_seconds"] > 0
    assert 0 < manifest["quantize_peak_rss_bytes"] <= peak_rss_bytes()  # the peak since the step began
    assert manifest["summary"]["block_seconds"] and len(manifest["summary"]["block_seconds"]) == 3
    row = next(r for r in Board(summary.board_path).rows() if r.variant == "w4")
    assert row.quantize_seconds == manifest["quantize_seconds"]
    assert row.quantize_peak_rss_bytes == manifest["quantize_peak_rss_bytes"]
    board = (summary.run_dir / "leaderboard.md").read_text()
    assert "| quantize s | quantize RSS MB |" in board
    assert f"| {manifest['quantize_seconds']:.1f} | {manifest['quantize_peak_rss_bytes'] / 1e6:.0f} |" in board
    results = json.loads((summary.run_dir / "results.json").read_text())
    assert results["variants"][0]["quantize_step"]["quantize_peak_rss_bytes"] == manifest["quantize_peak_rss_bytes"]
    again = run(recipe)  # reused: the recorded step is shown again, not re-measured
    assert not again.variants[0].quantized_now
    assert again.variants[0].step["quantize_seconds"] == manifest["quantize_seconds"]
