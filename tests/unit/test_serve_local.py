"""The built-in OpenAI-compatible server on loopback, talked to with the real `openai` client:
the tiny model and a real packed (RTN W4, GPTQ v1) checkpoint; greedy output against a reference
decode computed here without the KV cache; auth, limits, malformed requests; shutdown."""

import json
import socket
import threading
import time

import httpx
import openai
import pytest
import torch

from llmquant.formats.load import load_checkpoint
from llmquant.serve.client import openai_client
from llmquant.serve.local import LocalSettings, create_app
from llmquant.serve.running import BackgroundServer
from llmquant.serve.textgen import Decoder

KEY = "test-key"
PROMPT = "The return statement"


@pytest.fixture(scope="module")
def rtn_checkpoint(tmp_path_factory, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmquant.quantize.base import QuantizeContext
    from llmquant.quantize.rtn.quantizer import RTNQuantizer
    from llmquant.quantize.rtn.config import RTNVariant

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path_factory.mktemp("rtn") / "checkpoint"
    RTNQuantizer().quantize(model, RTNVariant(name="w4", method="rtn", bits=4, group_size=32), None, out,
                            QuantizeContext(tokenizer=tok))
    return out


@pytest.fixture(scope="module")
def decoders(tiny_model_dir, rtn_checkpoint):
    out = {}
    for label, path in (("tiny", tiny_model_dir), ("rtn-w4", rtn_checkpoint)):
        model, tok, info = load_checkpoint(path)
        out[label] = Decoder(model, tok)
    assert type(out["rtn-w4"].model.model.layers[0].mlp.down_proj).__name__ == "QuantLinear"
    return out


@pytest.fixture(scope="module")
def servers(decoders):
    """One server per model, with an API key; stopped at the end of the module."""
    started = {}
    try:
        for label, dec in decoders.items():
            app = create_app(dec, LocalSettings(model_name=label, api_key=KEY, max_tokens=64, max_body_bytes=4096))
            started[label] = BackgroundServer(app).__enter__()
        yield started
    finally:
        for srv in started.values():
            srv.__exit__(None, None, None)
        for srv in started.values():
            assert not srv.thread.is_alive()


def greedy_reference(model, ids, n):
    """n greedy tokens, each from a full forward over everything so far (no cache)."""
    ids, out = list(ids), []
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
    return out


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("label", ["tiny", "rtn-w4"])
def test_greedy_completion_equals_reference_decode(servers, decoders, label):
    dec = decoders[label]
    client = openai_client(servers[label].base_url, KEY)
    ids = dec.tokenizer(PROMPT).input_ids
    ref = decode(dec.tokenizer, greedy_reference(dec.model, ids, 12))

    r = client.completions.create(model=label, prompt=PROMPT, max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == ref
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 12, len(ids) + 12)

    chunks = list(client.completions.create(model=label, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert len(text_chunks) == 12  # one chunk per generated token
    assert "".join(c.choices[0].text for c in text_chunks) == ref
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices

    # a token-id prompt is the same request
    r2 = client.completions.create(model=label, prompt=ids, max_tokens=12, temperature=0,
                                   extra_body={"ignore_eos": True})
    assert r2.choices[0].text == ref


def test_chat_uses_the_tokenizer_template(servers, decoders):
    dec = decoders["rtn-w4"]
    client = openai_client(servers["rtn-w4"].base_url, KEY)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does pass do?"}]
    prompt = dec.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = dec.tokenizer(prompt, add_special_tokens=False).input_ids
    ref = decode(dec.tokenizer, greedy_reference(dec.model, ids, 10))

    r = client.chat.completions.create(model="rtn-w4", messages=messages, max_tokens=10, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 10

    chunks = list(client.chat.completions.create(model="rtn-w4", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_ends_the_text_before_it(servers, decoders):
    dec = decoders["tiny"]
    client = openai_client(servers["tiny"].base_url, KEY)
    ids = dec.tokenizer(PROMPT).input_ids
    ref = decode(dec.tokenizer, greedy_reference(dec.model, ids, 20))
    stop = ref[6:9]
    assert stop.strip(), ref
    expected = ref[:ref.index(stop)]
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=stop, stream=True,
        extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == expected


def test_seeded_sampling_is_reproducible(servers):
    client = openai_client(servers["tiny"].base_url, KEY)
    kw = dict(model="tiny", prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, extra_body={"ignore_eos": True})
    a = client.completions.create(seed=5, **kw).choices[0].text
    b = client.completions.create(seed=5, **kw).choices[0].text
    assert a == b
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in range(6, 10)}
    assert len(others | {a}) > 1  # different seeds, different draws


def test_auth(servers):
    base = servers["tiny"].base_url
    assert httpx.get(f"{base}/health").status_code == 200  # health needs no key
    assert [m.id for m in openai_client(base, KEY).models.list()] == ["tiny"]
    with pytest.raises(openai.AuthenticationError):
        openai_client(base, "wrong").models.list()
    r = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"


def post(base, body, **kw):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    return httpx.post(f"{base}/v1/completions", content=body, headers=headers, **kw)


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"model": "tiny"}).encode(), 400, "prompt: required"),
    (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 65}).encode(), 400, "over this server's limit of 64"),
    (json.dumps({"model": "tiny", "prompt": "x", "temperature": 5}).encode(), 400, "temperature"),
    (json.dumps({"model": "tiny", "prompt": "x", "n": 2}).encode(), 400, "n must be 1"),
    (json.dumps({"model": "tiny", "prompt": [99999]}).encode(), 400, "token ids must be in"),
    (json.dumps({"model": "tiny", "prompt": ["a", "b"]}).encode(), 400, "one prompt per request"),
    (json.dumps({"model": "tiny", "prompt": [1] * 1020, "max_tokens": 10}).encode(), 400, "maximum context length is 1024"),
    (json.dumps({"model": "nope", "prompt": "x"}).encode(), 404, "does not exist"),
    (json.dumps({"model": "tiny", "prompt": "x" * 5000}).encode(), 413, "over this server's limit of 4096"),
])
def test_bad_requests_get_openai_errors(servers, body, status, needle):
    r = post(servers["tiny"].base_url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"]


def test_body_limit_without_content_length(servers):
    def chunks():  # a chunked upload: no Content-Length to check up front
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = post(servers["tiny"].base_url, chunks())
    assert r.status_code == 413


def test_server_survives_bad_requests(servers):
    client = openai_client(servers["tiny"].base_url, KEY)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=1000)
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).usage.completion_tokens >= 1


def test_queue_full_gets_429_and_slots_come_back(decoders):
    app = create_app(decoders["tiny"], LocalSettings(model_name="tiny", max_tokens=500, queue=1))
    adm = app.state.server.admission
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 500, "ignore_eos": True}
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as running:
            assert running.status_code == 200
            lines = running.iter_lines()  # (kept: a dropped iterator closes the connection)
            assert '"text"' in next(lines)  # the first token: it is generating now
            waiting = {}
            t = threading.Thread(target=lambda: waiting.update(r=httpx.post(
                f"{srv.base_url}/v1/completions", json=body | {"max_tokens": 3}, timeout=60)))
            t.start()
            deadline = time.monotonic() + 30
            while adm.inside < 2 and time.monotonic() < deadline:  # the second request is queued
                t.join(0.01)
            assert adm.inside == 2 and "r" not in waiting
            full = http.post("/v1/completions", json=body | {"max_tokens": 1})
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert full.json()["error"]["type"] == "rate_limit_error"
        # the client closed the stream after one token: its slot is free, the queued one runs
        t.join(60)
        assert waiting["r"].status_code == 200 and waiting["r"].json()["usage"]["completion_tokens"] == 3
        assert adm.inside == 0


def test_shutdown_closes_the_port(decoders):
    app = create_app(decoders["tiny"], LocalSettings(model_name="tiny"))
    with BackgroundServer(app) as srv:
        port = srv.port
        assert httpx.get(f"{srv.base_url}/health").status_code == 200
    assert not srv.thread.is_alive()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_foreground_server_loads_and_generates_on_one_model_thread(monkeypatch, tmp_path):
    """Loading, warm-up and every generation share one thread (torch ops ran ~2x slower on a
    thread other than the one that did the earlier parallel work)."""
    from types import SimpleNamespace

    from llmquant.recipe import ServeSpec
    from llmquant.serve import engine, local, running

    seen = {}

    def fake_load(target, serve, trust):
        seen["load_thread"] = threading.current_thread()
        return "decoder"

    def fake_app(decoder, settings, pool=None):
        seen["decoder"], seen["pool"] = decoder, pool
        return "app"

    monkeypatch.setattr(engine, "load_decoder", fake_load)
    monkeypatch.setattr(local, "create_app", fake_app)
    monkeypatch.setattr(running, "serve_forever", lambda app, host, port, on_ready=None: seen.setdefault("app", app))
    target = SimpleNamespace(checkpoint=tmp_path, name="m", info=SimpleNamespace(format="hf"))
    engine.serve_foreground(target, ServeSpec(engine="local"), "local", None)
    assert seen["decoder"] == "decoder" and seen["app"] == "app"
    assert seen["load_thread"] is not threading.main_thread()
    assert seen["pool"].submit(threading.current_thread).result() is seen["load_thread"]
    seen["pool"].shutdown()
