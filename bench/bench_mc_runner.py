"""Multiple-choice runner speed: packed options (prefix computed once, LM head on the last
positions only) vs plain rows (one ``prefix + option`` row per option).

SmolLM2-135M-Instruct (resolved offline), cloze style, questions shaped like the demo's
WordNet test: a one-sentence gloss as the question and four one-to-three-word options.
Both modes must give the same answers; the script checks that and prints questions/s.

    python bench/bench_mc_runner.py [--questions 64] [--batch 8] [--dtype float32]

Timings on a shared CPU are noisy: the script prints the median of a few repetitions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np

from mneme_core.benchmarks.mc_runner import MCItem, score_questions
from mneme_core.collect.models import load_model
from mneme_core.common.config import ModelSpec

GLOSSES = [
    "a domesticated carnivorous mammal that typically has a long snout and an acute sense of smell",
    "a large body of salt water that is partly enclosed by land",
    "the act of moving quickly on foot so that both feet leave the ground during each stride",
    "an instrument for measuring the temperature of a substance or of the air",
    "a building where people go to worship and pray together",
    "the science that studies living organisms and their vital processes",
    "a sweet edible fruit with red or green skin that grows on a tree",
    "a written account of events that happened in the past",
]
WORDS = [
    "dog",
    "sea",
    "running",
    "thermometer",
    "church",
    "biology",
    "apple",
    "history",
    "table",
    "river bank",
    "cold weather",
    "old musical instrument",
    "red car",
    "small town",
]


def make_items(n: int, seed: int = 0) -> list[MCItem]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        g = i % len(GLOSSES)
        distractors = rng.sample([w for j, w in enumerate(WORDS) if j != g], 3)
        choices = [WORDS[g], *distractors]
        rng.shuffle(choices)
        items.append(
            MCItem(f"Which word is defined as: {GLOSSES[g]}?", tuple(choices), choices.index(WORDS[g]), f"c{i % 4}")
        )
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model, tok = load_model(ModelSpec(source="named", path="smollm2-135m-instruct", dtype=args.dtype))
    items = make_items(args.questions)
    results = {}
    for packing in ("plain", "tree"):
        score_questions(
            model, tok, items[: args.batch], batch_size=args.batch, packing=packing, progress=False
        )  # warm-up
        times, out = [], None
        for _ in range(args.reps):
            t = time.perf_counter()
            out = score_questions(model, tok, items, batch_size=args.batch, packing=packing, progress=False)
            times.append(time.perf_counter() - t)
        results[packing] = (statistics.median(times), out)
        print(
            f"{packing:>5}: {args.questions / results[packing][0]:7.1f} questions/s "
            f"(median of {args.reps}, {args.dtype}, batch {args.batch})"
        )
    same = (results["plain"][1]["pred"].to_numpy() == results["tree"][1]["pred"].to_numpy()).mean()
    diff = max(
        np.max(np.abs(np.array(a) - np.array(b)))
        for a, b in zip(results["plain"][1]["logliks"], results["tree"][1]["logliks"])
    )
    print(
        f"speed-up packed / plain: {results['plain'][0] / results['tree'][0]:.2f}x; "
        f"same answers on {same:.0%} of questions; max |Δ loglik| {diff:.2e}"
    )
    print(f"accuracy (random words would give 25%): {results['tree'][1]['correct'].mean():.0%}")


if __name__ == "__main__":
    main()
