"""Run one job per latent, concurrently where the backend allows, with a progress bar
that shows rate, ETA and what has been spent so far (tokens sent to the LLM)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Meter:
    """Cost so far: tokens sent and received, calls made, answers served from cache."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, prompt: int = 0, completion: int = 0, calls: int = 0, cached: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.calls += calls
            self.cached += cached
            self.failed += failed

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "llm_calls": self.calls,
            "cache_hits": self.cached,
            "failed": self.failed,
        }


def run_jobs(
    items: Sequence[T],
    fn: Callable[[T], R],
    *,
    concurrency: int,
    meter: Meter,
    desc: str,
    progress: bool = True,
    abort_on: tuple[type[BaseException], ...] = (),
) -> tuple[list[tuple[T, R]], list[tuple[T, BaseException]]]:
    """Apply ``fn`` to every item; returns (successes, failures) and never loses a success
    because another item failed. ``fn`` is expected to persist its own result (cache).
    An exception of a type in ``abort_on`` (one no other item would escape either, such as
    a rejected API key) cancels what is left and propagates."""
    done: list[tuple[T, R]] = []
    failed: list[tuple[T, BaseException]] = []
    bar = tqdm(total=len(items), desc=desc, unit="latent", disable=not progress, dynamic_ncols=True)

    def tick() -> None:
        bar.set_postfix(tokens_sent=meter.prompt_tokens, cached=meter.cached, failed=meter.failed, refresh=False)
        bar.update(1)

    try:
        if concurrency <= 1:
            for item in items:
                try:
                    done.append((item, fn(item)))
                except abort_on:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported to the caller with the item
                    failed.append((item, exc))
                    meter.add(failed=1)
                tick()
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                futures = {pool.submit(fn, item): item for item in items}
                for fut in as_completed(futures):
                    item = futures[fut]
                    error = fut.exception()
                    if isinstance(error, abort_on):
                        for other in futures:
                            other.cancel()
                        raise error
                    if error is None:
                        done.append((item, fut.result()))
                    else:
                        failed.append((item, error))
                        meter.add(failed=1)
                    tick()
    finally:
        bar.close()
    return done, failed
