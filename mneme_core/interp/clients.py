"""Chat backends: an OpenAI-compatible HTTP endpoint and a local transformers model.

Both answer ``chat(messages) -> ChatResult``. The HTTP client is what vLLM, Ollama,
llama.cpp's server and OpenAI all speak (``POST {base_url}/chat/completions``). Endpoints
fail in practice — overloaded 5xx, hung connections, truncated or non-JSON bodies — so
every call has a timeout and is retried with exponential backoff; only errors a retry
cannot fix (bad key, unknown model: 4xx) stop at once. A semaphore caps requests in
flight however many threads call it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

Messages = list[dict[str, str]]


class LLMError(RuntimeError):
    """An LLM call failed for good (after retries, or with an error retries cannot fix)."""


class FatalLLMError(LLMError):
    """The endpoint refused in a way no retry fixes (bad key, unknown model): stop the run."""


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int


class ChatBackend(Protocol):
    name: str
    concurrency: int

    def chat(self, messages: Messages, max_tokens: int = 200) -> ChatResult: ...


class _Retryable(Exception):
    pass


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OpenAIChatClient:
    """Client for an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        *,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        concurrency: int = 4,
        temperature: float = 0.0,
    ):
        if not base_url:
            raise ValueError("interpret.base_url is empty: give the endpoint, e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise ValueError("interpret.model is empty: give the model name the endpoint serves")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = max(1, concurrency)
        self.temperature = temperature
        self._slots = threading.Semaphore(self.concurrency)
        self.requests_sent = 0  # every HTTP attempt, retries included (cost accounting)
        self._count_lock = threading.Lock()

    @classmethod
    def from_config(cls, icfg) -> OpenAIChatClient:
        """Build from ``InterpretConfig``; the key comes from the env var it names."""
        return cls(
            icfg.base_url, icfg.model, os.environ.get(icfg.api_key_env, "") if icfg.api_key_env else "",
            timeout_s=icfg.timeout_s, max_retries=icfg.max_retries, backoff_s=icfg.retry_backoff_s,
            concurrency=icfg.concurrency,
        )

    def chat(self, messages: Messages, max_tokens: int = 200) -> ChatResult:
        payload = json.dumps({
            "model": self.model, "messages": messages, "max_tokens": max_tokens,
            "temperature": self.temperature,
        }).encode()
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                with self._slots:
                    return self._post(payload, messages)
            except _Retryable as exc:
                last = str(exc)
        raise LLMError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last error: {last}")

    def _post(self, payload: bytes, messages: Messages) -> ChatResult:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        with self._count_lock:
            self.requests_sent += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            if exc.code >= 500 or exc.code in (408, 409, 429):
                raise _Retryable(f"HTTP {exc.code}: {detail}") from exc
            raise FatalLLMError(
                f"{self.url} answered HTTP {exc.code}: {detail}. Check interpret.base_url, interpret.model "
                f"and the API key variable interpret.api_key_env."
            ) from exc
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
            raise _Retryable(f"connection error: {exc}") from exc
        try:
            data = json.loads(body)
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"malformed response body ({exc}): {body[:200]!r}") from exc
        usage = data.get("usage") or {}
        prompt_text = "".join(m["content"] for m in messages)
        return ChatResult(
            text,
            int(usage.get("prompt_tokens") or _estimate_tokens(prompt_text)),
            int(usage.get("completion_tokens") or _estimate_tokens(text)),
        )


class TransformersChat:
    """A local instruct model run with transformers (greedy decoding, one call at a time)."""

    concurrency = 1

    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = _resolve_model_path(model)
        self.name = f"transformers:{model}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{model} has no chat template: give an instruct/chat model in interpret.model")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = device
        self._lock = threading.Lock()

    def chat(self, messages: Messages, max_tokens: int = 200) -> ChatResult:
        import torch

        enc = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = enc["input_ids"].to(self.device)
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=enc["attention_mask"].to(self.device), max_new_tokens=max_tokens,
                do_sample=False, pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new = out[0, ids.shape[1]:]
        return ChatResult(self.tokenizer.decode(new, skip_special_tokens=True), int(ids.shape[1]), int(new.numel()))


def _resolve_model_path(model: str) -> str:
    """A folder or hub id as given; a MNEME-known name (e.g. ``smollm2-135m-instruct``)
    resolved offline by ``mneme_core.models``."""
    if not model:
        raise ValueError("interpret.model is empty: give an instruct model folder, hub id or known name")
    if os.path.exists(model) or "/" in model:
        return model
    from mneme_core.models import resolve_named_model

    return str(resolve_named_model(model))


def make_backend(icfg) -> ChatBackend | None:
    """The chat backend the interpret config asks for; None for the offline explainer."""
    if icfg.explainer == "openai":
        return OpenAIChatClient.from_config(icfg)
    if icfg.explainer == "transformers":
        return TransformersChat(icfg.model, device=icfg.device)
    return None
