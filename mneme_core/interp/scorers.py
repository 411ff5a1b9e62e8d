"""Scorers: how well does a description predict where its latent fires?

- ``EmbeddingScorer`` (no LLM): embed the description and contexts where the latent fires
  and where it does not; AUROC of the description–context cosine similarity. 0.5 is
  chance, 1.0 means every activating context is closer to the description than every
  non-activating one. Texts shared between latents (the random pool) are embedded once.
- ``LLMJudgeScorer`` (Delphi's detection and fuzzing): an LLM judges, from the
  description alone, which excerpts activate (detection) or whether the marked tokens are
  the right ones (fuzzing); balanced accuracy against the truth, cached per latent.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from mneme_core.interp.cache import AnswerCache, prompt_hash
from mneme_core.interp.clients import ChatBackend, FatalLLMError
from mneme_core.interp.examples import Example, LatentRecord
from mneme_core.interp.prompts import (
    DETECT_SYSTEM,
    FUZZ_SYSTEM,
    judge_messages,
    mark,
    mark_positions,
    parse_binary_list,
)
from mneme_core.interp.runner import Meter, run_jobs


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability a random positive outscores a random negative (ties count half)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def balanced_accuracy(truth: Sequence[int], pred: Sequence[int]) -> float:
    t, p = np.asarray(truth), np.asarray(pred)
    rates = [float((p[t == c] == c).mean()) for c in (0, 1) if (t == c).any()]
    return float(np.mean(rates)) if rates else float("nan")


def scoring_examples(rec: LatentRecord, n: int) -> tuple[list[Example], list[Example]]:
    """Activating examples (quantile samples first: the explainer mostly saw the top ones)
    and non-activating ones, ``n`` of each at most."""
    return (rec.quantile + rec.top)[:n], rec.negatives[:n]


class EmbeddingScorer:
    name = "embedding"

    def __init__(self, embedder, n_examples: int = 10):
        self.embedder = embedder
        self.n_examples = n_examples

    def score(
        self, records: Sequence[LatentRecord], descriptions: dict[int, str], *, progress: bool = True
    ) -> dict[int, float]:
        index: dict[str, int] = {}
        plan = []
        for rec in records:
            if rec.latent not in descriptions:
                continue
            pos, neg = scoring_examples(rec, self.n_examples)
            ids = [index.setdefault(t, len(index)) for t in [descriptions[rec.latent]] + [e.text for e in pos + neg]]
            plan.append((rec.latent, ids[0], ids[1 : 1 + len(pos)], ids[1 + len(pos) :]))
        vecs = self.embedder.encode(list(index), progress=progress, desc="score (embedding)")
        out = {}
        for latent, d, pos_ids, neg_ids in plan:
            sims_pos = vecs[pos_ids] @ vecs[d]
            sims_neg = vecs[neg_ids] @ vecs[d]
            out[latent] = auroc(sims_pos, sims_neg)
        return out


class LLMJudgeScorer:
    """Detection (``kind='detection'``) or fuzzing (``kind='fuzzing'``) with a chat backend."""

    def __init__(
        self, kind: str, backend: ChatBackend, cache: AnswerCache, n_examples: int = 10, max_tokens: int = 120
    ):
        if kind not in ("detection", "fuzzing"):
            raise ValueError(f"unknown LLM scorer {kind!r}: use 'detection' or 'fuzzing'")
        self.name = kind
        self.backend = backend
        self.cache = cache
        self.n_examples = n_examples
        self.max_tokens = max_tokens
        self.meter = Meter()
        self.namespace = f"score-{kind}-{backend.name}"

    def _items(self, rec: LatentRecord) -> list[tuple[str, int]]:
        rng = random.Random(rec.latent)
        pos, neg = scoring_examples(rec, self.n_examples)
        if self.name == "detection":
            items = [(ex.text.replace("\n", " "), 1) for ex in pos] + [(ex.text.replace("\n", " "), 0) for ex in neg]
        else:
            half = max(1, len(pos) // 2)
            items = [(mark(ex), 1) for ex in pos[:half]]
            for ex in pos[half:] + neg[: max(0, half - len(pos[half:]))]:
                n_marked = max(1, sum(a > 0 for a in ex.acts))
                wrong = [i for i, a in enumerate(ex.acts) if a <= 0] or list(range(len(ex.tokens)))
                chosen = set(rng.sample(wrong, min(n_marked, len(wrong))))
                items.append((mark_positions(ex.tokens, [i in chosen for i in range(len(ex.tokens))]), 0))
        rng.shuffle(items)
        return items

    def _score_one(self, job: tuple[LatentRecord, str]) -> float:
        rec, description = job
        items = self._items(rec)
        if not items:
            return float("nan")
        system = DETECT_SYSTEM if self.name == "detection" else FUZZ_SYSTEM
        messages = judge_messages(system, description, [t for t, _ in items])
        key = prompt_hash([messages, self.max_tokens, self.backend.name])
        hit = self.cache.get(self.namespace, rec.latent, key)
        if hit is not None:
            self.meter.add(cached=1)
            return float(hit["score"])
        result = self.backend.chat(messages, max_tokens=self.max_tokens)
        self.meter.add(prompt=result.prompt_tokens, completion=result.completion_tokens, calls=1)
        pred = parse_binary_list(result.text, len(items))
        score = float("nan") if pred is None else balanced_accuracy([y for _, y in items], pred)
        self.cache.put(self.namespace, rec.latent, key, {"score": score, "raw": result.text})
        return score

    def score(
        self, records: Sequence[LatentRecord], descriptions: dict[int, str], *, progress: bool = True
    ) -> dict[int, float]:
        jobs = [(rec, descriptions[rec.latent]) for rec in records if rec.latent in descriptions]
        done, _ = run_jobs(
            jobs,
            self._score_one,
            concurrency=self.backend.concurrency,
            meter=self.meter,
            desc=f"score ({self.name})",
            progress=progress,
            abort_on=(FatalLLMError,),
        )
        # A latent whose judging failed after retries keeps no score (NaN), not a guess.
        return {rec.latent: score for (rec, _), score in done}
