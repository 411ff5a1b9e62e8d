"""Chat backends: an OpenAI-compatible endpoint and a local transformers model.

Both answer ``chat(messages) -> ChatResult``. The endpoint is spoken to with the
``openai`` client, which every OpenAI-compatible server accepts (vLLM, Ollama, llama.cpp's
server, OpenAI itself). Endpoints fail in practice — overloaded 5xx, hung connections,
truncated or non-JSON bodies — so every call has a timeout and is retried: the client
retries HTTP failures and timeouts with its own backoff (honouring ``Retry-After``); an
answer that arrives but carries no text is retried here, from the same budget of
``max_retries``. Only errors a retry cannot fix (bad key, unknown model: 4xx) stop at
once, as :class:`FatalLLMError`. A semaphore caps requests in flight however many threads
call it.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import openai

from mneme_core.common.config import ConfigError

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

Messages = list[dict[str, str]]
# Statuses a retry can fix (the openai client retries exactly these and connection errors).
RETRYABLE_STATUS = frozenset({408, 409, 429})
# Local servers ask for no key, but the client refuses to start without one.
NO_KEY = "not-needed"


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


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _answer(raw: Any) -> tuple[Any, str]:
    """The parsed completion and its text; ValueError when the body carries no text."""
    body = raw.http_response.text[:200]
    try:
        completion = raw.parse()
        text = completion.choices[0].message.content
    except (ValueError, AttributeError, IndexError, TypeError, openai.APIResponseValidationError) as exc:
        raise ValueError(f"malformed response body ({type(exc).__name__}: {exc}): {body!r}") from exc
    if not isinstance(text, str):
        raise ValueError(f"malformed response body (no message content): {body!r}")
    return completion, text


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
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = max(1, concurrency)
        self.temperature = temperature
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or NO_KEY, timeout=timeout_s, max_retries=max_retries
        )
        self._slots = threading.Semaphore(self.concurrency)

    @classmethod
    def from_config(cls, icfg) -> OpenAIChatClient:
        """Build from ``InterpretConfig``; the key comes from the env var it names."""
        return cls(
            icfg.base_url,
            icfg.model,
            os.environ.get(icfg.api_key_env, "") if icfg.api_key_env else "",
            timeout_s=icfg.timeout_s,
            max_retries=icfg.max_retries,
            backoff_s=icfg.retry_backoff_s,
            concurrency=icfg.concurrency,
        )

    def chat(self, messages: Messages, max_tokens: int = 200) -> ChatResult:
        attempts, last = 0, "no attempt made"
        while attempts <= self.max_retries:
            if attempts:  # only an empty answer comes back here; the client spaced out its own retries
                delay = self.backoff_s * 2 ** (attempts - 1)
                time.sleep(delay * (0.5 + random.random() / 2))
            retries_left = self.max_retries - attempts
            # Our messages are {"role", "content"} dicts, the shape the API takes; openai's
            # stubs name each role's TypedDict, which a plain dict[str, str] cannot match.
            api_messages = cast("list[ChatCompletionMessageParam]", messages)
            try:
                with self._slots:
                    raw = self._client.with_options(max_retries=retries_left).chat.completions.with_raw_response.create(
                        model=self.model, messages=api_messages, max_tokens=max_tokens, temperature=self.temperature
                    )
            except openai.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in RETRYABLE_STATUS:
                    raise FatalLLMError(
                        f"{self.base_url} answered HTTP {exc.status_code}: {exc.response.text[:300]}. Check "
                        f"interpret.base_url, interpret.model and the API key variable interpret.api_key_env."
                    ) from exc
                raise self._gave_up(f"HTTP {exc.status_code}: {exc.response.text[:300]}") from exc
            except openai.APIConnectionError as exc:  # timeouts included
                raise self._gave_up(f"connection error: {exc}") from exc
            attempts += raw.retries_taken + 1
            try:
                completion, text = _answer(raw)
            except ValueError as exc:
                last = str(exc)
                continue
            return self._result(completion, messages, text)
        raise self._gave_up(last)

    def _gave_up(self, last: str) -> LLMError:
        return LLMError(f"{self.base_url}: gave up after {self.max_retries + 1} attempts; last error: {last}")

    @staticmethod
    def _result(completion: Any, messages: Messages, text: str) -> ChatResult:
        usage = completion.usage
        prompt_text = "".join(m["content"] for m in messages)
        return ChatResult(
            text,
            int(getattr(usage, "prompt_tokens", 0) or _estimate_tokens(prompt_text)),
            int(getattr(usage, "completion_tokens", 0) or _estimate_tokens(text)),
        )


class TransformersChat:
    """A local instruct model run with transformers (greedy decoding, one call at a time)."""

    concurrency = 1

    def __init__(self, model: str, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        looks_like_a_path = model.startswith(("/", "./", "../", "~")) or "\\" in model
        if looks_like_a_path and not Path(model).expanduser().is_dir():
            raise ConfigError(f"interpret.model: no model folder at {model}")
        path = _resolve_model_path(model)
        self.name = f"transformers:{model}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"{model} has no chat template: give an instruct/chat model in interpret.model")
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        # The ignore: transformers wraps PreTrainedModel.to with functools.wraps, which mypy
        # does not bind as a method (it wants the model as the first argument).
        self.model = lm.to(device).eval()  # type: ignore[arg-type]
        self.device = device
        self._lock = threading.Lock()

    def chat(self, messages: Messages, max_tokens: int = 200) -> ChatResult:
        import torch

        # return_dict=True (and tokenize) gives a BatchEncoding of tensors; the stub's union
        # return type covers the other flag combinations.
        enc = cast(
            "Mapping[str, torch.Tensor]",
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ),
        )
        ids = enc["input_ids"].to(self.device)
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=enc["attention_mask"].to(self.device),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new = out[0, ids.shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        assert isinstance(text, str), "decode of one sequence (1-D ids) gives one string"
        return ChatResult(text, int(ids.shape[1]), int(new.numel()))


def _resolve_model_path(model: str) -> str:
    """A folder or hub id as given; a MNEME-known name (e.g. ``smollm2-135m-instruct``)
    resolved offline by ``mneme_core.collect.models``."""
    if not model:
        raise ValueError("interpret.model is empty: give an instruct model folder, hub id or known name")
    if os.path.exists(model) or "/" in model:
        return model
    from mneme_core.collect.models import resolve_named_model

    return str(resolve_named_model(model))


def make_backend(icfg) -> ChatBackend | None:
    """The chat backend the interpret config asks for; None for the offline explainer."""
    if icfg.explainer == "openai":
        return OpenAIChatClient.from_config(icfg)
    if icfg.explainer == "transformers":
        return TransformersChat(icfg.model, device=icfg.device)
    return None
