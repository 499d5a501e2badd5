from pathlib import Path

import pytest
import yaml

from llmquant.errors import UserError
from llmquant.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "model": {"source": "some/model"},
    "eval": {"dataset": "builtin:pydoc", "seqlen": 128},
    "variants": [{"name": "a", "method": "rtn", "bits": 4, "group_size": 64}],
}


def bad(doc, tmp_path, text=None) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(text if text is not None else yaml.safe_dump(doc))
    with pytest.raises(UserError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p))
    return msg


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    r = load_recipe(path)
    assert r.model.source and r.eval.seqlen > 0


def test_defaults_and_paths(tmp_path):
    p = tmp_path / "sub" / "r.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(BASE))
    r = load_recipe(p)
    assert r.run_name == "r"
    assert r.resolve("data.txt") == p.parent.resolve() / "data.txt"
    assert r.select.policy == "smallest_within" and r.select.max_ppl_increase_pct == 2.0
    assert r.model.trust_remote_code is False
    assert r.eval.dataset.source == "builtin:pydoc"  # a plain string becomes a DatasetSpec


def test_unknown_key_names_yaml_path(tmp_path):
    doc = {**BASE, "variants": [BASE["variants"][0], {"name": "b", "method": "rtn", "bitz": 4}]}
    assert "variants[1].bitz: unknown key" in bad(doc, tmp_path)
    assert "model.sourc: unknown key" in bad({**BASE, "model": {"sourc": "x"}}, tmp_path)


def test_bits_9_lists_allowed(tmp_path):
    doc = {**BASE, "variants": [{"name": "a", "method": "rtn"}, {"name": "b", "method": "rtn"},
                                {"name": "c", "method": "rtn", "bits": 9}]}
    msg = bad(doc, tmp_path)
    assert "variants[2].bits: got 9" in msg and "2, 3, 4 or 8" in msg


def test_wrong_type(tmp_path):
    msg = bad({**BASE, "eval": {"dataset": "builtin:pydoc", "seqlen": "long"}}, tmp_path)
    assert "eval.seqlen: got 'long'" in msg and "integer" in msg


def test_group_size_zero_and_unknown_method(tmp_path):
    assert "variants[0].group_size: got 0" in bad({**BASE, "variants": [{"name": "a", "method": "rtn", "group_size": 0}]}, tmp_path)
    msg = bad({**BASE, "variants": [{"name": "a", "method": "magic"}]}, tmp_path)
    assert "variants[0].method: 'magic' is not a known method" in msg and "rtn" in msg


def test_names_unique_and_safe(tmp_path):
    assert "already used by variants[0]" in bad({**BASE, "variants": [BASE["variants"][0]] * 2}, tmp_path)
    assert "variants[0].name: got '../evil'" in bad({**BASE, "variants": [{"name": "../evil", "method": "rtn"}]}, tmp_path)


def test_missing_sections_and_malformed_yaml(tmp_path):
    assert "eval: required but missing" in bad({"model": {"source": "x"}}, tmp_path)
    msg = bad(None, tmp_path, text="model: {source: x\neval: [")
    assert "malformed YAML at line" in msg
    assert "must be a YAML mapping" in bad(None, tmp_path, text="- a\n- b\n")
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_bad_override_regex(tmp_path):
    doc = {**BASE, "variants": [{"name": "a", "method": "rtn", "overrides": [{"pattern": "(", "skip": True}]}]}
    assert "variants[0].overrides[0].pattern" in bad(doc, tmp_path)


def test_parse_recipe_without_file():
    r = parse_recipe(BASE)
    assert r.variants[0].bits == 4 and r.path is None


@pytest.mark.parametrize("select,want", [
    ({"max_kld": -1}, "select.max_kld: got -1; input should be greater than or equal to 0"),
    ({"min_top1": 1.5}, "select.min_top1: got 1.5; input should be less than or equal to 1"),
    ({"max_kld": "low"}, "select.max_kld: got 'low'"),
])
def test_fidelity_bounds_bad_values(tmp_path, select, want):
    assert want in bad({**BASE, "select": select}, tmp_path)


@pytest.mark.parametrize("protocol", ["lm-eval-word", "llama-cpp"])
def test_fidelity_bounds_need_a_fidelity_protocol(tmp_path, protocol):
    doc = {**BASE, "eval": {**BASE["eval"], "protocol": protocol}, "select": {"min_top1": 0.9}}
    msg = bad(doc, tmp_path)
    assert "select.min_top1:" in msg and "only under eval.protocol gptq-paper" in msg and f"(this recipe: {protocol})" in msg


def test_fidelity_bounds_load_under_gptq_paper(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**BASE, "select": {"max_kld": 0.05, "min_top1": 0.9}}))
    r = load_recipe(p)
    assert r.eval.protocol == "gptq-paper" and r.select.max_kld == 0.05 and r.select.min_top1 == 0.9
