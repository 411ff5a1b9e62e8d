"""A run with planted latents: latent j fires exactly on the words of concept j.

Paired activations are token embeddings (orthonormal rows, so the ground truth is exact)
scaled per occurrence, plus small noise; a real ``BatchTopKCrossCoder`` gets encoder
columns that sum the embeddings of concept j's words. The contexts stage's core then
streams these through the real encoder, so every later stage (explainers, scorers,
categories, search) is tested on contexts whose truth is known.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tiny import tiny_tokenizer

from mneme_core.analysis.contexts import TokenSource, collect_run_contexts
from mneme_core.common.config import load_config
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
from mneme_core.run.store import init_run, merge_latent_columns

CONCEPTS = {
    "virus": ["virus", "infection", "bacteria", "pathogen", "vaccine"],
    "law": ["court", "statute", "judge", "lawsuit", "attorney"],
    "cooking": ["recipe", "oven", "flour", "bake", "butter"],
    "astronomy": ["planet", "galaxy", "telescope", "orbit", "comet"],
    "finance": ["stock", "investor", "dividend", "bank", "loan"],
    "music": ["guitar", "melody", "piano", "concert", "song"],
    "sports": ["football", "goal", "referee", "stadium", "tournament"],
    "weather": ["rain", "storm", "cloud", "thunder", "snow"],
    "computing": ["computer", "software", "keyboard", "program", "database"],
    "ocean": ["ocean", "fish", "whale", "coral", "shark"],
}
FILLER = "the a of and to in is was it that with for on as by this they we he she then there when".split()
BOS_LATENT = 0  # also fires (strongly) on BOS, which must never count


def planted_corpus(n_docs: int = 120, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    names = list(CONCEPTS)
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(FILLER) for _ in range(rng.randint(18, 30))]
        for concept in rng.sample(names, rng.randint(1, 2)):
            for _ in range(rng.randint(2, 4)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(CONCEPTS[concept]))
        docs.append(words)
    return docs


def planted_arrays(d_model: int = 128, n_docs: int = 120, seed: int = 0):
    """(tokenizer, activations (N, 2, d), TokenSource, crosscoder, concept names)."""
    docs = planted_corpus(n_docs, seed)
    all_words = sorted({w for ws in CONCEPTS.values() for w in ws} | set(FILLER))
    tok = tiny_tokenizer([" ".join(all_words)])
    gen = torch.Generator().manual_seed(seed)
    V = len(tok)
    assert V <= d_model
    E = torch.linalg.qr(torch.randn(d_model, d_model, generator=gen))[0][:V]  # orthonormal rows
    ids, doc_ids, positions = [], [], []
    for d, words in enumerate(docs):
        row = [tok.bos_token_id] + tok.convert_tokens_to_ids(words)
        ids += row
        doc_ids += [d] * len(row)
        positions += list(range(len(row)))
    ids_t = torch.tensor(ids)
    scale = 1.0 + torch.rand(len(ids), generator=gen)  # per-occurrence strength in [1, 2)
    scale[ids_t == tok.bos_token_id] = 4.0
    x = E[ids_t] * scale[:, None]
    x_N2d = torch.stack([x, x * 1.1], 1) + 0.01 * torch.randn(len(ids), 2, d_model, generator=gen)

    names = list(CONCEPTS)
    F = len(names) + 2  # two extra latents that never fire
    W_enc = torch.zeros(2, d_model, F)
    for j, name in enumerate(names):
        col = E[tok.convert_tokens_to_ids(CONCEPTS[name])].sum(0)
        W_enc[:, :, j] = col * 0.5
    W_enc[:, :, BOS_LATENT] += E[tok.bos_token_id] * 0.5
    cc = BatchTopKCrossCoder(d_model, F, k=2)
    cc.load_tensors(
        {
            "W_enc": W_enc,
            "b_enc": torch.full((F,), -0.4),
            "W_dec": W_enc.permute(0, 2, 1).contiguous(),
            "b_dec": torch.zeros(2, d_model),
            "threshold": torch.tensor(0.0),
            "norm_scale": torch.ones(2),
        }
    )
    src = TokenSource(np.asarray(ids, np.int64), np.asarray(doc_ids, np.int64), np.asarray(positions, np.int64))
    return tok, x_N2d, src, cc, names


def study_config(run_path: Path, **sections):
    data = {
        "name": "planted",
        "run_dir": str(run_path),
        "models": {"base": {"path": "unused-base"}, "ft": {"path": "unused-ft"}},
        "corpus": {"files": ["planted.txt"]},
        "contexts": {"top_n": 8, "window": 12, "n_quantiles": 3, "per_quantile": 2, "hist_bins": 10, "n_random": 64},
        "interpret": {"latents": "all", "n_examples": 8, "n_score_examples": 8},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return load_config(data)


def build_planted_run(run_path: Path, batch_size: int = 256, **sections):
    """A run folder with the contexts stage's outputs and diff-like latents columns."""
    cfg = study_config(run_path, **sections)
    init_run(run_path, cfg.to_dict())
    tok, x, src, cc, names = planted_arrays()
    F = cc.n_latents
    merge_latent_columns(
        run_path,
        pd.DataFrame(
            {
                "latent": np.arange(F, dtype=np.int64),
                "attribution": ["suppressed", "amplified"] + ["unchanged"] * (F - 2),
                "shift": np.r_[-2.0, 1.5, np.zeros(F - 2)],
                "label_by_norm": ["shared"] * F,
                "rel_norm": np.full(F, 0.5),
            }
        ),
    )
    batches = (x[s : s + batch_size] for s in range(0, len(x), batch_size))
    metrics = collect_run_contexts(
        lambda b: cc.encode(b, use_threshold=True),
        batches,
        src,
        F,
        len(x),
        tok,
        run_path,
        cfg.contexts,
        progress=False,
    )
    return cfg, metrics, (tok, x, src, cc, names)


def write_planted_store_run(run_path: Path, **sections):
    """The same planted data as a real run folder: an activation store (shards in the
    store's format, indexed by ``activations.finalize``), a saved cross-coder and a base
    model folder carrying the planted tokenizer — what ``contexts.run_stage`` reads."""
    from safetensors.torch import save_file
    from tiny import save_model, tiny_llama

    from mneme_core.collect.activations import finalize
    from mneme_core.common.atomic import atomic_write_json

    tok, x, src, cc, names = planted_arrays()
    base = save_model(tiny_llama(tok, hidden_size=16, n_layers=2), tok, run_path.parent / "base_model")
    cfg = study_config(run_path, models={"base": {"path": str(base)}, "ft": {"path": str(base)}}, **sections)
    init_run(run_path, cfg.to_dict())
    out = run_path / "activations"
    out.mkdir(parents=True)
    names_written = []
    for seq, (a, b) in enumerate([(0, 1500), (1500, len(x))]):  # two shards: batches cross a shard edge
        xs = x[a:b].double()
        save_file(
            {
                "acts": x[a:b].to(torch.float32).contiguous(),
                "token_ids": torch.from_numpy(src.token_ids[a:b].astype(np.int32)),
                "doc_ids": torch.from_numpy(src.doc_ids[a:b]),
                "positions": torch.from_numpy(src.positions[a:b].astype(np.int32)),
                "context_ids": torch.from_numpy(src.doc_ids[a:b].copy()),
                "stats_sum": xs.sum(0),
                "stats_sumsq": (xs * xs).sum(0),
                "stats_norm_sum": xs.norm(dim=-1).sum(0),
            },
            str(out / f"shard-r0-{seq:05d}.safetensors"),
            metadata={"n_tokens": str(b - a)},
        )
        names_written.append(f"shard-r0-{seq:05d}.safetensors")
    atomic_write_json(out / "rank-0.done.json", {"rank": 0, "shards": names_written})
    finalize(out, world_size=1, layer=1)
    cc.save(run_path / "crosscoder")
    F = cc.n_latents
    merge_latent_columns(run_path, pd.DataFrame({"latent": np.arange(F, dtype=np.int64), "shift": np.zeros(F)}))
    return cfg, (tok, x, src, cc, names)
