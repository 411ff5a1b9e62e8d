"""Development scenario 11: read the latents whose *contexts* moved, not only the latents
that moved themselves.

MNEME's misses are degraded categories that hold no attributed latent: the unlearning's
change did not become a latent of its own there, so latent scaling (a latent's β in each
model) has nothing to label. But the activations may still have moved on the text those
latents fire on. This reading asks that of every latent, with the dictionary as the
vocabulary of what the neutral text is about: over the analysis tokens, per latent j,

    m_j = Σ_i f_ij δ_i / Σ_i f_ij,      δ_i = ‖a_ft,i − a_base,i‖ / ‖a_base,i‖,

the activation-weighted mean relative change on the tokens j fires on (δ is the
dictionary-free baseline's per-token measure; that baseline groups it per packed context,
this per latent, at token level). Its token-clustered standard error comes from the same
pass (Σ f, Σ f δ, Σ f², Σ f² δ, Σ f² δ²). A latent is *context-moved* when m_j is at
least 2^τ times the mean δ of all analysis tokens, more than z standard errors above it,
and j fires on at least ``min_fires`` tokens: τ, z and min_fires are the diffing defaults
(the band and guards of β's labels), so the reading adds no setting of its own. The
context-moved latents then go through MNEME's prediction unchanged (the enrichment test
against the same eligible pool, the same level, correction and minimum count).
Identical models give δ = 0 everywhere, so nothing is context-moved.

The rule, written into this script before its first result on the development pair
(``bench/dev_rmu.py``'s RMU on the physical sciences; the demo's benchmark is never read
here): the context reading becomes the reading of unlearning studies if its MNEME F1 on
the pair is higher than the current reading's (latent scaling, both directions) with
precision >= 0.5; on a tie or less the current reading stays. Nothing else is varied.

    python bench/dev_contexts.py [--work ~/.cache/mneme/dev-rmu]

Builds the pair first if it is not there (about 25 minutes on 2 cores); the reading itself
is one encoding pass over the stored tokens (a minute).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from dev_rmu import pair_from_command_line

from mneme_core.analysis.actdiff import CONTEXT_DIFFS_FILE
from mneme_core.benchmarks.loaders import load_benchmark
from mneme_core.collect.activations import ActivationStore
from mneme_core.common.config import DiffingConfig
from mneme_core.common.embeddings import get_embedder
from mneme_core.demo.study import DEV
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
from mneme_core.evaluation.evaluate import evaluate
from mneme_core.run.pipeline import run_config


@torch.no_grad()
def context_change(model: BatchTopKCrossCoder, store: ActivationStore, batch: int = 4096) -> pd.DataFrame:
    """Per latent: ``n_fires, context_change (m_j), context_se`` and the all-token mean
    ``delta_mean`` (the same for every row)."""
    F_ = model.W_dec.shape[1]
    sums = {k: np.zeros(F_) for k in ("w", "wd", "w2", "w2d", "w2d2", "n")}
    total, n_tok = 0.0, 0
    for x in store.iter_batches(batch, shuffle=False):
        x64 = x.double()
        delta = ((x64[:, 1] - x64[:, 0]).norm(dim=-1) / x64[:, 0].norm(dim=-1).clamp_min(1e-12)).numpy()
        f = model.encode(x.float(), use_threshold=True)
        tok, lat = (t.numpy() for t in f.nonzero(as_tuple=True))
        w = f[tok, lat].double().numpy()
        d = delta[tok]
        for key, weights in (
            ("w", w),
            ("wd", w * d),
            ("w2", w * w),
            ("w2d", w * w * d),
            ("w2d2", (w * d) ** 2),
            ("n", np.ones_like(w)),
        ):
            sums[key] += np.bincount(lat, weights=weights, minlength=F_)
        total += float(delta.sum())
        n_tok += len(delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = sums["wd"] / sums["w"]
        var = (sums["w2d2"] - 2 * m * sums["w2d"] + m * m * sums["w2"]) / sums["w"] ** 2
    return pd.DataFrame(
        {
            "latent": np.arange(F_),
            "n_fires": sums["n"].astype(np.int64),
            "context_change": m,
            "context_se": np.sqrt(np.maximum(var, 0.0)),
            "delta_mean": total / max(n_tok, 1),
        }
    )


def context_moved(change: pd.DataFrame, cfg: DiffingConfig) -> np.ndarray:
    """The reading's label (module docstring): the band 2^τ over the all-token mean, z
    standard errors above it, at least ``min_fires`` tokens; nothing when δ is 0."""
    ref = change["delta_mean"].to_numpy()
    m, se = change["context_change"].to_numpy(), change["context_se"].to_numpy()
    with np.errstate(invalid="ignore"):
        return (
            (ref > 0)
            & (change["n_fires"].to_numpy() >= cfg.min_fires)
            & (m >= 2.0**cfg.tau * ref)
            & (m - ref > cfg.z * se)
        )


def main() -> None:
    work, run = pair_from_command_line(__doc__)
    cfg = run_config(run)
    model = BatchTopKCrossCoder.from_pretrained(run / "crosscoder").eval()
    change = context_change(model, ActivationStore(run / "activations"))
    latents = pd.read_parquet(run / "latents.parquet")
    assert (latents.sort_values("latent")["n_fires"].to_numpy() == change["n_fires"].to_numpy()).all()
    moved = context_moved(change, cfg.diffing)
    bench, _ = load_benchmark(cfg.evaluation.benchmark, run)
    diffs = pd.read_parquet(run / CONTEXT_DIFFS_FILE)
    embedder = get_embedder(cfg.interpret.embedding_model)
    current = evaluate(bench, latents, cfg.evaluation, embedder=embedder, context_diffs=diffs)[1]
    recorded = json.loads((run / "evaluation.json").read_text())
    assert current["P"] == recorded["P"], "the in-memory evaluation must reproduce the run's own"
    # the context reading through the unchanged prediction: its latents stand in for the
    # attributed ones of one direction
    by_context = latents.sort_values("latent").assign(attribution=np.where(moved, "amplified", "unchanged"))
    reading = evaluate(
        bench,
        by_context,
        replace(cfg.evaluation, latent_direction="amplified"),
        embedder=embedder,
        context_diffs=diffs,
    )[1]

    ref = float(change["delta_mean"].iloc[0])
    cats = latents.sort_values("latent")["category"].to_numpy()
    print(f"scenario {DEV.name}: {len(change)} latents, mean delta over analysis tokens {ref:.4f}")
    print(f"context-moved latents: {int(moved.sum())}; by category: {pd.Series(cats[moved]).value_counts().to_dict()}")
    print(f"T = {current['T']}")
    rows = []
    for name, rec in (("current: latent scaling, both", current), ("context-moved latents", reading)):
        m = rec["metrics"]["mneme"]
        rows.append({"reading": name, "P": rec["P"], **{k: m[k] for k in ("accuracy", "precision", "f1")}})
        print(f"{name:30s} | MNEME acc {_f(m['accuracy'])} prec {_f(m['precision'])} F1 {_f(m['f1'])} | P {rec['P']}")
    ad = current["metrics"]["activation_diff"]
    print(
        f"{'dictionary-free baseline':30s} |       acc {_f(ad['accuracy'])} prec {_f(ad['precision'])} F1 {_f(ad['f1'])} | P {ad['set']}"
    )
    new, old = rows[1], rows[0]
    wins = (new["f1"] or 0.0) > (old["f1"] or 0.0) and (new["precision"] or 0.0) >= 0.5
    print(f"chosen by the rule: {'context-moved latents' if wins else 'current reading'}")
    (work / "contexts_reading.json").write_text(
        json.dumps({"delta_mean": ref, "n_moved": int(moved.sum()), "rows": rows, "adopted": wins}, indent=2)
    )


def _f(x: float | None) -> str:
    return "   —" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:4.2f}"


if __name__ == "__main__":
    main()
