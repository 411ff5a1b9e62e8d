"""The dictionary-free baseline: where did the activations change, by topic of the text?

MNEME's prediction goes through a dictionary (cross-coder latents, their attribution and
categories). The obvious rival needs none: measure the activation difference itself on
the same neutral tokens and ask which topics of text it is largest on (the idea behind
activation-difference lenses). If MNEME cannot beat this, the dictionary adds nothing.

* ``context_diffs``: per packed context of the activation store, the mean over its tokens
  of ``‖a_ft − a_base‖ / ‖a_base‖`` (relative, so a model-wide growth of the stream does
  not favour long-norm contexts), and the context's text.
* The categories stage labels each context's text with the same taxonomy and embedder as
  the latents (``context_diffs.parquet`` in the run); the evaluation maps those labels to
  the benchmark with the same mapping.
* ``predict_from_diffs``: per benchmark category, a one-sided Mann–Whitney test of "the
  contexts of this category changed more than the other contexts", predicted at the
  same Bonferroni-corrected level as MNEME's enrichment test, and only where the
  category's mean change is at least ``min_ratio`` times the other contexts' mean. The
  test alone rewards a large category for a small excess it shows consistently (a few
  percent more change over a hundred contexts is very significant); the ratio asks the
  excess to be large as well, as MNEME's band asks of a latent's shift. Two identical
  models give a difference of exactly zero everywhere, hence no prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from tqdm.auto import tqdm

CONTEXT_DIFFS_FILE = "context_diffs.parquet"
TEXT_CHARS = 2000  # of each context's text kept for embedding and display


def relative_change(x_raw_B2d: torch.Tensor) -> torch.Tensor:
    """``‖a_ft − a_base‖ / ‖a_base‖`` per token of paired activations (N, 2, d), in float64
    on the CPU: the one per-token measure of change, for the baseline and the layer scan."""
    x = x_raw_B2d.detach().cpu().double()
    return (x[:, 1] - x[:, 0]).norm(dim=-1) / x[:, 0].norm(dim=-1).clamp_min(1e-12)


@torch.no_grad()
def context_diffs(store: Any, tokenizer: Any, *, batch_size: int = 8192, progress: bool = False) -> pd.DataFrame:
    """``context_id, n_tokens, rel_diff, text`` for every context of an ActivationStore."""
    ctx = store.context_ids
    n_ctx = int(ctx.max()) + 1 if len(ctx) else 0
    sums = np.zeros(n_ctx, np.float64)
    start = 0
    with tqdm(
        total=store.n_tokens, unit="tok", desc="activation difference", disable=not progress, dynamic_ncols=True
    ) as bar:
        for x in store.iter_batches(batch_size, shuffle=False):
            np.add.at(sums, ctx[start : start + len(x)], relative_change(x).numpy())
            start += len(x)
            bar.update(len(x))
    counts = np.bincount(ctx, minlength=n_ctx)
    present = np.flatnonzero(counts)
    order = np.argsort(ctx, kind="stable")
    bounds = np.searchsorted(ctx[order], np.arange(n_ctx + 1))
    token_ids = store.token_ids[order]
    texts = [tokenizer.decode(token_ids[bounds[c] : bounds[c + 1]].tolist())[:TEXT_CHARS] for c in present]
    return pd.DataFrame(
        {
            "context_id": present.astype(np.int64),
            "n_tokens": counts[present].astype(np.int64),
            "rel_diff": sums[present] / counts[present],
            "text": texts,
        }
    )


def moved_more_p(values: np.ndarray, inside: np.ndarray) -> float:
    """One-sided Mann–Whitney p of "the values ``inside`` are larger than the rest"; 1 when
    either side is empty or every value is equal (identical models: nothing moved)."""
    n_in = int(inside.sum())
    if not 0 < n_in < len(values) or np.ptp(values) == 0:
        return 1.0
    return float(stats.mannwhitneyu(values[inside], values[~inside], alternative="greater").pvalue)


def predict_from_diffs(
    diffs: pd.DataFrame,
    mapping: Mapping[str, str],
    benchmark_categories: Sequence[str],
    *,
    alpha: float = 0.05,
    min_contexts: int = 3,
    min_ratio: float = 0.0,
) -> tuple[pd.DataFrame, set[str]]:
    """Per benchmark category ``n_contexts, mean_rel_diff, ratio, p_value, score`` and the
    predicted set.

    ``diffs`` needs ``rel_diff`` and ``category`` (a taxonomy label, mapped through
    ``mapping``). ``ratio`` is the category's mean change over the other contexts' mean
    (NaN where either side is empty, or where the others did not move at all; such a
    category still passes the floor if it moved). Predicted: ``p < alpha / K``, at least
    ``min_contexts`` contexts and, where ``min_ratio`` is above 0, a mean change of at least
    ``min_ratio`` times the others' (compared as a product, so a zero rest is no division).
    """
    bench = diffs["category"].map(mapping)
    values = diffs["rel_diff"].to_numpy(np.float64)
    K = len(benchmark_categories)
    rows, predicted = [], set()
    for cat in sorted(benchmark_categories):
        inside = (bench == cat).to_numpy()
        n_in = int(inside.sum())
        p = moved_more_p(values, inside)
        mean_in = float(values[inside].mean()) if n_in else float("nan")
        mean_rest = float(values[~inside].mean()) if n_in < len(values) else float("nan")
        ratio = mean_in / mean_rest if mean_rest > 0 else float("nan")
        rows.append(
            {
                "category": cat,
                "n_contexts": n_in,
                "mean_rel_diff": mean_in,
                "ratio": ratio,
                "p_value": p,
                "score": float(-np.log10(max(p, 1e-300))),
            }
        )
        if K and p < alpha / K and n_in >= min_contexts and (min_ratio <= 0 or mean_in >= min_ratio * mean_rest):
            predicted.add(cat)
    return pd.DataFrame(rows), predicted
