"""Property-based tests: any YAML document gives a Recipe or a one-line UserError (never another
exception); packed formats round-trip for any shapes and values they accept."""

import copy

import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmquant.errors import UserError
from llmquant.recipe import Recipe, parse_recipe

VALID = {
    "model": {"source": "org/model", "dtype": "float32"},
    "calibration": {"dataset": "builtin:pydoc", "n_samples": 8, "seqlen": 64},
    "eval": {"dataset": {"source": "builtin:pydoc", "split": "test"}, "seqlen": 128, "max_windows": 2,
             "latency": {"prompt_tokens": 8}},
    "variants": [{"name": "a", "method": "rtn", "bits": 4, "group_size": 64,
                  "overrides": [{"pattern": "mlp", "bits": 8}]}],
    "select": {"policy": "smallest_within", "max_ppl_increase_pct": 2.0},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                    st.dictionaries(st.text(max_size=8), c, max_size=3)),
                      max_leaves=8)


def paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, prefix + (i,))


def check(doc):
    try:
        r = parse_recipe(doc, "fuzz.yaml")
    except UserError as e:
        msg = str(e)
        assert msg.startswith("fuzz.yaml: ") and "\n" not in msg
        return
    assert isinstance(r, Recipe)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_recipes_fail_cleanly(data):
    doc = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        all_paths = [p for p in paths(doc) if p]
        path = data.draw(st.sampled_from(all_paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = data.draw(values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8))] = data.draw(values)
    check(doc)


@settings(max_examples=200, deadline=None)
@given(values)
def test_arbitrary_documents_fail_cleanly(doc):
    check(doc)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_yaml_text(text):
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    check(doc)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([2, 3, 4, 8]), out_runs=st.integers(1, 3), groups=st.integers(1, 3),
       gs=st.sampled_from([32, 64]), sym=st.booleans(), seed=st.integers(0, 2**31))
def test_gptq_layer_round_trip(bits, out_runs, groups, gs, sym, seed):
    from llmquant.formats import gptq_v1
    from llmquant.formats.intweight import IntWeight
    from llmquant.quantize.grid import group_index, quantize_rtn

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(32 * out_runs, gs * groups, generator=g) * torch.rand(1, generator=g).item() * 10
    q, s, z = quantize_rtn(w, bits, gs, sym)
    layer = IntWeight(q, s, z, group_index(w.shape[1], gs), bits)
    back = gptq_v1.unpack_layer(gptq_v1.pack_layer(layer), bits)
    assert torch.equal(back.q, layer.q) and torch.equal(back.zeros, layer.zeros)
    assert torch.equal(back.scales, layer.scales.half().float())
