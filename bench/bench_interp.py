"""Throughput of the offline explainer + embedding scorer (no LLM) on 10k latents.

Synthetic latents: each fires on three words of its own in random 16-token windows of
filler text; negatives come from a shared pool, as in a real run. Prints latents/second
for the explainer, the scorer (dominated by sentence embeddings on CPU) and both.

    python bench/bench_interp.py [--latents 10000] [--examples 10]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from mneme_core.common.embeddings import get_embedder
from mneme_core.interp.examples import Example, LatentRecord
from mneme_core.interp.explainers import OfflineExplainer
from mneme_core.interp.scorers import EmbeddingScorer


def synthetic_records(n_latents: int, n_examples: int, seed: int = 0) -> tuple[list[LatentRecord], dict[str, int]]:
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ren", "to", "vu", "sa", "ne", "ri", "po", "da", "fe"]
    vocab = sorted({"".join(rng.choice(syll) for _ in range(3)) for _ in range(20000)})
    filler = "the a of and to in is was it that with for on as by this they we he she".split()
    pool = [Example(tuple(" " + rng.choice(filler) for _ in range(16)), (0.0,) * 16) for _ in range(256)]
    counts = {w: 50 for w in filler}
    records = []
    for j in range(n_latents):
        words = rng.sample(vocab, 3)
        examples = []
        for _ in range(n_examples + 6):
            toks = [" " + rng.choice(filler) for _ in range(16)]
            acts = [0.0] * 16
            for _ in range(2):
                i = rng.randrange(16)
                toks[i], acts[i] = " " + rng.choice(words), rng.uniform(0.5, 3.0)
            examples.append(Example(tuple(toks), tuple(acts)))
        for w in words:
            counts[w] = counts.get(w, 0) + 3
        records.append(
            LatentRecord(
                j, top=examples[:n_examples], quantile=examples[n_examples:], negatives=rng.sample(pool, n_examples)
            )
        )
    return records, counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latents", type=int, default=10_000)
    p.add_argument("--examples", type=int, default=10)
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    records, counts = synthetic_records(args.latents, args.examples)
    embedder = get_embedder()
    embedder.encode(["warm up"])

    t0 = time.perf_counter()
    descriptions = OfflineExplainer(counts, n_examples=args.examples).explain(records, progress=False)
    t_explain = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = EmbeddingScorer(embedder, n_examples=args.examples).score(records, descriptions, progress=True)
    t_score = time.perf_counter() - t0
    n = len(records)
    mean = sum(scores.values()) / len(scores)
    print(f"latents: {n}, examples per latent: {args.examples} activating + {args.examples} non-activating")
    print(f"offline explainer: {n / t_explain:,.0f} latents/s ({t_explain:.1f} s)")
    print(f"embedding scorer:  {n / t_score:,.1f} latents/s ({t_score:.1f} s)")
    print(f"explain + score:   {n / (t_explain + t_score):,.1f} latents/s; mean AUROC {mean:.3f}")
    print(f"example: latent 0 -> {descriptions[0]!r} (AUROC {scores[0]:.2f})")


if __name__ == "__main__":
    main()
