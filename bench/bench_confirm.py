"""Causal confirmation's edited scoring: every layer (the partner replayed to L, the hooked
model run in full) vs the replayed clean prefix (``latent_edit.PrefixCache``: only the layers
after L run once a batch has been seen).

Runs on the bundled demo's ``rmu`` run (SmolLM2-135M-Instruct and its RMU delta, the
published cross-coder, layer 15 of 30): one category's questions, ablating that category's
predicted latents in the base model, as ``mneme confirm`` does for each target and control
set. Prints questions/s for both ways, the cached way's first pass (which fills the cache)
and later passes, and checks that all of them give the same log-likelihoods.

    python bench/bench_confirm.py [--run data/demo/rmu] [--category animals] [--reps 3]

A confirmation scores each category's questions about a dozen times (target and controls,
ablation and restore), so the later-pass figure is what most of its scorings cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from mneme_core.analysis.latent_edit import PrefixCache, intervene
from mneme_core.benchmarks.mc_runner import score_questions
from mneme_core.evaluation.confirmation import ConfirmSettings, _edit, _load_lab, _read_inputs, category_latents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="data/demo/rmu")
    ap.add_argument("--questions", default="data/demo/benchmark/questions.parquet")
    ap.add_argument("--category", default="animals")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    inputs = _read_inputs(Path(args.run), ConfirmSettings(questions=args.questions))
    lab = _load_lab(inputs, None)
    latents = category_latents(inputs.record, ConfirmSettings().max_latents).get(args.category, ())
    if not latents:
        raise SystemExit(f"{args.category!r} has no attributed latents in {args.run}; pick another --category")
    items = inputs.items[args.category]
    edit, model, partner, _ = _edit(lab, "ablate", latents)
    batch = inputs.cfg.evaluation.runner_batch_size
    style = inputs.cfg.evaluation.runner_style

    def score(prefix: PrefixCache | None) -> tuple[float, list]:
        t = time.perf_counter()
        with intervene(model, lab.layer, edit, partner, prefix):
            out = score_questions(model, lab.tokenizer, items, batch_size=batch, style=style, progress=False)
        return time.perf_counter() - t, list(out["logliks"])

    score(None)  # warm-up
    full = [score(None) for _ in range(args.reps)]
    prefix = PrefixCache(lab.base, lab.ft, lab.layer)
    first = score(prefix)
    later = [score(prefix) for _ in range(args.reps)]
    n = len(items)
    t_full = statistics.median(t for t, _ in full)
    t_later = statistics.median(t for t, _ in later)
    print(f"{args.category}: {n} questions, {len(latents)} latents ablated at layer {lab.layer}, batch {batch}")
    print(f"every layer       : {n / t_full:6.1f} questions/s (median of {args.reps})")
    print(f"replayed, 1st pass: {n / first[0]:6.1f} questions/s (fills the cache)")
    print(f"replayed, later   : {n / t_later:6.1f} questions/s (median of {args.reps})")
    diff = max(
        float(np.max(np.abs(np.array(a) - np.array(b)))) for _, lls in [first, *later] for a, b in zip(full[0][1], lls)
    )
    print(f"speed-up later / every layer: {t_full / t_later:.2f}x; max |Δ loglik| {diff:.2e}")


if __name__ == "__main__":
    main()
