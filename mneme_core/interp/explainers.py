"""Explainers: latent records in, one short description per latent out.

One interface (``Explainer.explain``), three backends:

- ``OfflineExplainer`` needs no LLM: it finds the tokens (and activating n-grams) that are
  over-represented where the latent fires, weighted by activation, against their corpus
  frequency, and phrases them as a description. Crude but honest, instant, and the
  default; its label says what it is so nobody mistakes it for an LLM's reading.
- ``LLMExplainer`` over any ``ChatBackend``: an OpenAI-compatible endpoint or a local
  transformers chat model. Delphi-style prompt, tolerant parser, every answer cached on
  disk the moment it arrives.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Protocol

from mneme_core.interp.cache import AnswerCache, prompt_hash
from mneme_core.interp.clients import ChatBackend, FatalLLMError, LLMError
from mneme_core.interp.examples import Example, LatentRecord
from mneme_core.interp.prompts import explain_messages, parse_description
from mneme_core.interp.runner import Meter, run_jobs

OFFLINE_LABEL = "offline (token statistics, no LLM)"


class Explainer(Protocol):
    label: str
    meter: Meter

    def explain(self, records: Sequence[LatentRecord], *, progress: bool = True) -> dict[int, str]: ...


def norm_token(tok: str) -> str:
    """Tokens compared across contexts and the corpus: case- and space-insensitive."""
    return tok.strip().lower()


def _show(tok: str) -> str:
    shown = tok.strip()
    if not shown:
        return {"\n": "newline", "\t": "tab"}.get(tok[:1], "whitespace")
    return f'"{shown}"'


class OfflineExplainer:
    """Activation-weighted token and n-gram statistics, phrased as a description.

    ``corpus_counts`` maps normalised tokens to their count in the corpus (the contexts
    stage writes them); a token scores ``f · log(f / p)`` where ``f`` is its share of the
    latent's activation mass and ``p`` its corpus frequency — frequent function words
    that fire everywhere lose to the rare words a latent is actually about.
    """

    label = OFFLINE_LABEL

    def __init__(self, corpus_counts: Mapping[str, int], n_examples: int = 10, max_terms: int = 3):
        self.counts = corpus_counts
        self.total = max(1, sum(corpus_counts.values()))
        self.vocab = max(1, len(corpus_counts))
        self.n_examples = n_examples
        self.max_terms = max_terms
        self.meter = Meter()

    def _p(self, tok: str) -> float:
        return (self.counts.get(tok, 0) + 1) / (self.total + self.vocab)

    def _over_represented(self, mass: Mapping[str, float]) -> list[tuple[str, float]]:
        total = sum(mass.values())
        if total <= 0:
            return []
        scored = []
        for tok, m in mass.items():
            f = m / total
            score = f * math.log(f / self._p(tok))
            if score > 0 and tok:
                scored.append((tok, score))
        return sorted(scored, key=lambda kv: -kv[1])

    def describe(self, rec: LatentRecord) -> str:
        examples = (rec.top + rec.quantile)[: self.n_examples] or rec.quantile
        peak = max((ex.max_act for ex in examples), default=0.0)
        if peak <= 0:
            return "no activation on the analysed tokens"
        # Activation mass is fractional: float sums (a Counter is typed for int counts).
        mass: defaultdict[str, float] = defaultdict(float)
        shown: dict[str, str] = {}
        runs: Counter[str] = Counter()
        before: defaultdict[str, float] = defaultdict(float)
        for ex in examples:
            run: list[str] = []
            for i, (tok, act) in enumerate(zip(ex.tokens, ex.acts)):
                if act > 0:
                    key = norm_token(tok)
                    mass[key] += act / peak
                    shown.setdefault(key, tok)
                    run.append(tok)
                    if i > 0 and ex.acts[i - 1] <= 0:
                        before[norm_token(ex.tokens[i - 1])] += act / peak
                elif run:
                    runs[_run_text(run)] += 1
                    run = []
            if run:
                runs[_run_text(run)] += 1
        terms = [shown[t] for t, _ in self._over_represented(mass)[: self.max_terms]]
        phrases = [r for r, n in runs.most_common(3) if n >= 2 and len(r.split()) > 1]
        if not terms:
            terms = [shown[t] for t, _ in sorted(mass.items(), key=lambda kv: -kv[1])[: self.max_terms]]
        text = "the words " + _join([_show(t) for t in terms])
        if phrases:
            text += f', as in "{phrases[0]}"'
        top_before = self._over_represented(before)
        if top_before and before[top_before[0][0]] >= 0.5 * sum(before.values()) and top_before[0][0]:
            text += f" (often after {_show(top_before[0][0])})"
        return text

    def explain(self, records: Sequence[LatentRecord], *, progress: bool = True) -> dict[int, str]:
        done, _ = run_jobs(
            records, self.describe, concurrency=1, meter=self.meter, desc="explain (offline)", progress=progress
        )
        return {rec.latent: text for rec, text in done}


def _run_text(run: Sequence[str]) -> str:
    return "".join(run).strip()


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


class LLMExplainer:
    """Delphi-style explanations from a chat backend, cached per latent on disk."""

    def __init__(self, backend: ChatBackend, cache: AnswerCache, n_examples: int = 10, max_tokens: int = 120):
        self.backend = backend
        self.cache = cache
        self.label = backend.name
        self.n_examples = n_examples
        self.max_tokens = max_tokens
        self.meter = Meter()
        self.namespace = f"explain-{backend.name}"

    def _examples(self, rec: LatentRecord) -> list[Example]:
        return (rec.top + rec.quantile)[: self.n_examples]

    def describe(self, rec: LatentRecord) -> str:
        messages = explain_messages(self._examples(rec))
        key = prompt_hash([messages, self.max_tokens, self.backend.name])
        hit = self.cache.get(self.namespace, rec.latent, key)
        if hit is not None:
            self.meter.add(cached=1)
            return hit["description"]
        result = self.backend.chat(messages, max_tokens=self.max_tokens)
        self.meter.add(prompt=result.prompt_tokens, completion=result.completion_tokens, calls=1)
        description = parse_description(result.text)
        if not description:
            raise LLMError(f"latent {rec.latent}: no description in the answer {result.text[:200]!r}")
        self.cache.put(self.namespace, rec.latent, key, {"description": description, "raw": result.text})
        return description

    def explain(self, records: Sequence[LatentRecord], *, progress: bool = True) -> dict[int, str]:
        done, failed = run_jobs(
            records,
            self.describe,
            concurrency=self.backend.concurrency,
            meter=self.meter,
            desc=f"explain ({self.label})",
            progress=progress,
            abort_on=(FatalLLMError,),
        )
        if failed:
            rec, exc = failed[0]
            raise LLMError(
                f"{len(failed)} of {len(records)} latents got no description (first: latent {rec.latent}: {exc}). "
                f"The {len(done)} finished answers are cached in {self.cache.root}; re-run the stage to ask "
                f"only for the missing ones."
            )
        return {rec.latent: text for rec, text in done}
