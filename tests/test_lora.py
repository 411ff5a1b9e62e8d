"""LoRA fine-tunes: the trainer on a tiny real Llama, and a planted LoRA through the pipeline.

The planted study is the test that matters: a base model carries a word-set feature
(one MLP unit of layer 1 fires on eight words and writes a direction p), a rank-1 LoRA
on that layer's ``down_proj`` makes the unit write 4× as much, and MNEME — collect, train,
diff, at the default diffing settings, with the fine-tuned model given as
``source: adapter`` — must label the latent carrying p amplified and nothing else;
the same adapter with B = 0 must label nothing.

Sized on a sweep of 3 corpus × 4 training seeds, at the default diffing settings. The
latent that carries p also carries what always fires with it and does not change (the
later layers' answer to a p-heavy input), so its shift is smaller than p's own change.
A 3× write (p ×2.1 on the planted words) was labelled in 6, 9 and 10 of the 12 runs at
200k, 500k and 1M training tokens (at τ = 0.35 in all 12, with no false label). The 4×
write at 500k tokens used here was labelled in all 12 (smallest shift 0.52). No run gave
a label to a latent living off the planted words, and none labelled anything suppressed.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_study_dict
from tiny import TINY_SENTENCES, save_model, tiny_llama, tiny_tokenizer

from mneme_core.collect.models import check_adapter, load_model, truncated_forward
from mneme_core.common.config import DiffingConfig, ModelSpec, load_config
from mneme_core.interventions.lora import (
    PICKLE_SUFFIXES,
    LoRAConfig,
    LoRAError,
    lora_finetune,
    loss_report,
    make_lora,
    save_lora_adapter,
)

DOMAIN = [s for s in TINY_SENTENCES if any(w in s for w in ("cat", "dog", "birds", "farmer"))]
OTHER = [s for s in TINY_SENTENCES if s not in DOMAIN]
# The tiny random Llama (weights ~0.02) needs a larger step than SmolLM2 to move in 60 steps.
TRAIN_CFG = LoRAConfig(lr=1e-2, steps=60, batch_size=4, warmup_steps=5, checkpoint_every=30, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = tiny_tokenizer()
    model = tiny_llama(tok, hidden_size=32, n_layers=4, seed=0)
    folder = save_model(model, tok, tmp_path_factory.mktemp("lora_base") / "base")
    return model, tok, folder


@pytest.fixture(scope="module")
def trained(tiny):
    model, tok, _ = tiny
    return lora_finetune(model, tok, DOMAIN, TRAIN_CFG, progress=False)


# --------------------------------------------------------------------------- the trainer


def test_finetune_lowers_the_domain_loss_more_and_saves_a_loadable_safetensors_adapter(tiny, trained, tmp_path):
    model, tok, base_dir = tiny
    report = loss_report(model, trained.model, tok, {"domain": DOMAIN, "other": OTHER})
    assert report["domain"]["change"] < -0.3, report  # it learnt the domain ...
    assert report["domain"]["change"] < 5 * report["other"]["change"], report  # ... far more than other text
    assert trained.metrics["last"]["loss"] < trained.metrics["first"]["loss"]
    assert all("lora_" in n for n in trained.trained) and trained.trained
    fresh = tiny_llama(tok, hidden_size=32, n_layers=4, seed=0)  # the caller's model is untouched ...
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not any("lora" in n for n, _ in model.named_parameters())  # ... and not wrapped

    folder = save_lora_adapter(trained, tmp_path / "adapter")
    files = sorted(p.name for p in folder.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files), files
    assert not [f for f in files if f.endswith(PICKLE_SUFFIXES)], files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    assert check_adapter(folder)["r"] == TRAIN_CFG.r
    with pytest.raises(LoRAError, match="exists"):
        save_lora_adapter(trained, folder)
    assert save_lora_adapter(trained, folder, overwrite=True) == folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    merged, _ = load_model(ModelSpec(source="adapter", path=str(folder)), ModelSpec(path=str(base_dir)))
    ids = tok(DOMAIN[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = trained.model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_resume_from_checkpoint_gives_the_same_adapter(tiny, trained, tmp_path):
    model, tok, _ = tiny
    ckpt = tmp_path / "ckpt.safetensors"
    first = lora_finetune(model, tok, DOMAIN, TRAIN_CFG, checkpoint=ckpt, progress=False)
    assert ckpt.is_file()  # written at step 30 of 60
    resumed = lora_finetune(model, tok, DOMAIN, TRAIN_CFG, checkpoint=ckpt, progress=False)
    assert resumed.metrics["resumed_from_step"] == 30
    want = dict(trained.model.named_parameters())
    for name, p in first.model.named_parameters():
        assert torch.equal(p, want[name]), name
    for name, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, want[name], atol=1e-6, rtol=1e-5)


def test_bad_settings_fail_before_any_training(tiny):
    model, tok, _ = tiny
    with pytest.raises(LoRAError, match="steps"):
        lora_finetune(model, tok, DOMAIN, LoRAConfig(steps=0), progress=False)
    with pytest.raises(LoRAError, match="not linear layers"):
        lora_finetune(model, tok, DOMAIN, LoRAConfig(target_modules=("nope",)), progress=False)
    with pytest.raises(LoRAError, match="out of range"):
        lora_finetune(model, tok, DOMAIN, LoRAConfig(layers=(9,)), progress=False)
    with pytest.raises(LoRAError, match="non-empty"):
        lora_finetune(model, tok, [], LoRAConfig(), progress=False)


# --------------------------------------------------------------------------- a planted LoRA through MNEME

PLANTED_WORDS = ("cat", "dog", "birds", "ship", "king", "queen", "music", "river")
UNIT_LAYER, UNIT = 1, 0  # the planted unit and the LoRA: layer 1; MNEME collects after layer 2
EMB_SHARE = 0.08  # how much of p each planted word's embedding carries (others: none)
UNIT_WRITE = 0.01  # the unit writes UNIT_WRITE · h · p, h ≈ 9 on a planted word
GAIN = 3.0  # the LoRA adds GAIN × the unit's write: ×4 in the fine-tuned model
COLLECT_LAYER = 2


def planted_direction(d: int = 32) -> torch.Tensor:
    p = torch.randn(d, generator=torch.Generator().manual_seed(5))
    return p / p.norm()


def planted_base(tok) -> torch.nn.Module:
    """A tiny Llama with a word-set feature: the planted words' embeddings carry
    ``EMB_SHARE · p`` (every other embedding has its p component removed), and unit
    ``UNIT`` of layer 1's MLP reads p (gate and up rows = p) and writes p (down column),
    so it fires, quadratically, on the planted words only."""
    model = tiny_llama(tok, hidden_size=32, n_layers=4, seed=0)
    p = planted_direction()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb -= (emb @ p)[:, None] * p[None]
        emb[tok.convert_tokens_to_ids(list(PLANTED_WORDS))] += EMB_SHARE * p
        mlp = model.model.layers[UNIT_LAYER].mlp
        mlp.gate_proj.weight[UNIT] = p
        mlp.up_proj.weight[UNIT] = p
        mlp.down_proj.weight[:, UNIT] = UNIT_WRITE * p
    return model


def planted_adapter(base: torch.nn.Module, folder: Path, gain: float) -> Path:
    """A rank-1 LoRA on layer 1's down_proj: A reads the planted unit, B writes
    ``gain · UNIT_WRITE · p`` (scale alpha/r = 1), so the merged down_proj writes
    (1 + gain)× the unit's p. ``gain = 0`` is the same adapter with B = 0: no effect."""
    cfg = LoRAConfig(r=1, alpha=1, target_modules=("down_proj",), layers=(UNIT_LAYER,))
    peft_model = make_lora(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name:
                param.zero_()
                param[0, UNIT] = 1.0
            elif "lora_B" in name:
                param.copy_((gain * UNIT_WRITE * planted_direction())[:, None])
    return save_lora_adapter(peft_model, folder)


def adapter_study(
    root: Path,
    base_dir: Path,
    adapter_dir: Path,
    corpus: Path,
    name: str,
    train_tokens: int = 500_000,
    train_seed: int = 0,
):
    """The tiny study with ``models.ft.source: adapter``, sized so every planted word fires
    often (~580 planted tokens of ~6,500) and the cross-coder sees ~75 passes; the
    diffing section is left out, so the defaults apply."""
    data = tiny_study_dict(base_dir, base_dir, corpus, root / name)
    data["models"]["ft"] = {"source": "adapter", "path": str(adapter_dir)}
    data["models"]["layer"] = COLLECT_LAYER
    data["corpus"]["n_tokens"] = 8192
    data["activations"]["shard_tokens"] = 4096
    data["training"].update(n_tokens=train_tokens, seed=train_seed)
    assert "diffing" not in data
    return load_config(data)


def write_corpus(path: Path, n_docs: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = [" ".join(rng.sample(TINY_SENTENCES, rng.randint(1, 3))) for _ in range(n_docs)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def latent_view(run_dir: Path, planted_ids: list[int]):
    """The run's latents table plus, per latent, the share of its activation mass on
    planted-word tokens and its decoder rows' cosine with p; and the true ratio of the
    fine-tuned to the base p component on planted tokens (from the stored activations)."""
    from mneme_core.collect.activations import ActivationStore
    from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
    from mneme_core.run.reader import open_run

    store = ActivationStore(run_dir / "activations")
    x_N2d = store.read()
    planted_N = torch.from_numpy(np.isin(store.token_ids, planted_ids))
    cc = BatchTopKCrossCoder.from_pretrained(run_dir / "crosscoder")
    with torch.no_grad():
        f_NF = cc.encode(x_N2d, use_threshold=True)
    mass_F = f_NF.sum(0)
    share_F = f_NF[planted_N].sum(0) / mass_F.clamp_min(1e-12)
    p = planted_direction()
    W_MFd = cc.W_dec.detach()
    latents = open_run(run_dir).latents.copy()
    latents["planted_share"] = share_F.numpy()
    latents["p_base"] = (W_MFd[0] @ p).numpy()
    latents["p_ft"] = (W_MFd[1] @ p).numpy()
    latents["cos_p"] = ((W_MFd[1] @ p) / W_MFd[1].norm(dim=-1).clamp_min(1e-12)).numpy()
    p_comp = (x_N2d[planted_N] @ p).mean(0)
    return latents, float(p_comp[1] / p_comp[0]), x_N2d


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted_lora")
    tok = tiny_tokenizer()
    base = planted_base(tok)
    base_dir = save_model(base, tok, root / "base")
    return {
        "root": root,
        "tok": tok,
        "base_dir": base_dir,
        "corpus": write_corpus(root / "corpus.jsonl"),
        "lora": planted_adapter(base, root / "lora", GAIN),
        "zero": planted_adapter(base, root / "zero", 0.0),
        "ids": tok.convert_tokens_to_ids(list(PLANTED_WORDS)),
    }


def test_the_planted_adapter_amplifies_p_on_the_planted_words_only(planted):
    """The construction does what the attribution test assumes, on the merged models."""
    tok, base_spec = planted["tok"], ModelSpec(path=str(planted["base_dir"]))
    base, _ = load_model(base_spec)
    ft, _ = load_model(ModelSpec(source="adapter", path=str(planted["lora"])), base_spec)
    zero, _ = load_model(ModelSpec(source="adapter", path=str(planted["zero"])), base_spec)
    batch = tok(TINY_SENTENCES, padding=True, return_tensors="pt")
    mask_BT = batch["attention_mask"].bool()
    with torch.inference_mode():
        h_base, h_ft, h_zero = (
            truncated_forward(m, batch["input_ids"], batch["attention_mask"], COLLECT_LAYER) for m in (base, ft, zero)
        )
    assert torch.equal(h_zero, h_base)  # B = 0 is exactly no change
    planted_BT = torch.isin(batch["input_ids"], torch.tensor(planted["ids"])) & mask_BT
    p = planted_direction()
    ratio = (h_ft[planted_BT] @ p) / (h_base[planted_BT] @ p)
    assert ratio.min() > 2.0, ratio  # p more than doubled on every planted word
    # Elsewhere the stream moves a few percent (layer 2's attention carries the planted
    # positions' change forward), far less than on any planted word. First tokens are
    # left out: collection drops them.
    later_BT = mask_BT & ~planted_BT
    later_BT[:, 0] = False
    rel_BT = (h_ft - h_base).norm(dim=-1) / h_base.norm(dim=-1)
    assert rel_BT[planted_BT].min() > 0.5, rel_BT[planted_BT]
    assert rel_BT[later_BT].median() < 0.05, rel_BT[later_BT].median()
    assert rel_BT[later_BT].max() < rel_BT[planted_BT].min() / 4, (rel_BT[later_BT].max(), rel_BT[planted_BT].min())


def test_planted_lora_is_attributed_amplified_in_the_latent_that_carries_it(planted):
    """collect → train → diff at the default diffing settings, ft = base + the adapter."""
    from mneme_core.run.pipeline import run_study

    cfg = adapter_study(planted["root"], planted["base_dir"], planted["lora"], planted["corpus"], "run_lora")
    run_dir = run_study(cfg, stages=["collect", "train", "diff"], progress=False)
    latents, true_ratio, _ = latent_view(run_dir, planted["ids"])
    labelled = latents["n_fires"] >= DiffingConfig().min_fires
    amplified = latents["attribution"] == "amplified"

    # the latent whose fine-tuned decoder row points most along p: it lives on the
    # planted words, its fine-tuned row carries more p than its base row, and it is
    # labelled amplified
    carrier = latents.loc[labelled].sort_values("cos_p", ascending=False).iloc[0]
    assert true_ratio > 2.0, true_ratio  # the stored activations carry the planted change
    assert carrier["cos_p"] > 0.6, carrier
    assert carrier["planted_share"] > 0.9, carrier
    assert carrier["p_ft"] > 1.5 * carrier["p_base"] > 0, carrier
    assert carrier["attribution"] == "amplified", carrier
    # every amplified latent lives on the planted words; nothing is suppressed
    assert (latents.loc[amplified, "planted_share"] > 0.9).all(), latents.loc[amplified]
    assert not (latents["attribution"] == "suppressed").any()
    # latents that fire on the planted words but not along p (the words' own, unchanged
    # embeddings) are not claimed: at most a few latents are amplified in all
    assert amplified.sum() <= 3, latents.loc[amplified]
    assert labelled.sum() >= 40  # the verdict is over most of the dictionary, not a few live latents


def test_the_same_adapter_with_b_zero_labels_nothing(planted):
    from mneme_core.collect.activations import ActivationStore
    from mneme_core.run.pipeline import run_study

    cfg = adapter_study(planted["root"], planted["base_dir"], planted["zero"], planted["corpus"], "run_zero")
    run_dir = run_study(cfg, stages=["collect", "train", "diff"], progress=False)
    x_N2d = ActivationStore(run_dir / "activations").read()
    assert torch.equal(x_N2d[:, 0], x_N2d[:, 1])  # the merged zero adapter is the base, bit for bit
    latents, _, _ = latent_view(run_dir, planted["ids"])
    assert (latents["attribution"] == "unchanged").all(), latents["attribution"].value_counts()
    assert (latents["n_fires"] >= DiffingConfig().min_fires).sum() >= 40
