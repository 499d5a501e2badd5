"""Serving a checkpoint: vLLM on a GPU (`vllm.py`), the built-in OpenAI-compatible server elsewhere
(`local.py`), and first-token latency measured through either over HTTP (`http_latency.py`)."""
