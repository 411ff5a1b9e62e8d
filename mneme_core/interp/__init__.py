"""The interpret stage: descriptions for latents, each with a score.

Reads the contexts stage's output, picks latents by priority (``selection``), asks the
configured explainer (offline statistics, an OpenAI-compatible endpoint, or a local
transformers model) and scores each description. Writes:

- ``explanations.parquet``: latent, explainer, description, scorer, score — one row per
  latent × explainer × scorer, kept across runs so explainers can be compared on the
  same latents (a rerun replaces only its own rows) for as long as the dictionary is the
  same (the contexts stage drops them when it reads another one);
- latents columns ``description, explainer, explanation_score`` (this run's explainer
  where it answered, otherwise the best-scored earlier one).

LLM answers are cached per latent under ``interp_cache/``: a rerun or a crash never pays
twice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from mneme_core.common.atomic import write_parquet
from mneme_core.common.config import ConfigError, StudyConfig
from mneme_core.common.embeddings import get_embedder
from mneme_core.interp.cache import AnswerCache
from mneme_core.interp.clients import make_backend
from mneme_core.interp.examples import load_records
from mneme_core.interp.explainers import (
    OFFLINE_LABEL,
    Explainer,
    LLMExplainer,
    OfflineExplainer,
    norm_token,
)
from mneme_core.interp.scorers import EmbeddingScorer, LLMJudgeScorer
from mneme_core.interp.selection import select_latents
from mneme_core.run.reader import open_run
from mneme_core.run.store import merge_latent_columns

__all__ = ["run_stage", "select_latents", "OFFLINE_LABEL", "load_corpus_counts", "make_explainer"]

EXPLANATIONS = "explanations.parquet"


def load_corpus_counts(run_path: str | Path) -> dict[str, int]:
    """Corpus token counts keyed by normalised token (``token_counts.parquet``, contexts stage)."""
    path = Path(run_path) / "token_counts.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the contexts stage first")
    df = pd.read_parquet(path)
    counts: dict[str, int] = {}
    for tok, n in zip(df["token"], df["count"]):
        key = norm_token(tok)
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def make_explainer(cfg: StudyConfig, run_path: Path, backend=None) -> Explainer:
    icfg = cfg.interpret
    if icfg.explainer == "offline":
        return OfflineExplainer(load_corpus_counts(run_path), n_examples=icfg.n_examples)
    return LLMExplainer(
        backend, AnswerCache(run_path / "interp_cache"), n_examples=icfg.n_examples, max_tokens=icfg.max_new_tokens
    )


def _merge_explanations(run_path: Path, new: pd.DataFrame) -> pd.DataFrame:
    path = run_path / EXPLANATIONS
    if path.is_file():
        old = pd.read_parquet(path)
        keys = set(zip(new["latent"], new["explainer"], new["scorer"]))
        keep = [k not in keys for k in zip(old["latent"], old["explainer"], old["scorer"])]
        new = pd.concat([old[keep], new], ignore_index=True)
    new = new.sort_values(["latent", "explainer", "scorer"]).reset_index(drop=True)
    write_parquet(path, new)
    return new


def _latent_columns(table: pd.DataFrame, current: str) -> pd.DataFrame:
    """One description per latent: the current explainer's, else the best-scored other."""
    t = table.assign(_cur=(table["explainer"] != current).astype(int), _s=-table["score"].fillna(-1.0))
    t = t.sort_values(["latent", "_cur", "_s"]).drop_duplicates("latent")
    return t[["latent", "description", "explainer", "score"]].rename(columns={"score": "explanation_score"})


def run_stage(cfg: StudyConfig, run_path: Path, *, progress: bool = True) -> dict[str, Any]:
    run_path = Path(run_path)
    icfg = cfg.interpret
    t0 = time.perf_counter()
    latents = open_run(run_path).latents
    if not len(latents):
        raise FileNotFoundError(f"{run_path}/latents.parquet is empty or missing: run the diff stage first")
    ids = select_latents(latents, icfg.latents, icfg.max_latents)
    records = load_records(run_path, ids, n_negatives=icfg.n_score_examples, seed=cfg.seed, progress=progress)
    recs = list(records.values())
    backend = make_backend(icfg)
    explainer = make_explainer(cfg, run_path, backend)
    descriptions = explainer.explain(recs, progress=progress)
    t_explain = time.perf_counter() - t0

    scorer: EmbeddingScorer | LLMJudgeScorer | None
    if icfg.scorer == "embedding":
        scorer = EmbeddingScorer(
            get_embedder(icfg.embedding_model, icfg.embedding_dtype), n_examples=icfg.n_score_examples
        )
    elif icfg.scorer in ("detection", "fuzzing"):
        if backend is None:  # the offline explainer: validate() rejects this, a config built in code may not
            raise ConfigError(
                f"interpret.scorer {icfg.scorer!r} needs an LLM: set interpret.explainer to openai or transformers, "
                "or use scorer 'embedding'"
            )
        scorer = LLMJudgeScorer(
            icfg.scorer,
            backend,
            AnswerCache(run_path / "interp_cache"),
            n_examples=icfg.n_score_examples,
            max_tokens=icfg.max_new_tokens,
        )
    else:
        scorer = None
    scores = scorer.score(recs, descriptions, progress=progress) if scorer else {}
    scorer_name = scorer.name if scorer else "none"

    new = pd.DataFrame(
        {
            "latent": pd.Series(list(descriptions), dtype="int64"),
            "explainer": explainer.label,
            "description": pd.Series(list(descriptions.values()), dtype="string"),
            "scorer": scorer_name,
            "score": pd.Series([scores.get(lat, float("nan")) for lat in descriptions], dtype="float64"),
        }
    )
    table = _merge_explanations(run_path, new)
    if len(table):
        merge_latent_columns(run_path, _latent_columns(table, explainer.label))
    elapsed = time.perf_counter() - t0
    metrics: dict[str, Any] = {
        "explainer": explainer.label,
        "scorer": scorer_name,
        "n_selected": len(ids),
        "n_without_contexts": len(ids) - len(recs),
        "n_explained": len(descriptions),
        "mean_score": float(new["score"].mean()) if len(new) and new["score"].notna().any() else None,
        "seconds": round(elapsed, 2),
        "explain_seconds": round(t_explain, 2),
        "latents_per_s": round(len(descriptions) / elapsed, 2) if elapsed > 0 else None,
        **explainer.meter.as_dict(),
    }
    if isinstance(scorer, LLMJudgeScorer):
        metrics["scorer_prompt_tokens"] = scorer.meter.prompt_tokens
    return metrics
