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
    for var in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "TORCHINDUCTOR_CACHE_DIR"):
        env.pop(var, None)
    if env_cap:  # as on a CPU without the newer instructions: torch and oneDNN both capped
        env["ATEN_CPU_CAPABILITY"] = env_cap
        env["ONEDNN_MAX_CPU_ISA"] = env_cap.upper()
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


def test_an_incomplete_emulation_on_an_amx_cpu_is_named():
    from llmquant.cpu import CpuInfo, emulation_problem

    amx = CpuInfo("Xeon", "AVX2", True, ("avx2", "avx512f", "avx512_bf16", "amx_bf16"), False)
    problem = emulation_problem(amx, {"ATEN_CPU_CAPABILITY": "avx2"})
    assert problem and "ONEDNN_MAX_CPU_ISA=AVX2" in problem and "ATEN_CPU_CAPABILITY=avx2" in problem
    assert emulation_problem(amx, {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}) is None
    no_amx = CpuInfo("EPYC", "AVX2", True, ("avx2", "avx512f", "avx512_bf16"), False)
    assert emulation_problem(no_amx, {"ATEN_CPU_CAPABILITY": "avx2"}) is None
    assert emulation_problem(CpuInfo("Xeon", "AVX512", False, amx.flags, True), {}) is None
