"""A study whose benchmark moves both ways: some categories degrade, some improve.

Six benchmark categories, 1,000 questions each (poetry: 40). Measured truth, one-sided
z-test at 5% and a change threshold of 0.05:

- degraded T = {history} (0.60 -> 0.40);
- improved T = {chemistry, physics} (+0.20, +0.15); music improves by 0.03 only (under the
  threshold) and poetry by 0.08 on 40 questions (not significant).

Latents: 20 eligible per category (N = 120). Amplified: 7 chemistry, 7 music, 1 physics
(15); suppressed: 6 history, 1 law (7). With the default enrichment rule (−log10 p of the
hypergeometric tail >= −log10(0.05 / 6) = 2.08, at least 3 latents):

- suppressed -> P = {history}  (7 of 7 drawn: −log10 p = 4.18 for history);
- amplified  -> P = {chemistry, music}  (2.45 each; physics 0.02);
- both       -> P = {}  (22 drawn: chemistry and music 1.38, history 0.90).

So the improved direction (amplified) scores TP 1 (chemistry), FP 1 (music), FN 1
(physics), TN 3. Benchmark and taxonomy names are the same words, so the mapping is the
identity whether it is given or embedded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mneme_core.common.atomic import write_parquet
from mneme_core.common.config import load_config
from mneme_core.run.store import init_run, set_stage

CATEGORIES = ["chemistry", "history", "law", "music", "physics", "poetry"]
T_DEGRADED, T_IMPROVED = ["history"], ["chemistry", "physics"]
P_SUPPRESSED, P_AMPLIFIED = ["history"], ["chemistry", "music"]
# the dictionary-free baseline: chemistry's contexts changed most, so it predicts {chemistry}
P_ACTIVATION_DIFF = ["chemistry"]

BENCHMARK = pd.DataFrame(
    {
        "category": CATEGORIES,
        "score_before": [0.50, 0.60, 0.55, 0.40, 0.45, 0.50],
        "score_after": [0.70, 0.40, 0.56, 0.43, 0.60, 0.58],
        "n_questions": [1000, 1000, 1000, 1000, 1000, 40],
    }
)

_ATTRIBUTED = {"amplified": {"chemistry": 7, "music": 7, "physics": 1}, "suppressed": {"history": 6, "law": 1}}


def latents() -> pd.DataFrame:
    rows = []
    for cat in CATEGORIES:
        kinds = [k for k, per in _ATTRIBUTED.items() for _ in range(per.get(cat, 0))]
        kinds += ["unchanged"] * (20 - len(kinds))
        for kind in kinds:
            shift = {"amplified": 1.5, "suppressed": -1.5, "unchanged": 0.0}[kind]
            rows.append(
                {
                    "latent": len(rows),
                    "attribution": kind,
                    "shift": shift + 0.01 * len(rows),
                    "category": cat,
                    "beta_state": "present",
                    "description": f"{cat} words",
                }
            )
    return pd.DataFrame(rows)


def context_diffs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cats = np.repeat(CATEGORIES, 12)
    rel = np.where(cats == "chemistry", 0.9, 0.1) + rng.uniform(0, 0.05, len(cats))
    return pd.DataFrame({"category": cats, "rel_diff": rel})


def study_config(run_dir: Path, benchmark: Path | str = "", **evaluation):
    return load_config(
        {
            "name": "twodir",
            "run_dir": str(run_dir),
            "models": {"base": {"path": "a"}, "ft": {"path": "b"}},
            "corpus": {"files": ["x.txt"]},
            "evaluation": {"benchmark": str(benchmark), "random_draws": 200, **evaluation},
        }
    )


def build_run(run_dir: Path, **evaluation) -> Path:
    """The study as a run folder through the real evaluate stage (marked complete)."""
    from mneme_core.analysis.actdiff import CONTEXT_DIFFS_FILE
    from mneme_core.evaluation.evaluate import run_stage

    run_dir.mkdir(parents=True, exist_ok=True)
    bench = run_dir.parent / f"{run_dir.name}-benchmark.csv"
    BENCHMARK.to_csv(bench, index=False)
    cfg = study_config(run_dir, bench, **evaluation)
    init_run(run_dir, cfg.to_dict())
    write_parquet(run_dir / "latents.parquet", latents())
    write_parquet(run_dir / CONTEXT_DIFFS_FILE, context_diffs())
    run_stage(cfg, run_dir, progress=False)
    set_stage(run_dir, "evaluate", "complete")
    return run_dir
