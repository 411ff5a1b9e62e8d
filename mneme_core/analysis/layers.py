"""Where along the depth do the two models differ? A dictionary-free scan of every layer.

MNEME diffs one layer (``models.layer``; the middle by default). A fine-tune that changed
only some layers leaves the residual stream before them identical, and a study collected
there finds nothing however good its dictionary. This scan runs both models once over the
first tokens of the study's own neutral corpus and reports, per decoder layer, the mean
over tokens of ``‖h_ft − h_base‖ / ‖h_base‖`` (the dictionary-free baseline's per-token
measure, ``actdiff.relative_change``), on the tokens collection would keep there (the
corpus's kept tokens less the attention sinks, by the same rule at each layer). It reads no
benchmark, so it may inform the choice of layer without touching what a study is judged
on; ``mneme layers STUDY.yaml`` prints it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mneme_core.analysis.actdiff import relative_change
from mneme_core.collect.activations import massive_token_mask
from mneme_core.collect.corpus import PackedContext
from mneme_core.collect.models import ModelPair, decoder_layers
from mneme_core.common.config import ActivationsConfig, StudyConfig


def _every_layer(model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor) -> list[torch.Tensor]:
    """The output of each decoder layer, (B, T, d) each: the body only (no LM head), and
    each layer's own output as ``truncated_forward`` reads it (no final norm on the last)."""
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out: outputs.append((out[0] if isinstance(out, (tuple, list)) else out).float())
        )
        for layer in decoder_layers(model)
    ]
    try:
        body = getattr(model, "base_model", model)
        body(input_ids=ids, attention_mask=attention, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return outputs


@torch.inference_mode()
def layer_profile(
    pair: ModelPair,
    contexts: Iterable[PackedContext],
    act_cfg: ActivationsConfig,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """``layer, rel_change, n_tokens`` for every decoder layer (0-based, MNEME's layer
    numbering), over the kept tokens of ``contexts``. Identical models give 0 everywhere."""
    device = next(pair.base.parameters()).device
    n_layers = len(decoder_layers(pair.base))
    sums, counts = np.zeros(n_layers), np.zeros(n_layers, dtype=np.int64)
    batch: list[PackedContext] = []
    with tqdm(unit="tok", desc="layer profile", disable=not progress, dynamic_ncols=True) as bar:
        for context in [*contexts, None]:
            if context is not None:
                batch.append(context)
            if not batch or (context is not None and len(batch) < batch_size):
                continue
            ids = torch.from_numpy(np.stack([c.input_ids for c in batch])).to(device)
            attention = torch.from_numpy(np.stack([c.attention_mask for c in batch])).to(device)
            keep_BT = torch.from_numpy(np.stack([c.keep for c in batch]))
            base, ft = (_every_layer(m, ids, attention) for m in (pair.base, pair.ft))
            for L, (hb, hf) in enumerate(zip(base, ft)):
                hb, hf = hb.cpu(), hf.cpu()
                drop, _ = massive_token_mask(
                    hb.norm(dim=-1), keep_BT, act_cfg.skip_first_tokens, act_cfg.massive_norm_multiple
                )
                kept = keep_BT & ~drop
                sums[L] += float(relative_change(torch.stack([hb[kept], hf[kept]], 1)).sum())
                counts[L] += int(kept.sum())
            bar.update(int(attention.sum()))
            batch = []
    with np.errstate(invalid="ignore"):
        return pd.DataFrame(
            {"layer": np.arange(n_layers), "rel_change": np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)}
        ).assign(n_tokens=counts)


def profile_lines(profile: pd.DataFrame, chosen: int, width: int = 40) -> list[str]:
    """The profile as text: one line per layer with a bar, the study's layer and the largest
    change marked."""
    top = float(np.nanmax(profile["rel_change"])) if profile["rel_change"].notna().any() else 0.0
    peak = int(profile["layer"][profile["rel_change"].fillna(-1.0).idxmax()]) if top > 0 else -1
    lines = [f"layer  change  (mean ‖h_ft − h_base‖ / ‖h_base‖ over {int(profile['n_tokens'].max()):,} tokens)"]
    for row in profile.itertuples():
        bar = "█" * (round(width * row.rel_change / top) if top > 0 and np.isfinite(row.rel_change) else 0)
        marks = [m for m, on in (("models.layer", row.layer == chosen), ("largest", row.layer == peak)) if on]
        lines.append(f"{row.layer:5d}  {row.rel_change:6.3f}  {bar}{'  ← ' + ', '.join(marks) if marks else ''}")
    if top == 0:
        lines.append("the two models give the same activations at every layer: there is nothing to diff")
    return lines


def scan_study(cfg: StudyConfig, n_tokens: int, progress: bool = True) -> tuple[pd.DataFrame, int]:
    """The profile of a study's pair over the first ``n_tokens`` of its corpus, and the
    layer the study collects at."""
    import dataclasses

    from mneme_core.collect.corpus import iter_contexts
    from mneme_core.collect.models import load_model_pair

    pair = load_model_pair(cfg.models)
    corpus = dataclasses.replace(cfg.corpus, n_tokens=min(cfg.corpus.n_tokens, n_tokens))
    contexts = iter_contexts(corpus, pair.tokenizer)
    batch = cfg.activations.batch_size
    return layer_profile(pair, contexts, cfg.activations, batch_size=batch, progress=progress), pair.layer
