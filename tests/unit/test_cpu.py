"""CPU detection: what torch dispatches to, whether it is emulated, the bf16 rule, the
per-capability compile cache, and where the capability is reported."""

import json
import os
import subprocess
import sys

import pytest

from llmquant.cpu import bf16_fast, cpu_info, isolate_inductor_cache


def test_bf16_rule():
    assert bf16_fast("AVX512", True)
    assert not bf16_fast("AVX512", False)  # no bf16 instructions
    assert not bf16_fast("AVX2", True)  # an AVX2 dispatch chooses as an AVX2 machine would
    assert not bf16_fast("DEFAULT", True)


def _probe(env_cap):
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    if env_cap:
        env["ATEN_CPU_CAPABILITY"] = env_cap
    code = ("import json, os; from llmquant.cpu import cpu_info, isolate_inductor_cache; "
            "from llmquant.loading.runtime import resolve_dtype; isolate_inductor_cache(); i = cpu_info(); "
            "print(json.dumps({**i.as_dict(), 'auto': resolve_dtype('auto', 'cpu'), "
            "'cache': os.environ['TORCHINDUCTOR_CACHE_DIR']}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_emulated_avx2_dispatch_is_detected_and_chooses_fp32():
    native, avx2 = _probe(None), _probe("avx2")
    assert avx2["capability"] == "AVX2" and avx2["auto"] == "float32" and not avx2["bf16_fast"]
    assert avx2["emulated"] == ("avx512f" in native["flags"].split())
    assert not native["emulated"] and native["flags"] == avx2["flags"]  # the silicon is the same
    assert native["auto"] == ("bfloat16" if native["bf16_fast"] else "float32")
    # each capability compiles into its own cache
    assert avx2["cache"].endswith("-avx2") and native["cache"].endswith("-" + native["capability"].lower())


def test_explicit_inductor_cache_is_kept(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    isolate_inductor_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"


def test_version_and_env_report_the_capability():
    from typer.testing import CliRunner

    from llmquant.cli import app

    cap = cpu_info().capability
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and f"torch dispatch {cap}" in res.output
    res = CliRunner().invoke(app, ["env"])
    assert res.exit_code == 0 and "int4 layout: " in res.output and f"torch dispatch {cap}" in res.output
