"""Where a latent fires, by the topic of the text: its activation per packed context.

A latent's category comes from its top windows, which name the most typical text it fires
on and can miss where most of its activation goes: on the development pair a latent
labelled *quantities and measures* put its largest shares on chemistry and materials text
(docs/DIFFING.md, development scenario 15). This measures the second thing directly. One
pass of the activation store through the cross-coder (threshold mode, as the contexts
stage) sums each latent's activation over every token of each packed context; the
categories stage, once it has labelled every context's text for the dictionary-free
baseline, folds those sums into a share per topic (``topic_shares``).

What it is for: reading a latent. The prediction does not use it; the reading that did
(V4 of scenario 15) lost on the development pair, so it stays a view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

TOPICS_FILE = "latent_topics.parquet"
MIN_SHARE = 0.01  # a topic under 1% of a latent's activation is not kept
MAX_TOPICS = 12  # per latent, largest shares first
TOPIC_COLUMNS = ("fires_most_in", "fires_most_share")  # what the latents table gets


@torch.no_grad()
def context_mass(
    store: object,
    encode: Callable[[torch.Tensor], torch.Tensor],
    special_ids: Iterable[int] = (),
    *,
    batch_size: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """``mass_CF[c, j]``: latent j's summed activation over the tokens of packed context c
    (float64). Special tokens (BOS, chat control tokens) count for nothing, as in the
    contexts stage's density and maxima."""
    ctx = np.asarray(store.context_ids, dtype=np.int64)  # type: ignore[attr-defined]
    token_ids = np.asarray(store.token_ids)  # type: ignore[attr-defined]
    special = np.asarray(sorted({int(i) for i in special_ids}), dtype=np.int64)
    n_ctx = int(ctx.max()) + 1 if len(ctx) else 0
    mass_CF: torch.Tensor | None = None
    start = 0
    with tqdm(
        total=len(ctx), unit="tok", desc="activation by context", disable=not progress, dynamic_ncols=True
    ) as bar:
        for x_B2d in store.iter_batches(batch_size, shuffle=False):  # type: ignore[attr-defined]
            stop = start + len(x_B2d)
            f_BF = encode(x_B2d).detach().cpu().double()
            if mass_CF is None:
                mass_CF = torch.zeros(n_ctx, f_BF.shape[1], dtype=torch.float64)
            counted = torch.from_numpy(~np.isin(token_ids[start:stop], special))
            mass_CF.index_add_(0, torch.from_numpy(ctx[start:stop])[counted], f_BF[counted])
            start = stop
            bar.update(len(x_B2d))
    return mass_CF.numpy() if mass_CF is not None else np.zeros((0, 0))


def topic_shares(mass_CF: np.ndarray, contexts: pd.DataFrame) -> pd.DataFrame:
    """Per latent, the share of its activation in each topic's contexts, beside the share
    of all analysis tokens that topic's contexts hold (``corpus_share``; a latent that
    fires evenly everywhere has ``share`` ≈ ``corpus_share``). ``contexts`` holds
    ``context_id, n_tokens, category`` (the categories stage's labelled contexts).

    Long format ``latent, category, share, corpus_share``: the ``MAX_TOPICS`` largest
    shares of each latent that reach ``MIN_SHARE``, largest first; a latent that never
    fired has no row."""
    ids = contexts["context_id"].to_numpy(np.int64)
    names, topic_of = np.unique(contexts["category"].astype(str).to_numpy(), return_inverse=True)
    mass_KF = np.zeros((len(names), mass_CF.shape[1]))
    np.add.at(mass_KF, topic_of, mass_CF[ids])
    tokens_K = np.bincount(topic_of, weights=contexts["n_tokens"].to_numpy(np.float64), minlength=len(names))
    total_F = mass_KF.sum(0)
    share_KF = np.divide(mass_KF, total_F, out=np.zeros_like(mass_KF), where=total_F > 0)
    topic_K, latent_K = np.nonzero(share_KF >= MIN_SHARE)
    table = pd.DataFrame(
        {
            "latent": latent_K.astype(np.int64),
            "category": names[topic_K].astype(str),
            "share": share_KF[topic_K, latent_K],
            "corpus_share": (tokens_K / max(tokens_K.sum(), 1.0))[topic_K],
        }
    )
    table = table.sort_values(["latent", "share"], ascending=[True, False], kind="stable")
    return table.groupby("latent", sort=False).head(MAX_TOPICS).reset_index(drop=True)


def fires_most_in(shares: pd.DataFrame, n_latents: int) -> pd.DataFrame:
    """The latents-table columns: ``fires_most_in`` (the topic of a latent's largest share)
    and ``fires_most_share``; missing for a latent that never fired."""
    top = shares.drop_duplicates("latent", keep="first").set_index("latent")
    latents = pd.Index(np.arange(n_latents, dtype=np.int64), name="latent")
    most_in, most_share = TOPIC_COLUMNS
    return pd.DataFrame(
        {
            "latent": latents.to_numpy(),
            most_in: top["category"].reindex(latents).astype("string"),
            most_share: top["share"].reindex(latents).to_numpy(np.float64),
        }
    ).reset_index(drop=True)
