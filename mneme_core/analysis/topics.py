"""Where a latent fires, by the topic of the text: its activation per topic of context.

A latent's category comes from its top windows, which name the most typical text it fires
on and can miss where most of its activation goes: on the development pair a latent
labelled *quantities and measures* put its largest shares on chemistry and materials text
(docs/DIFFING.md, development scenario 15). This measures the second thing directly. The
categories stage first labels every packed context's text with a topic (the labels the
dictionary-free baseline uses); then one pass of the activation store through the
cross-coder (threshold mode, as the contexts stage) adds each token's code to its
context's topic, on the encoder's device, in a topics × latents table (a few MB whatever the
corpus), and ``topic_shares`` turns that into a share per topic.

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
def topic_mass(
    store: object,
    encode: Callable[[torch.Tensor], torch.Tensor],
    topic_of_context: np.ndarray,
    n_topics: int,
    special_ids: Iterable[int] = (),
    *,
    batch_size: int,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``mass_KF[k, j]``: latent j's summed activation over the tokens whose packed context
    has topic k, and ``tokens_K``, the tokens counted per topic. Special tokens (BOS, chat
    control tokens) count for nothing, as in the contexts stage's density and maxima; a
    context without a topic (``topic_of_context`` < 0) is left out."""
    ctx = np.asarray(store.context_ids, dtype=np.int64)  # type: ignore[attr-defined]
    token_ids = np.asarray(store.token_ids)  # type: ignore[attr-defined]
    special = np.asarray(sorted({int(i) for i in special_ids}), dtype=np.int64)
    topic_of = np.asarray(topic_of_context, dtype=np.int64)
    mass_KF: torch.Tensor | None = None
    tokens_K = np.zeros(n_topics, dtype=np.int64)
    start = 0
    with tqdm(total=len(ctx), unit="tok", desc="activation by topic", disable=not progress, dynamic_ncols=True) as bar:
        for x_B2d in store.iter_batches(batch_size, shuffle=False):  # type: ignore[attr-defined]
            stop = start + len(x_B2d)
            topic_B = topic_of[ctx[start:stop]]
            keep = ~np.isin(token_ids[start:stop], special) & (topic_B >= 0)
            f_BF = encode(x_B2d)
            if mass_KF is None:  # on the encoder's device; float64 where it has it (an MPS GPU has not)
                acc = torch.float32 if f_BF.device.type == "mps" else torch.float64
                mass_KF = torch.zeros(n_topics, f_BF.shape[1], dtype=acc, device=f_BF.device)
            rows = torch.from_numpy(np.flatnonzero(keep)).to(f_BF.device)
            mass_KF.index_add_(0, torch.from_numpy(topic_B[keep]).to(f_BF.device), f_BF[rows].to(mass_KF.dtype))
            tokens_K += np.bincount(topic_B[keep], minlength=n_topics)
            start = stop
            bar.update(len(x_B2d))
    mass = mass_KF.double().cpu().numpy() if mass_KF is not None else np.zeros((n_topics, 0))
    return mass, tokens_K


def topic_shares(mass_KF: np.ndarray, names: np.ndarray, tokens_K: np.ndarray) -> pd.DataFrame:
    """Per latent, the share of its activation in each topic's contexts, beside the share
    of the counted tokens that topic's contexts hold (``corpus_share``; a latent that fires
    evenly everywhere has ``share`` ≈ ``corpus_share``).

    Long format ``latent, category, share, corpus_share``: the ``MAX_TOPICS`` largest
    shares of each latent that reach ``MIN_SHARE``, largest first; a latent that never
    fired has no row."""
    mass_KF = np.nan_to_num(mass_KF, nan=0.0)  # one non-finite context does not void a latent's profile
    total_F = mass_KF.sum(0)
    share_KF = np.divide(mass_KF, total_F, out=np.zeros_like(mass_KF), where=total_F > 0)
    topic_K, latent_K = np.nonzero(share_KF >= MIN_SHARE)
    table = pd.DataFrame(
        {
            "latent": latent_K.astype(np.int64),
            "category": np.asarray(names)[topic_K].astype(str),
            "share": share_KF[topic_K, latent_K],
            "corpus_share": (tokens_K / max(int(tokens_K.sum()), 1))[topic_K].astype(np.float64),
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
