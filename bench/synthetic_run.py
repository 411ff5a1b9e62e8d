"""Build a synthetic MNEME run of any size, for dashboard benchmarks and UI work.

The paper's dictionary has 131,072 latents; the dashboard must stay usable at that size
(issue 3). Running the real pipeline at that scale takes hours, so this writes a run
with the same files and columns through the store functions, with values drawn to look
like a real diff (most latents shared, tails of base-only / ft-only, suppressed latents
clustered in a few categories). The contexts table is streamed row group by row group
(sorted by latent, ~8k rows per group, as the contexts stage writes it), so building
2.6M contexts needs little memory.

    python bench/synthetic_run.py runs/synthetic --latents 131072 --contexts 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mneme_core.common.atomic import atomic_path, atomic_write_json, write_parquet
from mneme_core.run.store import init_run, merge_latent_columns, set_stage

CATEGORIES = (
    "biology",
    "chemistry",
    "medicine",
    "virology",
    "physics",
    "law",
    "history",
    "mathematics",
    "computer science",
    "economics",
    "philosophy",
    "religion",
    "geography",
    "literature",
    "sports",
    "cooking",
    "harmful advice",
    "deception",
    "formatting",
    "syntax",
)
WORDS = (
    "the of and to in is was for on that with as by at from his her are be this which "
    "protein cell virus enzyme acid molecule reaction dose patient symptom genome "
    "court law treaty king war river city theorem proof integer function loop array "
    "market price tax god prayer psalm verse lord heaven recipe salt oven game ball "
    "<script>alert(1)</script> <img src=x onerror=alert(1)> & < > \" '"
).split()
ROW_GROUP = 8192


def latents_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per latent with every column the stages write (docs/ARCHITECTURE.md lists them)."""
    kind = rng.choice(4, size=n, p=[0.06, 0.04, 0.8, 0.1])  # base-only, ft-only, shared, other
    rel = np.where(
        kind == 0,
        rng.uniform(0.0, 0.1, n),
        np.where(
            kind == 1,
            rng.uniform(0.9, 1.0, n),
            np.where(kind == 2, np.clip(rng.normal(0.5, 0.04, n), 0.4, 0.6), rng.uniform(0.1, 0.9, n)),
        ),
    )
    total = rng.lognormal(0.0, 0.3, n)
    n_ft, n_b = rel * total, (1 - rel) * total
    cat_idx = rng.integers(0, len(CATEGORIES), n)
    beta_b = np.abs(rng.normal(1.0, 0.15, n)) * (n_b + 0.02)
    # suppression concentrated in a few categories, as an unlearning run would show
    damp = np.where(np.isin(cat_idx, [0, 2, 3]) & (rng.random(n) < 0.3), rng.uniform(0.05, 0.4, n), 1.0)
    beta_f = np.abs(rng.normal(1.0, 0.15, n)) * (n_ft + 0.02) * damp
    shift = np.log2(np.maximum(beta_f, 1e-8) / np.maximum(beta_b, 1e-8))
    tau = 1.0
    attribution = np.where(shift > tau, "amplified", np.where(shift < -tau, "suppressed", "unchanged"))
    label = np.where(
        rel < 0.1, "base_only", np.where(rel > 0.9, "ft_only", np.where((rel >= 0.4) & (rel <= 0.6), "shared", "other"))
    )
    words = np.array(WORDS[:-5])
    w = rng.integers(0, len(words), (n, 3))
    description = np.char.add(
        np.char.add(np.char.add("mentions of ", words[w[:, 0]]), np.char.add(" and ", words[w[:, 1]])),
        np.char.add(" near ", words[w[:, 2]]),
    )
    centres = rng.normal(0, 6, (len(CATEGORIES), 2))
    umap = centres[cat_idx] + rng.normal(0, 1.0, (n, 2))
    return pd.DataFrame(
        {
            "latent": np.arange(n, dtype=np.int64),
            "dec_norm_base": n_b,
            "dec_norm_ft": n_ft,
            "rel_norm": rel,
            "dec_cos": np.clip(rng.normal(0.9, 0.1, n), -1, 1),
            "label_by_norm": label,
            "beta_err_base": beta_b,
            "beta_err_ft": beta_f,
            "beta_recon_base": beta_b * rng.uniform(0.9, 1.1, n),
            "beta_recon_ft": beta_f * rng.uniform(0.9, 1.1, n),
            "beta_err_own_base": beta_b * rng.uniform(0.95, 1.05, n),
            "beta_err_own_ft": beta_f * rng.uniform(0.95, 1.05, n),
            "beta_recon_own_base": beta_b,
            "beta_recon_own_ft": beta_f,
            "nu_err": beta_b / np.maximum(beta_f, 1e-8),
            "nu_recon": beta_b / np.maximum(beta_f, 1e-8),
            "shift": shift,
            "attribution": attribution,
            "freq": 10 ** rng.uniform(-5, -1, n),
            "max_act": rng.gamma(2.0, 2.0, n),
            "description": description.astype(object),
            "explainer": "offline",
            "explanation_score": rng.uniform(0.4, 1.0, n),
            "category": np.array(CATEGORIES, dtype=object)[cat_idx],
            "umap_x": umap[:, 0].astype(np.float32),
            "umap_y": umap[:, 1].astype(np.float32),
        }
    )


def write_contexts(
    path: Path, n_latents: int, per_latent: int, window: int, rng: np.random.Generator, progress: bool = True
) -> None:
    """Stream contexts.parquet: sorted by latent, top ranks then quantile samples."""
    n_top = max(1, per_latent * 3 // 4)
    vocab = pa.array(["Ġ" + w if i % 3 else w for i, w in enumerate(WORDS)] + ["Ċ", "ĠĠ", "â\u0122\u013b"])
    latents_per_group = max(1, ROW_GROUP // per_latent)
    schema = pa.schema(
        [
            ("latent", pa.int64()),
            ("kind", pa.string()),
            ("rank", pa.int32()),
            ("tokens", pa.list_(pa.string())),
            ("token_ids", pa.list_(pa.int32())),
            ("acts", pa.list_(pa.float32())),
            ("max_act", pa.float32()),
            ("source", pa.string()),
        ]
    )
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for start in tqdm(range(0, n_latents, latents_per_group), desc="contexts", unit="group", disable=not progress):
            lat = np.arange(start, min(n_latents, start + latents_per_group))
            rows = len(lat) * per_latent
            rank = np.tile(np.concatenate([np.arange(n_top), np.arange(per_latent - n_top)]), len(lat))
            kind = np.tile(np.array(["top"] * n_top + ["quantile"] * (per_latent - n_top)), len(lat))
            ids = rng.integers(0, len(vocab), rows * window).astype(np.int32)
            acts = np.maximum(rng.normal(0, 1, rows * window), 0).astype(np.float32)
            peak = rng.integers(0, window, rows)
            scale = np.where(kind == "top", 8.0 - 0.2 * rank, 2.0).astype(np.float32)
            acts[np.arange(rows) * window + peak] = scale
            offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * window)
            table = pa.table(
                {
                    "latent": np.repeat(lat, per_latent),
                    "kind": kind,
                    "rank": rank.astype(np.int32),
                    "tokens": pa.ListArray.from_arrays(offsets, vocab.take(pa.array(ids))),
                    "token_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
                    "acts": pa.ListArray.from_arrays(offsets, pa.array(acts)),
                    "max_act": acts.reshape(rows, window).max(axis=1),
                    "source": np.full(rows, "synthetic"),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=ROW_GROUP)


def histograms_table(n: int, bins: int, rng: np.random.Generator) -> pd.DataFrame:
    edges = np.linspace(0, 10, bins + 1)
    counts = rng.poisson(np.exp(-np.linspace(0, 4, bins)) * 200, (n, bins))
    return pd.DataFrame({"latent": np.arange(n, dtype=np.int64), "edges": [edges] * n, "counts": list(counts)})


def benchmark_and_evaluation(lat: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, dict]:
    """A benchmark where the suppressed categories really dropped, scored by the real
    evaluation code (categories map to themselves, so no embedder is needed)."""
    from mneme_core.common.config import EvaluationConfig
    from mneme_core.evaluation.evaluate import evaluate

    before = rng.uniform(0.5, 0.9, len(CATEGORIES))
    hit = np.isin(np.arange(len(CATEGORIES)), [0, 1, 2, 3])
    drop = np.where(hit, rng.uniform(0.08, 0.3, len(CATEGORIES)), rng.uniform(-0.02, 0.03, len(CATEGORIES)))
    bench = pd.DataFrame(
        {
            "category": CATEGORIES,
            "score_before": before,
            "score_after": before - drop,
            "n_questions": rng.integers(150, 300, len(CATEGORIES)),
        }
    )
    mapping = {c: c for c in CATEGORIES}
    return evaluate(bench, lat, EvaluationConfig(random_draws=200), mapping=mapping)


def build(
    run_path: str | Path,
    n_latents: int = 131_072,
    per_latent: int = 20,
    window: int = 24,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a complete synthetic run at ``run_path`` and return it."""
    run_path = Path(run_path)
    rng = np.random.default_rng(seed)
    d_model = 64
    config = {
        "name": run_path.name,
        "models": {
            "base": {"source": "hf", "path": "synthetic/base"},
            "ft": {"source": "hf", "path": "synthetic/ft"},
            "layer": 8,
        },
        "corpus": {"files": ["synthetic.txt"], "n_tokens": 1_000_000},
        "crosscoder": {"n_latents": n_latents, "k": 100},
    }
    init_run(run_path, config, provenance=[{"name": "synthetic", "licence": "generated"}])
    set_stage(run_path, "collect", "complete", metrics={"n_tokens": 1_000_000, "d_model": d_model})
    set_stage(
        run_path,
        "train",
        "complete",
        metrics={"fve_base": 0.91, "fve_ft": 0.9, "dead_fraction": 0.07, "l0": 98.5, "n_latents": n_latents, "k": 100},
    )
    lat = latents_table(n_latents, rng)
    merge_latent_columns(run_path, lat)
    set_stage(run_path, "diff", "complete", metrics={"n_latents": n_latents})
    write_contexts(run_path / "contexts.parquet", n_latents, per_latent, window, rng, progress)
    write_parquet(run_path / "histograms.parquet", histograms_table(n_latents, 30, rng))
    set_stage(run_path, "contexts", "complete", metrics={"n_contexts": n_latents * per_latent})
    set_stage(run_path, "interpret", "complete", metrics={"n_described": n_latents})
    set_stage(run_path, "categories", "complete", metrics={"n_categories": len(CATEGORIES)})
    bench, evaluation = benchmark_and_evaluation(lat, rng)
    m = evaluation["metrics"]["mneme"]
    write_parquet(run_path / "benchmark.parquet", bench)
    atomic_write_json(run_path / "evaluation.json", evaluation)
    set_stage(run_path, "evaluate", "complete", metrics={k: m[k] for k in ("accuracy", "precision", "f1")})
    return run_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_path")
    ap.add_argument("--latents", type=int, default=131_072)
    ap.add_argument("--contexts", type=int, default=20, help="contexts per latent")
    ap.add_argument("--window", type=int, default=24, help="tokens per context")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    path = build(args.run_path, args.latents, args.contexts, args.window, args.seed)
    print(json.dumps({"run": str(path), "latents": args.latents, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
