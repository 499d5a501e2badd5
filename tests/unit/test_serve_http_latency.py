"""TTFT, inter-token latency and decode speed from a stream of chunks, on a fake clock."""

from types import SimpleNamespace as NS

import pytest

from llmquant.serve import http_latency


class FakeClient:
    """Streams 3 token chunks at 100, 150 and 210 ms after the request, then a closing chunk with no
    text at 215 ms and the usage chunk at 216 ms; each request starts 1 s after the previous one."""

    def __init__(self, clock):
        self.calls, self.clock = [], clock
        self.completions = NS(create=self.create)

    def create(self, **kw):
        self.calls.append(kw)
        start = self.clock.now
        chunks = [(0.100, "a", None), (0.150, "b", None), (0.210, "c", "length"), (0.215, "", "length")]

        def stream():
            for t, text, finish in chunks:
                self.clock.now = start + t
                yield NS(choices=[NS(text=text, finish_reason=finish)], usage=None)
            self.clock.now = start + 0.216
            yield NS(choices=[], usage=NS(completion_tokens=3))
            self.clock.now = start + 1.0

        return stream()


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_measure_http_latency_arithmetic(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(http_latency, "clock", clock)
    client = FakeClient(clock)
    lat = http_latency.measure_http_latency(client, "m", [[1, 2, 3, 4], [5, 6, 7, 8]], decode_tokens=2, warmup=1)
    # 3 requests: a warm-up on the first prompt (not counted), then every prompt once, as eval/latency.py does
    assert [c["prompt"] for c in client.calls] == [[1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4]]
    assert all(c["max_tokens"] == 3 and c["stream"] and c["temperature"] == 0 for c in client.calls)
    assert all(c["extra_body"] == {"ignore_eos": True} and c["stream_options"] == {"include_usage": True}
               for c in client.calls)
    assert lat.runs == 2 and lat.prompt_tokens == 4 and lat.decode_tokens == 2
    assert lat.ttft_ms_median == pytest.approx(100.0) and lat.ttft_ms_p90 == pytest.approx(100.0)
    # gaps 50 and 60 ms per run (the closing chunk is not a token): median 55, p90 of [50, 50, 60, 60] = 60
    assert lat.itl_ms_median == pytest.approx(55.0) and lat.itl_ms_p90 == pytest.approx(60.0)
    # (3 - 1) tokens over 210 - 100 ms
    assert lat.decode_tok_s == pytest.approx(2 / 0.110)
