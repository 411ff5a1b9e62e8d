"""Development scenario 15: the strong RMU on the physical sciences, a pair that can tell
readings apart.

Scenarios 5a, 6 and 11 compared ways of turning the dictionary into a prediction on the
weak development pair (``bench/dev_rmu.py``: RMU on chemistry, physics, materials and
weather), where the change resolves into 0-3 attributed latents and the training seed
alone decides the answer (scenario 14). No reading can be told from another there. The
demo's stronger unlearning attributes three to four times the latents of its weaker one,
so this scenario builds the *strong* RMU (``rmu-strong``: c = 8 x median, lr 2e-3) on the
same development forget set, scores it on its own benchmark (the same 25 WordNet
subjects; the demo's benchmark is never read here) and asks the question again with more
latents to read. Readings, each from the same trained run:

- **V0**, the default: each latent's category from the embedded text of its top 5 windows,
  the hypergeometric enrichment of attributed latents per category.
- **V1**, scenario 5a's window profile: every window the contexts stage kept (top 10 and
  8 quantile samples) takes its packed context's category, so a latent has a share per
  benchmark category; a category's mass is the attributed latents' summed shares, tested
  against 20,000 draws of as many latents from the eligible pool (p < 0.05 / K, mass >= 2).
- **V4**, the firing profile (new here): as V1, but a latent's share per category is its
  activation mass on *every* analysis token whose packed context maps to that category,
  over its whole activation mass (so text outside the benchmark's categories counts as
  none, and each latent still adds at most 1). RMU adds a steering direction wherever the
  text looks like the forget domain; a latent that carries it fires across the forget
  domain, and its top 5 windows name only the most typical part of it.
- **rank**, scenario 6's Mann-Whitney test of shifts per category (``predict_score: rank``).
- **context-moved**, scenario 11's latents whose firing tokens moved more than the rest.

Runs: the weak pair (seed 0), the strong pair at training seeds 0 and 1 (the second a
copy of the first, retrained from its activation store; ``mneme_core.run.replica``).

The rule, written into this script before its first result: a reading replaces V0 only if
on **both** strong-pair seeds its MNEME F1 is higher than V0's with precision >= 0.5, and
on the weak pair its F1 is not lower than V0's. If several do, the one with the highest
mean F1 over the three runs, then the higher mean precision, then the order above. If one
wins, it goes into the engine as an evaluation option, becomes the default for unlearning
studies, and the demo's committed runs are re-read with it once (``mneme demo
--refresh``), whatever that gives; otherwise V0 stays and nothing in the engine changes.

    python bench/dev_strong.py [--work ~/.cache/mneme/dev-strong]

Builds both pairs first if they are not there (36 minutes on 2 cores, resumable); the seed
copy takes about 10 minutes and the readings a few minutes a run.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from dev_contexts import context_change, context_moved
from dev_profile import context_benchmark, labelled_windows, predict_by_mass, window_profiles
from dev_seeds import replicate

from mneme_core.analysis.actdiff import CONTEXT_DIFFS_FILE
from mneme_core.benchmarks.loaders import load_benchmark
from mneme_core.collect.activations import ActivationStore
from mneme_core.collect.models import cache_root
from mneme_core.common.embeddings import get_embedder
from mneme_core.demo.build import rebuild
from mneme_core.demo.study import DEV, FULL
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
from mneme_core.evaluation.evaluate import evaluate, metrics
from mneme_core.run.pipeline import run_config

READINGS = ("V0 default", "V1 window profile", "V4 firing profile", "rank", "context-moved")


def build(work: Path) -> dict[str, Path]:
    """Both development pairs (float32, as every development scenario measured them) and the
    strong pair's seed-1 copy: name -> run folder."""
    rebuild(
        sizes=replace(FULL, precision="float32"),
        work=work,
        out=work / "published",
        names=["rmu", "rmu-strong"],
        null_control=False,
        confirm=False,
        scenario=DEV,
    )
    strong = work / "runs" / "rmu-strong"
    return {
        "weak, seed 0": work / "runs" / "rmu",
        "strong, seed 0": strong,
        "strong, seed 1": replicate(strong, 1, work / "seeds-strong"),
    }


@torch.no_grad()
def firing_profiles(
    model: BatchTopKCrossCoder, store: ActivationStore, bench_of_context: pd.Series, universe: list[str]
) -> pd.DataFrame:
    """Latents x benchmark categories: each latent's activation mass on tokens whose packed
    context maps to the category, over its whole activation mass (V4). A latent that never
    fires has a row of zeros."""
    n_lat = model.W_dec.shape[1]
    col = {c: i for i, c in enumerate(universe)}
    ctx_ids = np.asarray(store.context_ids)
    token_col = pd.Series(ctx_ids).map(bench_of_context).map(col).to_numpy(dtype=float)  # NaN: unmapped
    mass_FC = np.zeros((n_lat, len(universe) + 1))  # the last column: text outside the categories
    start = 0
    for x in store.iter_batches(4096, shuffle=False):
        f = model.encode(x.float(), use_threshold=True)
        tok, lat = (t.numpy() for t in f.nonzero(as_tuple=True))
        c = token_col[start + tok]
        c = np.where(np.isnan(c), len(universe), c).astype(np.int64)
        np.add.at(mass_FC, (lat, c), f[tok, lat].double().numpy())
        start += len(x)
    assert start == len(ctx_ids), "the pass must see every stored token once"
    total = mass_FC.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, mass_FC / total, 0.0)
    return pd.DataFrame(share[:, :-1], columns=universe)


def readings(run: Path) -> dict[str, Any]:
    """Every reading's prediction and metrics on one trained run."""
    cfg = run_config(run)
    latents = pd.read_parquet(run / "latents.parquet").sort_values("latent").reset_index(drop=True)
    bench, _ = load_benchmark(cfg.evaluation.benchmark, run)
    diffs = pd.read_parquet(run / CONTEXT_DIFFS_FILE)
    embedder = get_embedder(cfg.interpret.embedding_model, dtype=cfg.interpret.embedding_dtype)
    record = evaluate(bench, latents, cfg.evaluation, embedder=embedder, context_diffs=diffs)[1]
    recorded = json.loads((run / "evaluation.json").read_text())
    assert record["P"] == recorded["P"], "the in-memory evaluation must reproduce the run's own"
    T, universe = set(record["T"]), list(record["universe"])
    store = ActivationStore(run / "activations")
    model = BatchTopKCrossCoder.from_pretrained(run / "crosscoder").eval()

    bench_of_context = context_benchmark(diffs, universe, embedder)
    eligible = set(latents.loc[latents["beta_state"] != "too_few_fires", "latent"].astype(int))
    attributed = set(latents.loc[latents["attribution"].isin(["amplified", "suppressed"]), "latent"].astype(int))

    windows = labelled_windows(run, store, bench_of_context)
    v1 = window_profiles(windows[(windows["kind"] == "quantile") | (windows["rank"] < 10)], eligible, universe)
    v4 = firing_profiles(model, store, bench_of_context, universe)
    v4 = v4[v4.index.isin(eligible)]

    ranked = evaluate(bench, latents, replace(cfg.evaluation, predict_score="rank"), embedder=embedder)[1]
    moved = context_moved(context_change(model, store), cfg.diffing)
    by_context = latents.assign(attribution=np.where(moved, "amplified", "unchanged"))
    ctx = evaluate(bench, by_context, replace(cfg.evaluation, latent_direction="amplified"), embedder=embedder)[1]

    sets = {
        "V0 default": set(record["P"]),
        "V1 window profile": predict_by_mass(v1, attributed),
        "V4 firing profile": predict_by_mass(v4, attributed),
        "rank": set(ranked["P"]),
        "context-moved": set(ctx["P"]),
    }
    att = latents[latents["latent"].isin(attributed)]
    return {
        "T": sorted(T),
        "n_attributed": len(attributed),
        "attributed_categories": att["category"].value_counts().to_dict(),
        "v4_mass": v4[v4.index.isin(attributed)].sum(axis=0).nlargest(5).round(2).to_dict(),
        "n_context_moved": int(moved.sum()),
        "baseline": {k: record["metrics"]["activation_diff"][k] for k in ("accuracy", "precision", "f1", "set")},
        "readings": {name: {**metrics(T, P, universe), "P": sorted(P)} for name, P in sets.items()},
    }


def choose(results: dict[str, dict]) -> str:
    """The rule of the module docstring."""
    runs = list(results)
    strong = [r for r in runs if r.startswith("strong")]
    weak = [r for r in runs if r.startswith("weak")]

    def f1(run: str, name: str) -> float:
        return results[run]["readings"][name]["f1"] or 0.0

    def prec(run: str, name: str) -> float:
        return results[run]["readings"][name]["precision"] or 0.0

    qualified = [
        name
        for name in READINGS[1:]
        if all(f1(r, name) > f1(r, READINGS[0]) and prec(r, name) >= 0.5 for r in strong)
        and all(f1(r, name) >= f1(r, READINGS[0]) for r in weak)
    ]
    if not qualified:
        return READINGS[0]
    return max(
        qualified,
        key=lambda n: (
            np.mean([f1(r, n) for r in runs]),
            np.mean([prec(r, n) for r in runs]),
            -READINGS.index(n),
        ),
    )


def _f(x: float | None) -> str:
    return "   —" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:4.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=cache_root() / "dev-strong")
    work = ap.parse_args().work.resolve()
    results: dict[str, dict[str, Any]] = {}
    for name, run in build(work).items():
        results[name] = r = readings(run)
        tr = json.loads((run / "run.json").read_text())["stages"]["train"]["metrics"]
        print(
            f"{name}: FVE {tr['fve_base']:.3f} / {tr['fve_ft']:.3f}, {r['n_attributed']} attributed "
            f"{r['attributed_categories']}; {r['n_context_moved']} context-moved; V4 mass {r['v4_mass']}"
        )
    print(f"T = {results['weak, seed 0']['T']} (weak); {results['strong, seed 0']['T']} (strong)")
    print(f"{'run':15s} {'reading':18s} | MNEME acc prec   F1 | P")
    for name, r in results.items():
        for reading, m in r["readings"].items():
            print(f"{name:15s} {reading:18s} |      {_f(m['accuracy'])} {_f(m['precision'])} {_f(m['f1'])} | {m['P']}")
        b = r["baseline"]
        print(
            f"{name:15s} {'act-diff baseline':18s} |      {_f(b['accuracy'])} {_f(b['precision'])} {_f(b['f1'])} | {b['set']}"
        )
    chosen = choose(results)
    print(f"chosen by the rule: {chosen}")
    (work / "strong_readings.json").write_text(json.dumps({"results": results, "chosen": chosen}, indent=1))


if __name__ == "__main__":
    main()
