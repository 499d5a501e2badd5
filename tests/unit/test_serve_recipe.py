"""The recipe's serve: section and eval.latency.via, and what an evaluation job carries."""

import pytest

from llmquant.errors import UserError
from llmquant.run_inputs import latency_job
from llmquant.recipe import parse_recipe

BASE = {"model": {"source": "m"}, "eval": {"dataset": "builtin:pydoc"}}


def recipe(**extra):
    return parse_recipe(BASE | extra, "r.yaml")


def test_defaults():
    s = recipe().serve
    assert (s.after_run, s.engine, s.host, s.port, s.api_key_env) == ("none", "auto", "127.0.0.1", 8000, None)
    assert s.vllm.gpu_memory_utilization == 0.9 and s.vllm.max_model_len is None and s.vllm.fit_check
    assert (s.local.max_tokens, s.local.queue) == (512, 8)


def test_after_run_accepts_booleans():
    assert recipe(serve={"after_run": True}).serve.after_run == "serve"
    assert recipe(serve={"after_run": False}).serve.after_run == "none"
    assert recipe(serve={"after_run": "check"}).serve.after_run == "check"


@pytest.mark.parametrize("serve, message", [
    ({"vllm": {"tensor_parralel_size": 2}}, "serve.vllm.tensor_parralel_size: unknown key"),
    ({"engine": "gpu"}, "serve.engine: got 'gpu'"),
    ({"vllm": {"gpu_memory_utilization": 1.5}}, "serve.vllm.gpu_memory_utilization: got 1.5"),
    ({"vllm": {"distributed_executor_backend": "slurm"}}, "serve.vllm.distributed_executor_backend: got 'slurm'"),
    ({"local": {"queue": -1}}, "serve.local.queue: got -1"),
    ({"after_run": "forever"}, "serve.after_run: got 'forever'"),
])
def test_bad_serve_settings_name_their_yaml_path(serve, message):
    with pytest.raises(UserError, match="r.yaml: ") as e:
        recipe(serve=serve)
    assert message in str(e.value)


def test_latency_via_is_checked():
    with pytest.raises(UserError, match="eval.latency.via: got 'http'"):
        parse_recipe(BASE | {"eval": {"dataset": "builtin:pydoc", "latency": {"via": "http"}}}, "r.yaml")


def test_latency_job_in_process_is_unchanged_and_server_carries_the_engine():
    r = recipe()
    assert latency_job(r) == {"enabled": True, "prompt_tokens": 128, "decode_tokens": 32, "repeats": 5,
                              "warmup": 1, "prompts": None}  # no "via": cached results keep their keys
    r = parse_recipe(BASE | {"eval": {"dataset": "builtin:pydoc", "latency": {"via": "server"}},
                             "serve": {"engine": "local", "port": 9, "after_run": "serve"}}, "r.yaml")
    job = latency_job(r)
    assert job["via"] == "server" and set(job["serve"]) == {"engine", "local", "vllm"}
    assert job["serve"]["engine"] == "local"
    r = parse_recipe(BASE | {"eval": {"dataset": "builtin:pydoc", "latency": {"enabled": False}}}, "r.yaml")
    assert latency_job(r) is None
