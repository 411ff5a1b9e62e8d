"""A tiny world where one latent carries the answers of one benchmark category.

For `mneme confirm`: a real run folder (models saved as safetensors folders, a saved
cross-coder, latents table, benchmark scored by the MC runner, evaluation from the real
``evaluate``) in which the truth is known by construction.

Model: a two-layer Llama with one attention head, set by hand so that the residual stream
after layer 0 (the study's layer) at a prompt's last token is
``e(last) + mean over the prompt of RMSNorm(e(token))`` — queries and keys are zero (uniform
attention), values and outputs the identity, MLPs and layer 1 write nothing. Embeddings are
orthonormal directions scaled to √d:

* the "planted" questions' topic word carries ``v`` plus the decoy directions ``w_k``;
* the "steady" questions' topic word carries ``u`` plus the same decoys;
* ``Answer:`` (every prompt's last token) is ``z``; the other words have filler directions.

The LM head scores single-token options: planted answers read ``α v``, steady answers
``α u``, idle answers ``2γ z`` and distractors ``γ z``. With ``v`` in the stream a planted
question's answer wins; without it a distractor does. Removing a decoy direction only
changes the stream's norm, which the final RMSNorm undoes: decoys carry nothing.

Fine-tune: the planted topic word loses its ``v`` part (an unlearned concept), so planted
falls from 1 to 0 and nothing else moves.

Cross-coder (hand-built; threshold 0, scale 1): latent ``PLANTED`` reads ``v`` from the base
half and writes ``v`` in the base only (a suppressed, base-only latent). Decoys read and
write ``w_k``, half of them shared by both models and half base-only, with masses around
the planted latent's, so ablation *and* restore have random latents of matched mass.
Filler latents read filler directions. The evaluation predicts planted (latent PLANTED,
right) and steady (latent ``WRONG``, a shared decoy: a wrong prediction).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tiny import save_model, tiny_tokenizer

from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

D = 64
N_DECOYS = 12  # of each kind (shared, base-only)
ALPHA, GAMMA = 100.0, 1.0
PLANTED = 0
WRONG = 1  # the first shared decoy: what the evaluation wrongly blames for steady
FILLERS = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
ANSWERS = {"planted": ["pa", "pb", "pc", "pd"], "steady": ["sa", "sb", "sc", "sd"], "idle": ["ia", "ib"]}
DISTRACTORS = ["xa", "xb", "xc", "xd", "xe", "xf"]
TOPIC = {"planted": "ptopic", "steady": "stopic", "idle": None}
N_QUESTIONS = 8


def directions(seed: int = 0) -> dict[str, torch.Tensor]:
    """Orthonormal directions: v, u, z, question, option, 6 fillers, 2·N_DECOYS decoys."""
    B = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[
        0
    ].T.float()
    names = ["v", "u", "z", "question", "option"] + [f"f{i}" for i in range(len(FILLERS))]
    out = {n: B[i] for i, n in enumerate(names)}
    out["w"] = B[len(names) : len(names) + 2 * N_DECOYS]
    return out


def decoy_weights() -> torch.Tensor:
    """How strongly each decoy direction sits in the topic words (masses near the planted one)."""
    return torch.tensor(
        random.Random(1).sample(list(np.linspace(0.7, 1.3, 2 * N_DECOYS)), 2 * N_DECOYS), dtype=torch.float32
    )


def world_tokenizer():
    words = [
        "Question:",
        "Answer:",
        *FILLERS,
        *[t for t in TOPIC.values() if t],
        *DISTRACTORS,
        *[w for ws in ANSWERS.values() for w in ws],
    ]
    return tiny_tokenizer([" ".join(words)])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


def embeddings(tok, dirs: dict[str, torch.Tensor], unlearned: bool) -> torch.Tensor:
    """(V, D) token embeddings, each of norm √D (so no token looks like an attention sink)."""
    scale = D**0.5
    E = dirs["option"].repeat(len(tok), 1) * scale
    idx = tok.convert_tokens_to_ids
    E[idx("Question:")] = dirs["question"] * scale
    E[idx("Answer:")] = dirs["z"] * scale
    for i, word in enumerate(FILLERS):
        E[idx(word)] = dirs[f"f{i}"] * scale
    decoys = decoy_weights() @ dirs["w"]
    E[idx(TOPIC["planted"])] = _unit(decoys if unlearned else dirs["v"] + decoys) * scale
    E[idx(TOPIC["steady"])] = _unit(dirs["u"] + decoys) * scale
    return E


def unembedding(tok, dirs: dict[str, torch.Tensor]) -> torch.Tensor:
    W = torch.zeros(len(tok), D)
    idx = tok.convert_tokens_to_ids
    for word in ANSWERS["planted"]:
        W[idx(word)] = ALPHA * dirs["v"]
    for word in ANSWERS["steady"]:
        W[idx(word)] = ALPHA * dirs["u"]
    for word in ANSWERS["idle"]:
        W[idx(word)] = 2 * GAMMA * dirs["z"]
    for word in DISTRACTORS:
        W[idx(word)] = GAMMA * dirs["z"]
    return W


def world_model(tok, dirs: dict[str, torch.Tensor], unlearned: bool = False):
    """The hand-set two-layer Llama (see the module docstring)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    )
    model = LlamaForCausalLM(cfg).eval()
    eye = torch.eye(D)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embeddings(tok, dirs, unlearned))
        model.lm_head.weight.copy_(unembedding(tok, dirs))
        first, second = model.model.layers
        for proj in (
            first.self_attn.q_proj,
            first.self_attn.k_proj,
            first.mlp.down_proj,
            second.self_attn.o_proj,
            second.mlp.down_proj,
        ):
            proj.weight.zero_()
        first.self_attn.v_proj.weight.copy_(eye)
        first.self_attn.o_proj.weight.copy_(eye)
    return model


def world_crosscoder(dirs: dict[str, torch.Tensor]) -> BatchTopKCrossCoder:
    """Planted latent 0, shared decoys 1..N, base-only decoys N+1..2N, then filler latents."""
    reads = [dirs["v"], *dirs["w"], *[dirs[f"f{i}"] for i in range(len(FILLERS))]]
    base_only = {PLANTED, *range(N_DECOYS + 1, 2 * N_DECOYS + 1)}
    F = len(reads)
    W_enc, W_dec = torch.zeros(2, D, F), torch.zeros(2, F, D)
    for j, d in enumerate(reads):
        if j in base_only:
            W_enc[0, :, j], W_dec[0, j] = d, d
        else:
            W_enc[:, :, j] = d / 2
            W_dec[:, j] = d
    cc = BatchTopKCrossCoder(D, F, k=4)
    cc.load_tensors(
        {
            "W_enc": W_enc,
            "b_enc": torch.zeros(F),
            "W_dec": W_dec,
            "b_dec": torch.zeros(2, D),
            "threshold": torch.tensor(0.0),
            "norm_scale": torch.ones(2),
        }
    )
    return cc


def questions(seed: int = 0) -> list[dict]:
    """N_QUESTIONS per category: a topic word among fillers; the answer at a random position."""
    rng = random.Random(seed)
    rows = []
    for category, topic in TOPIC.items():
        for _ in range(N_QUESTIONS):
            words = rng.sample(FILLERS, 2)
            if topic:
                words.insert(1, topic)
            choices = [rng.choice(ANSWERS[category]), *rng.sample(DISTRACTORS, 3)]
            rng.shuffle(choices)
            answer = next(i for i, c in enumerate(choices) if c in ANSWERS[category])
            rows.append({"question": " ".join(words), "choices": choices, "answer": answer, "subject": category})
    return rows


def latents_table(n_latents: int) -> pd.DataFrame:
    attribution = ["unchanged"] * n_latents
    attribution[PLANTED] = attribution[WRONG] = "suppressed"
    category = [""] * n_latents
    category[PLANTED], category[WRONG] = "planted", "steady"
    shift = np.zeros(n_latents)
    shift[PLANTED], shift[WRONG] = -3.0, -1.0
    return pd.DataFrame(
        {
            "latent": np.arange(n_latents, dtype=np.int64),
            "attribution": attribution,
            "shift": shift,
            "category": category,
        }
    )


def build_causal_run(root: Path) -> Path:
    """The run folder ``root / "run"`` (models, questions and cross-coder beside it)."""
    from mneme_core.benchmarks.mc_runner import load_mc_items, score_pair
    from mneme_core.common.atomic import atomic_write_json, write_parquet
    from mneme_core.common.config import EvaluationConfig, load_config
    from mneme_core.evaluation.evaluate import evaluate
    from mneme_core.run.store import STAGES, init_run, set_stage

    tok, dirs = world_tokenizer(), directions()
    base = save_model(world_model(tok, dirs), tok, root / "base")
    ft = save_model(world_model(tok, dirs, unlearned=True), tok, root / "ft")
    qfile = root / "questions.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in questions()))
    run = root / "run"
    evaluation = {
        "benchmark": f"runner:{qfile}",
        "predict_score": "count",
        "predict_threshold": 0.3,
        "predict_min_latents": 1,
        "random_draws": 50,
    }
    cfg = load_config(
        {
            "name": "causal",
            "run_dir": str(run),
            "corpus": {"files": ["unused.txt"]},
            "models": {"base": {"path": str(base)}, "ft": {"path": str(ft)}, "layer": 0, "device": "cpu"},
            "evaluation": evaluation,
        }
    )
    init_run(run, cfg.to_dict())
    cc = world_crosscoder(dirs)
    cc.save(run / "crosscoder")
    latents = latents_table(cc.n_latents)
    write_parquet(run / "latents.parquet", latents)
    models = [world_model(tok, dirs), world_model(tok, dirs, unlearned=True)]
    bench = score_pair(
        (models[0], tok), (models[1], tok), load_mc_items(qfile), cache_dir=run / "benchmark_cache", progress=False
    )
    table, record = evaluate(
        bench, latents, EvaluationConfig(**evaluation), mapping={"planted": "planted", "steady": "steady"}
    )
    write_parquet(run / "benchmark.parquet", table)
    atomic_write_json(run / "evaluation.json", record)
    for stage in STAGES:
        set_stage(run, stage, "complete")
    return run
