"""Talking to a running server with the real `openai` client (any OpenAI-compatible engine)."""

from __future__ import annotations


def openai_client(base_url: str, api_key: str | None = None, timeout: float = 600.0):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=api_key or "none", max_retries=0, timeout=timeout)


def chat_once(base_url: str, model: str, message: str, api_key: str | None = None, max_tokens: int = 48,
              seed: int = 0) -> str:
    """One greedy chat request; the answer's text."""
    client = openai_client(base_url, api_key)
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": message}],
                                       max_tokens=max_tokens, temperature=0, seed=seed)
    return r.choices[0].message.content or ""
