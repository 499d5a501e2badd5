"""Peers on our protocol without the peers: recipe validation, the job file, the worker protocol
run end to end against a fake gptqmodel (tests/fake_gptqmodel.py) behind a fake interpreter,
and the one-line errors for a missing interpreter or package."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from llmquant.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CALIB = """calibration:
  dataset: {source: "builtin:pydoc", split: train}
  n_samples: 6
  seqlen: 64
  seed: 3
"""


def fake_interpreter(dir: Path, version: str | None = "7.6.0") -> Path:
    """An executable standing in for a peer venv's python: this interpreter, with a site directory
    holding the fake gptqmodel (and its dist-info) when `version` is given. The peer runs without
    our PYTHONPATH, so the script sets its own (the fake itself writes with llmquant's writer)."""
    site = dir / "site"
    site.mkdir(parents=True)
    if version is not None:
        pkg = site / "gptqmodel"
        pkg.mkdir()
        (pkg / "__init__.py").write_text((ROOT / "tests" / "fake_gptqmodel.py").read_text())
        (pkg / "version.py").write_text(f"__version__ = {version!r}\n")
        meta = site / f"gptqmodel-{version}.dist-info"
        meta.mkdir()
        (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: gptqmodel\nVersion: {version}\n")
    python = dir / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}:{ROOT}" exec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return python


# -- recipe ------------------------------------------------------------------------------------

def _parse(variants: list[dict], peers: dict | None = None):
    from llmquant.recipe import parse_recipe

    data = {"name": "r", "model": {"source": "/nowhere"}, "eval": {"dataset": {"source": "builtin:pydoc"}},
            "calibration": {"dataset": {"source": "builtin:pydoc"}}, "variants": variants}
    if peers is not None:
        data["peers"] = peers
    return parse_recipe(data, Path("/tmp/recipe.yaml"))


def test_recipe_accepts_peer_backends_and_keeps_old_cache_keys():
    r = _parse([{"name": "a", "method": "gptq", "bits": 4},
                {"name": "b", "method": "gptq", "bits": 4, "backend": "gptqmodel"},
                {"name": "c", "method": "gptq", "bits": 4, "backend": "llmcompressor"}],
               peers={"gptqmodel": "../peers/gptqmodel/bin/python"})
    assert [getattr(v, "backend") for v in r.variants] == ["llmquant", "gptqmodel", "llmcompressor"]
    # a variant on our backend dumps as before `backend` existed, so its cache key is unchanged
    assert "backend" not in r.variants[0].model_dump(mode="json")
    assert r.variants[1].model_dump(mode="json")["backend"] == "gptqmodel"
    assert r.resolve(r.peers["gptqmodel"]) == Path("/tmp/../peers/gptqmodel/bin/python")


@pytest.mark.parametrize("variant,peers,match", [
    ({"backend": "autogptq"}, None, r"variants\[0\]\.backend: .*'llmquant', 'gptqmodel' or 'llmcompressor'"),
    ({"method": "signround", "backend": "gptqmodel"}, None, r"variants\[0\]\.backend: .*'llmquant' or 'autoround'"),
    ({"backend": "gptqmodel", "overrides": [{"pattern": "down_proj", "bits": 8}]}, None,
     r"variants\[0\].*overrides are not passed to backend gptqmodel"),
    ({"backend": "llmcompressor", "quantize_lm_head": True}, None,
     r"variants\[0\].*quantize_lm_head is not passed to backend llmcompressor"),
    ({}, {"autogptq": "/x/python"}, r"peers\.autogptq"),
])
def test_recipe_rejects_what_peers_cannot_do(variant, peers, match):
    with pytest.raises(UserError, match=match) as e:
        _parse([{"name": "a", "method": "gptq", "bits": 4} | variant], peers)
    assert "\n" not in str(e.value)


def test_rtn_has_no_backend():
    with pytest.raises(UserError, match=r"variants\[0\]\.backend"):
        _parse([{"name": "a", "method": "rtn", "bits": 4, "backend": "gptqmodel"}])


# -- job -----------------------------------------------------------------------------------------

def test_job_round_trips_through_json_and_matches_the_worker(tmp_path):
    from llmquant.peers import job as job_mod
    from llmquant.peers import worker_common
    from llmquant.quantize.gptq.config import GPTQVariant

    v = GPTQVariant(name="g", method="gptq", bits=3, group_size=64, sym=False, desc_act=True, damp_percent=0.05,
                    backend="gptqmodel")
    job = job_mod.make_job("gptq", v, tmp_path / "base", tmp_path / "calib.safetensors", tmp_path / "out",
                           tmp_path / "result.json", "bfloat16")
    back = json.loads(json.dumps(job.to_dict()))
    assert job_mod.PeerJob(**back) == job
    assert back["settings"] == {"bits": 3, "group_size": 64, "sym": False, "desc_act": True, "static_groups": False,
                                "act_group_aware": v.act_group_aware, "damp_percent": 0.05,
                                "true_sequential": True, "block_size": 128, "quantize_lm_head": False}
    assert back["save_dtype"] == "bfloat16" and back["model_dir"] == str(tmp_path / "base")
    assert job_mod.JOB_VERSION == worker_common.JOB_VERSION == back["version"]


def test_worker_maps_our_settings_to_gptqmodel():
    sys.path.insert(0, str(ROOT / "llmquant" / "peers"))
    try:
        import gptqmodel_worker
    finally:
        sys.path.pop(0)
    s = {"bits": 4, "group_size": 64, "sym": True, "desc_act": True, "static_groups": False, "act_group_aware": True,
         "damp_percent": 0.02, "true_sequential": False, "block_size": 128, "quantize_lm_head": False}
    # desc_act wins over act_group_aware (gptqmodel refuses both)
    assert gptqmodel_worker.gptq_config(s) == {"bits": 4, "group_size": 64, "sym": True, "desc_act": True,
                                               "damp_percent": 0.02, "static_groups": False,
                                               "true_sequential": False, "act_group_aware": False, "lm_head": False}


def test_worker_maps_our_settings_to_autoround(tmp_path):
    sys.path.insert(0, str(ROOT / "llmquant" / "peers"))
    try:
        import autoround_worker
    finally:
        sys.path.pop(0)
    from llmquant.peers import job as job_mod
    from llmquant.quantize.signround.config import SignRoundVariant

    v = SignRoundVariant(name="s", method="signround", bits=3, group_size=64, iters=50, lr=0.005, batch_size=4,
                         backend="autoround")
    job = job_mod.make_job("signround", v, tmp_path, tmp_path / "c", tmp_path / "o", tmp_path / "r", "float16")
    assert job.settings == {"bits": 3, "group_size": 64, "sym": True, "iters": 50, "lr": 0.005, "minmax_lr": None,
                            "batch_size": 4, "seed": 0}
    assert autoround_worker.signround_config(job.settings, 128, 512) == {
        "bits": 3, "group_size": 64, "sym": True, "iters": 50, "nsamples": 128, "seqlen": 512, "batch_size": 4,
        "seed": 0, "amp": False, "lr": 0.005}
    off = autoround_worker.signround_config({**job.settings, "minmax_lr": 0, "batch_size": 16}, 8, 64)
    assert off["enable_minmax_tuning"] is False and off["batch_size"] == 8 and "minmax_lr" not in off
    # auto-round saves under a folder of its own naming: the files move up into the variant's folder
    staging = tmp_path / "out" / ".autoround" / "model-w3g64"
    staging.mkdir(parents=True)
    (staging / "config.json").write_text("{}")
    (staging / "model.safetensors").write_bytes(b"x")
    autoround_worker.move_up(tmp_path / "out" / ".autoround", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


# -- interpreter errors --------------------------------------------------------------------------

def _recipe_with(tiny_recipe, python: str | None) -> Path:
    peers = f"peers: {{gptqmodel: {python}}}\n" if python else ""
    return tiny_recipe(variants="""
  - {name: peer, method: gptq, bits: 4, group_size: 32, backend: gptqmodel}
""", extra=CALIB + peers)


def test_missing_interpreter_is_one_line_naming_the_field(tiny_recipe, tmp_path, monkeypatch):
    from llmquant.preflight import preflight
    from llmquant.recipe import load_recipe

    monkeypatch.delenv("LLMQUANT_GPTQMODEL_PYTHON", raising=False)
    with pytest.raises(UserError) as e:
        preflight(load_recipe(_recipe_with(tiny_recipe, str(tmp_path / "nope" / "bin" / "python"))))
    msg = str(e.value)
    assert "\n" not in msg
    assert "variants[0].backend" in msg and "(from peers.gptqmodel) not found" in msg
    assert "gptqmodel 7.6.0" in msg and "LLMQUANT_GPTQMODEL_PYTHON" in msg


def test_env_var_overrides_the_recipe_and_is_named(tiny_recipe, tmp_path, monkeypatch):
    from llmquant.preflight import preflight
    from llmquant.recipe import load_recipe

    monkeypatch.setenv("LLMQUANT_GPTQMODEL_PYTHON", str(tmp_path / "gone"))
    with pytest.raises(UserError, match=r"from LLMQUANT_GPTQMODEL_PYTHON\) not found"):
        preflight(load_recipe(_recipe_with(tiny_recipe, str(fake_interpreter(tmp_path / "fake")))))


def test_missing_package_is_one_line(tiny_recipe, tmp_path, monkeypatch):
    from llmquant.preflight import preflight
    from llmquant.recipe import load_recipe

    monkeypatch.delenv("LLMQUANT_GPTQMODEL_PYTHON", raising=False)
    python = fake_interpreter(tmp_path / "bare", version=None)
    with pytest.raises(UserError) as e:
        preflight(load_recipe(_recipe_with(tiny_recipe, str(python))))
    assert "\n" not in str(e.value)
    assert f"gptqmodel is not installed for {python} (from peers.gptqmodel)" in str(e.value)


def test_broken_interpreter_is_one_line(tiny_recipe, tmp_path, monkeypatch):
    from llmquant.preflight import preflight
    from llmquant.recipe import load_recipe

    monkeypatch.delenv("LLMQUANT_GPTQMODEL_PYTHON", raising=False)
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho 'libpython3.11.so: cannot open shared object file' >&2\nexit 127\n")
    python.chmod(0o755)
    with pytest.raises(UserError, match=r"failed \(exit 127: libpython3\.11\.so: cannot open") as e:
        preflight(load_recipe(_recipe_with(tiny_recipe, str(python))))
    assert "\n" not in str(e.value)


def test_untested_version_runs_with_a_note(tiny_recipe, tmp_path, monkeypatch):
    from llmquant.preflight import preflight
    from llmquant.recipe import load_recipe

    monkeypatch.delenv("LLMQUANT_GPTQMODEL_PYTHON", raising=False)
    report = preflight(load_recipe(_recipe_with(tiny_recipe, str(fake_interpreter(tmp_path / "f", "9.9.9")))))
    assert report.peers["gptqmodel"].version == "9.9.9"
    assert any("gptqmodel 9.9.9" in n and "not a version tested" in n for n in report.notes)


# -- the whole protocol, with the fake peer ------------------------------------------------------

def test_peer_variant_is_calibrated_on_our_crops_and_scored_on_our_protocol(tiny_recipe, tmp_path, monkeypatch,
                                                                             tiny_model_dir):
    """The fake peer writes exactly what our RTN writes, so its row must equal the RTN row; it must
    have been given exactly our calibration crops; the board tags it with the peer's version."""
    from llmquant.board import Board, method_label
    from llmquant.data import calibration_crops, load_corpus, tokenize
    from llmquant.pipeline import run
    from llmquant.recipe import DatasetSpec, load_recipe
    from transformers import AutoTokenizer

    monkeypatch.delenv("LLMQUANT_GPTQMODEL_PYTHON", raising=False)
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_PEER_RECORD", str(record))
    python = fake_interpreter(tmp_path / "fake")
    path = tiny_recipe(variants="""
  - {name: rtn4, method: rtn, bits: 4, group_size: 32}
  - {name: peer4, method: gptq, bits: 4, group_size: 32, damp_percent: 0.05, backend: gptqmodel}
""", extra=CALIB + f"peers: {{gptqmodel: {python}}}\n")
    summary = run(load_recipe(path))

    got = json.loads(record.read_text())
    corpus = load_corpus(DatasetSpec(source="builtin:pydoc", split="train"), tmp_path, "calibration.dataset")
    ids = tokenize(AutoTokenizer.from_pretrained(tiny_model_dir), corpus.text)
    assert torch.equal(torch.tensor(got["input_ids"]), calibration_crops(ids, 6, 64, 3))
    assert got["config"]["bits"] == 4 and got["config"]["group_size"] == 32 and got["config"]["damp_percent"] == 0.05
    assert got["dtype"] == "torch.float32"

    out = {o.name: o for o in summary.variants}
    assert out["peer4"].result.ppl == out["rtn4"].result.ppl
    assert out["peer4"].result.size_bytes == out["rtn4"].result.size_bytes
    peer = out["peer4"].summary
    assert peer["backend"] == "gptqmodel 7.6.0" and peer["format"] == "gptq-v1"
    assert peer["peer"]["peer_config"]["damp_percent"] == 0.05
    ours = {r["module"]: r["rel_error"] for r in out["rtn4"].summary["layers"]}
    theirs = {r["module"]: r["rel_error"] for r in peer["layers"]}
    assert theirs.keys() == ours.keys() and len(ours) == 21
    for k in ours:
        assert theirs[k] == pytest.approx(ours[k], rel=1e-5)

    rows = {r.variant: r.data for r in Board(tmp_path / "board.sqlite").rows()}
    assert rows["peer4"]["backend"] == "gptqmodel 7.6.0" and rows["rtn4"]["backend"] is None
    assert method_label(rows["peer4"]) == "gptq (gptqmodel 7.6.0)" and method_label(rows["rtn4"]) == "rtn"
    # the run's leaderboard and HTML report show who quantized the row
    assert "| peer4 | gptq (gptqmodel 7.6.0) |" in (summary.run_dir / "leaderboard.md").read_text()
    assert "gptq (gptqmodel 7.6.0)" in (summary.run_dir / "report.html").read_text()

    # a rerun reuses the checkpoint: the peer is not started again
    monkeypatch.setenv("FAKE_PEER_FAIL", "must not run")
    again = run(load_recipe(path))
    assert {o.name: o.quantized_now for o in again.variants} == {"rtn4": False, "peer4": False}


def test_peer_failure_is_one_line_and_leaves_no_checkpoint(tiny_recipe, tmp_path, monkeypatch):
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    monkeypatch.delenv("LLMQUANT_GPTQMODEL_PYTHON", raising=False)
    monkeypatch.setenv("FAKE_PEER_FAIL", "out of patience")
    python = fake_interpreter(tmp_path / "fake")
    path = _recipe_with(tiny_recipe, str(python))
    with pytest.raises(UserError) as e:
        run(load_recipe(path))
    msg = str(e.value)
    assert "\n" not in msg
    assert "peer: gptqmodel 7.6.0 failed: RuntimeError: out of patience; log: " in msg
    log = Path(msg.rsplit("log: ", 1)[1])
    assert "Traceback" in log.read_text()
    ckpt = tmp_path / "run" / "variants" / "peer" / "checkpoint"
    assert not ckpt.exists()
    assert not os.path.exists(tmp_path / "run" / "variants" / "peer" / "manifest.json")


def test_awq_variant_takes_peer_backends():
    from llmquant.peers import job as job_mod
    from llmquant.quantize.awq.config import AWQVariant

    v = AWQVariant(name="a", method="awq", bits=4, group_size=64, backend="llmcompressor")
    assert v.backend == "llmcompressor"
    assert "backend" not in AWQVariant(name="a", method="awq", bits=4).model_dump()  # cache keys unchanged
    with pytest.raises(ValueError, match="overrides are not passed to backend gptqmodel"):
        AWQVariant(name="a", method="awq", bits=4, backend="gptqmodel", overrides=[{"pattern": "down_proj", "skip": True}])
    # the peers name AWQ's grid by `sym`: zero points (our default) are sym false
    assert job_mod.settings_for("awq", v) == {"bits": 4, "group_size": 64, "quantize_lm_head": False, "sym": False}
    sym = AWQVariant(name="a", method="awq", bits=4, group_size=64, zero_point=False, backend="gptqmodel")
    assert job_mod.settings_for("awq", sym)["sym"] is True


def test_awq_settings_a_peer_cannot_honour_are_named():
    from llmquant.peers import BACKENDS
    from llmquant.quantize.awq.config import AWQVariant

    default = AWQVariant(name="a", method="awq", bits=4, backend="gptqmodel")
    assert BACKENDS["gptqmodel"].ignored("awq", default) == {}
    tuned = AWQVariant(name="a", method="awq", bits=4, n_grid=40, calib_dtype="float32", backend="gptqmodel")
    assert set(BACKENDS["gptqmodel"].ignored("awq", tuned)) == {"n_grid", "calib_dtype"}
    assert "n_grid" in BACKENDS["llmcompressor"].ignored("awq", tuned)


def test_gptq_grid_and_arithmetic_the_peers_do_not_take_are_named():
    from llmquant.peers import BACKENDS
    from llmquant.quantize.gptq.config import GPTQVariant

    default = GPTQVariant(name="g", method="gptq", bits=3, backend="gptqmodel")  # grid mse, precision auto
    assert set(BACKENDS["gptqmodel"].ignored("gptq", default)) == {"grid", "precision"}
    assert "min..max" in BACKENDS["llmcompressor"].ignored("gptq", default)["grid"]
    plain = GPTQVariant(name="g", method="gptq", bits=3, grid="minmax", precision="float32", backend="gptqmodel")
    assert BACKENDS["gptqmodel"].ignored("gptq", plain) == {}
    full = GPTQVariant(name="g", method="gptq", bits=3, grid="fullrange", precision="float32", backend="gptqmodel")
    assert "not full range" in BACKENDS["gptqmodel"].ignored("gptq", full)["grid"]


def test_signround_settings_autoround_does_not_take_are_named():
    from llmquant.peers import BACKENDS
    from llmquant.quantize.signround.config import SignRoundVariant

    default = SignRoundVariant(name="s", method="signround", bits=3, backend="autoround")  # target model, fullrange
    assert BACKENDS["autoround"].ignored("signround", default) == {}
    ours = SignRoundVariant(name="s", method="signround", bits=3, target="block", grid="minmax", backend="autoround")
    assert set(BACKENDS["autoround"].ignored("signround", ours)) == {"target", "grid"}


def test_awq_by_a_fake_gptqmodel_ranks_next_to_ours(tiny_recipe, tiny_model_dir, tmp_path, monkeypatch):
    """The gptqmodel worker's AWQ path end to end: bf16, the torch_awq packing backend on a CPU,
    an AWQ GEMM checkpoint read by our loader. The fake writes the asymmetric RTN grid, so it
    scores as our rtn with sym false."""
    from llmquant.pipeline import run
    from llmquant.recipe import load_recipe

    monkeypatch.delenv("LLMQUANT_GPTQMODEL_PYTHON", raising=False)
    record = tmp_path / "record.json"
    monkeypatch.setenv("FAKE_PEER_RECORD", str(record))
    python = fake_interpreter(tmp_path / "fake")
    path = tiny_recipe(variants="""
  - {name: rtn4a, method: rtn, bits: 4, group_size: 32, sym: false}
  - {name: awq4, method: awq, bits: 4, group_size: 32, backend: gptqmodel}
""", extra=CALIB + f"peers: {{gptqmodel: {python}}}\n")
    summary = run(load_recipe(path))
    got = json.loads(record.read_text())
    assert got["config"] == {"method": "awq", "format": "gemm", "bits": 4, "group_size": 32, "sym": False,
                             "lm_head": False}
    assert got["dtype"] == "torch.bfloat16" and got["backend"] == "torch_awq"
    out = {o.name: o for o in summary.variants}
    peer = out["awq4"].summary
    assert peer["backend"] == "gptqmodel 7.6.0" and peer["format"] == "awq-gemm"
    assert peer["peer"]["peer_config"]["backend"] == "torch_awq"
    # the fake quantized the bf16-loaded weights: within bf16 rounding of our fp32 asymmetric RTN
    assert out["awq4"].result.ppl == pytest.approx(out["rtn4a"].result.ppl, rel=2e-2)


