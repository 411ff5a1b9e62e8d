"""Where along the depth do the two models differ? A dictionary-free scan of every layer.

MNEME diffs one layer (``models.layer``; the middle by default). A fine-tune that changed
only some layers leaves the residual stream before them identical, and a study collected
there finds nothing however good its dictionary. This scan runs both models once over the
first tokens of the study's own neutral corpus and reports, per decoder layer, the mean
over tokens of ``‖h_ft − h_base‖ / ‖h_base‖`` (the dictionary-free baseline's per-token
measure, ``actdiff.relative_change``), on the tokens collection would keep there (the
corpus's kept tokens less the attention sinks, by the same rule at each layer). It reads no
benchmark and writes nothing to a run, so it may inform the choice of layer without touching
what a study is judged on; ``mneme layers STUDY.yaml`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mneme_core.analysis.actdiff import relative_change
from mneme_core.collect.activations import massive_token_mask
from mneme_core.collect.corpus import PackedContext
from mneme_core.collect.models import ModelPair, decoder_layers, hidden_size_of, layer_output, model_body
from mneme_core.common.config import ActivationsConfig, StudyConfig

HOST_BYTES = 2 << 30


def _each_layer(
    model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor, sink: Callable[[int, torch.Tensor], None]
) -> None:
    """Run the body (no LM head) and hand ``sink(L, h)`` each decoder layer's output as
    ``truncated_forward`` reads it (no final norm on the last), on the CPU in float32, as
    soon as the layer has run: nothing of the whole stack is held on the device."""
    layers = decoder_layers(model)
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, L=L: sink(L, layer_output(out).detach().cpu().float()))
        for L, layer in enumerate(layers)
    ]
    try:
        model_body(model)(input_ids=ids, attention_mask=attention, use_cache=False)
    finally:
        for h in hooks:
            h.remove()


@torch.inference_mode()
def layer_profile(
    pair: ModelPair,
    contexts: Sequence[PackedContext],
    act_cfg: ActivationsConfig,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> pd.DataFrame:
    """``layer, rel_change, n_tokens`` for every decoder layer (0-based, MNEME's layer
    numbering), over the kept tokens of ``contexts``. Identical models give 0 everywhere.
    Host memory: one batch of the base model's outputs at every layer, the batch made
    smaller than ``batch_size`` where that would exceed ``HOST_BYTES`` (a 7B model's
    1,024-token contexts: 4 at a time)."""
    device = next(pair.base.parameters()).device
    n_layers = len(decoder_layers(pair.base))
    if contexts:  # the base's outputs of one batch at every layer, float32 on the host, kept in budget
        per_context = len(contexts[0].input_ids) * hidden_size_of(pair.base.config) * n_layers * 4
        batch_size = max(1, min(batch_size, HOST_BYTES // per_context))
    sums, counts = np.zeros(n_layers), np.zeros(n_layers, dtype=np.int64)
    total = int(sum(int(c.attention_mask.sum()) for c in contexts))
    with tqdm(total=total, unit="tok", desc="layer profile", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(contexts), batch_size):
            batch = contexts[start : start + batch_size]
            ids = torch.from_numpy(np.stack([c.input_ids for c in batch])).to(device)
            attention = torch.from_numpy(np.stack([c.attention_mask for c in batch])).to(device)
            keep_BT = torch.from_numpy(np.stack([c.keep for c in batch]))
            base: dict[int, torch.Tensor] = {}
            _each_layer(pair.base, ids, attention, base.__setitem__)

            def compare(L: int, hf: torch.Tensor) -> None:
                hb = base.pop(L)
                drop, _ = massive_token_mask(
                    hb.norm(dim=-1), keep_BT, act_cfg.skip_first_tokens, act_cfg.massive_norm_multiple
                )
                kept = keep_BT & ~drop
                sums[L] += float(relative_change(torch.stack([hb[kept], hf[kept]], 1)).sum())
                counts[L] += int(kept.sum())

            _each_layer(pair.ft, ids, attention, compare)
            bar.update(int(attention.sum()))
    return pd.DataFrame({"layer": np.arange(n_layers), "rel_change": sums / np.maximum(counts, 1), "n_tokens": counts})


def profile_lines(profile: pd.DataFrame, chosen: int, width: int = 40) -> list[str]:
    """The profile as text: one line per layer with a bar, the study's layer and the largest
    change marked."""
    top = float(profile["rel_change"].max())
    peak = int(profile["layer"][profile["rel_change"].idxmax()]) if top > 0 else -1
    lines = [f"layer  change  (mean ‖h_ft − h_base‖ / ‖h_base‖ over {int(profile['n_tokens'].max()):,} tokens)"]
    for row in profile.itertuples():
        bar = "█" * (round(width * row.rel_change / top) if top > 0 else 0)
        marks = [m for m, on in (("models.layer", row.layer == chosen), ("largest", row.layer == peak)) if on]
        lines.append(f"{row.layer:5d}  {row.rel_change:6.3f}  {bar}{'  ← ' + ', '.join(marks) if marks else ''}")
    if top == 0:
        lines.append("the two models give the same activations at every layer: there is nothing to diff")
    return lines


def scan_study(cfg: StudyConfig, n_tokens: int, progress: bool = True) -> tuple[pd.DataFrame, int]:
    """The profile of a study's pair over the first ``n_tokens`` of its corpus (whole
    contexts, at most the study's own ``corpus.n_tokens``), and the layer the study collects
    at. The corpus is read before any weights load, so a corpus problem costs no model load;
    the pair runs in the precision collection would run it in."""
    import dataclasses

    from mneme_core.collect.activations import collection_pair
    from mneme_core.collect.corpus import CorpusError, iter_contexts
    from mneme_core.collect.models import load_tokenizer

    corpus = dataclasses.replace(cfg.corpus, n_tokens=min(cfg.corpus.n_tokens, n_tokens))
    contexts = list(iter_contexts(corpus, load_tokenizer(cfg.models.base)))
    if not any(c.keep.any() for c in contexts):
        raise CorpusError("the corpus gave no text to scan; check corpus.files / corpus.dataset and text_field")
    pair = collection_pair(cfg.models, cfg.activations.forward_dtype)
    batch = cfg.activations.batch_size
    return layer_profile(pair, contexts, cfg.activations, batch_size=batch, progress=progress), pair.layer
