"""The layer-L hook of causal confirmation on the tiny real models: it changes layer L's
output by exactly the intended edit, leaves every other layer's input alone, is a no-op for an
empty latent set (bit for bit), and is gone once its block ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mneme_core.analysis.latent_edit import (
    LatentEdit,
    PrefixCache,
    code_mass,
    edit_mask,
    intervene,
    paired_codes,
)
from mneme_core.benchmarks.mc_runner import MCItem, score_questions
from mneme_core.collect.models import decoder_layers, load_model, truncated_forward
from mneme_core.common.config import ModelSpec
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

LAYER = 2


@pytest.fixture(scope="module")
def pair(tiny_model_dirs):
    base, tok = load_model(ModelSpec(path=str(tiny_model_dirs[0])))
    ft, _ = load_model(ModelSpec(path=str(tiny_model_dirs[1])))
    return base, ft, tok


@pytest.fixture(scope="module")
def crosscoder():
    cc = BatchTopKCrossCoder(32, 64, k=4, seed=3)
    with torch.no_grad():
        cc.threshold.fill_(0.0)  # calibrated: a per-token code, independent of the batch
        cc.norm_scale.fill_(1.7)  # not 1, so a missing raw-space conversion shows
    return cc.eval()


def _ids(tok) -> torch.Tensor:
    texts = ["the cat sat on the mat and looked at the dog", "birds fly over the green hills in spring"]
    rows = [tok(t)["input_ids"][:8] for t in texts]
    return torch.tensor(rows)


def _ablation(cc: BatchTopKCrossCoder, latents: tuple[int, ...], side: int = 0, multiple: float = 0.0) -> LatentEdit:
    rows = -cc.W_dec.detach()[side, list(latents)] / cc.norm_scale[side]
    return LatentEdit(cc, latents, rows, side=side, skip_first=1, massive_multiple=multiple)


def _layer_inputs(model, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The hidden state entering every decoder layer and the final norm, and the logits."""
    seen: list[torch.Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
        for m in [*decoder_layers(model), model.model.norm]
    ]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def _no_hooks_left(model) -> bool:
    modules = [model, model.model, *decoder_layers(model)]
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def test_empty_set_is_bit_for_bit_the_plain_model(pair, crosscoder):
    base, ft, tok = pair
    ids = _ids(tok)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        with intervene(base, LAYER, _ablation(crosscoder, ()), ft):
            hooked = base(input_ids=ids).logits
    assert torch.equal(plain, hooked)
    assert _no_hooks_left(base)


def test_only_layer_l_output_changes_and_by_the_intended_edit(pair, crosscoder):
    base, ft, tok = pair
    ids = _ids(tok)
    latents = (3, 7, 11, 20, 41)
    plain_inputs, plain_logits = _layer_inputs(base, ids)
    ft_before = ft(input_ids=ids).logits.detach()
    with intervene(base, LAYER, _ablation(crosscoder, latents), ft):
        hooked_inputs, hooked_logits = _layer_inputs(base, ids)
    for i in range(LAYER + 1):  # the embeddings and layers 0..L-1 feed layers 0..L: untouched
        assert torch.equal(plain_inputs[i], hooked_inputs[i]), f"input of layer {i} changed"
    # reference: the paired clean activations at L, encoded, the chosen latents' base rows removed
    with torch.no_grad():
        x_b = truncated_forward(base, ids, None, LAYER)
        x_f = truncated_forward(ft, ids, None, LAYER)
        f = paired_codes(crosscoder, x_b.reshape(-1, 32), x_f.reshape(-1, 32)).reshape(*ids.shape, -1)
        delta = -(f[..., list(latents)] @ crosscoder.W_dec[0, list(latents)]) / crosscoder.norm_scale[0]
    delta[:, 0] = 0  # position 0 (skip_first = 1) is never edited
    assert delta.abs().max() > 1e-2, "the chosen latents must fire, or this test proves nothing"
    torch.testing.assert_close(hooked_inputs[LAYER + 1], x_b + delta, atol=1e-5, rtol=1e-5)
    assert torch.equal(hooked_inputs[LAYER + 1][:, 0], plain_inputs[LAYER + 1][:, 0])
    assert not torch.allclose(hooked_logits, plain_logits)
    assert torch.equal(ft(input_ids=ids).logits, ft_before)  # the partner ran clean and is unchanged
    assert _no_hooks_left(base) and _no_hooks_left(ft)
    assert torch.equal(base(input_ids=ids).logits, plain_logits)  # gone after the block


def test_hooks_are_removed_when_the_forward_fails(pair, crosscoder):
    base, ft, tok = pair
    with pytest.raises(RuntimeError), intervene(base, LAYER, _ablation(crosscoder, (3,)), ft):
        raise RuntimeError("scoring failed")
    assert _no_hooks_left(base)


def test_restore_side_reads_the_partner_as_the_base_half(pair, crosscoder):
    """Hooking the fine-tuned model, the partner (base) fills the encoder's base half."""
    base, ft, tok = pair
    ids = _ids(tok)
    latents = (5, 9)
    rows = crosscoder.W_dec.detach()[0, list(latents)] / crosscoder.norm_scale[0]
    edit = LatentEdit(crosscoder, latents, rows, side=1, skip_first=1)
    with torch.no_grad():
        with intervene(ft, LAYER, edit, base):
            hooked_inputs, _ = _layer_inputs(ft, ids)
        x_b = truncated_forward(base, ids, None, LAYER)
        x_f = truncated_forward(ft, ids, None, LAYER)
        f = paired_codes(crosscoder, x_b.reshape(-1, 32), x_f.reshape(-1, 32)).reshape(*ids.shape, -1)
    delta = f[..., list(latents)] @ rows
    delta[:, 0] = 0
    assert delta.abs().max() > 1e-3, "the chosen latents must fire, or this test proves nothing"
    torch.testing.assert_close(hooked_inputs[LAYER + 1], x_f + delta, atol=1e-6, rtol=1e-5)


def test_edit_mask_skips_first_positions_and_massive_tokens():
    pos = torch.arange(6).expand(2, 6)
    norms = torch.ones(2, 6)
    norms[1, 3] = 50.0
    mask = edit_mask(pos, norms, skip_first=1, multiple=10.0)
    assert not mask[:, 0].any() and not mask[1, 3] and int(mask.sum()) == 9
    assert edit_mask(pos, norms, skip_first=0, multiple=0.0).all()


def test_code_mass_sums_the_codes_of_the_tokens_the_hook_edits(pair, crosscoder):
    base, ft, tok = pair
    seqs = [tok("the cat sat on the mat")["input_ids"], tok("a dog ran")["input_ids"]]
    mass = code_mass(crosscoder, base, ft, LAYER, seqs, skip_first=1, batch_size=2, pad_id=tok.pad_token_id)
    expected = torch.zeros(crosscoder.n_latents, dtype=torch.float64)
    with torch.no_grad():
        for seq in seqs:  # one at a time: no padding to get wrong
            ids = torch.tensor([seq])
            x_b, x_f = (truncated_forward(m, ids, None, LAYER)[0, 1:] for m in (base, ft))
            expected += paired_codes(crosscoder, x_b, x_f).double().sum(0)
    torch.testing.assert_close(mass, expected, atol=1e-4, rtol=1e-4)


def _real_layer_calls(models) -> tuple[list[int], list]:
    """Forward calls per real decoder layer of ``models`` (counted by hooks on the real modules)."""
    counts: list[int] = []
    handles = []
    for model in models:
        for layer in decoder_layers(model):
            counts.append(0)
            i = len(counts) - 1
            handles.append(layer.register_forward_hook(lambda *_a, i=i: counts.__setitem__(i, counts[i] + 1)))
    return counts, handles


@pytest.mark.parametrize("side", [0, 1])
def test_replayed_prefix_gives_the_edit_of_the_full_forward_and_runs_no_layer_up_to_l(pair, crosscoder, side):
    """With a PrefixCache the edited logits are the uncached ones, and a second forward of the
    same batch runs neither the partner nor the hooked model's layers 0..L."""
    base, ft, tok = pair
    ids = _ids(tok)
    model, partner = (base, ft) if side == 0 else (ft, base)
    edit = _ablation(crosscoder, (3, 7, 11, 20, 41), side=side)
    with torch.no_grad():
        with intervene(model, LAYER, edit, partner):
            full = model(input_ids=ids).logits
        prefix = PrefixCache(base, ft, LAYER)
        with intervene(model, LAYER, edit, partner, prefix):
            first = model(input_ids=ids).logits
        counts, handles = _real_layer_calls([base, ft])
        try:
            with intervene(model, LAYER, edit, partner, prefix):
                second = model(input_ids=ids).logits
        finally:
            for h in handles:
                h.remove()
    assert not torch.allclose(full, model(input_ids=ids).logits), "the edit must change the logits"
    torch.testing.assert_close(first, full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(second, full, atol=1e-6, rtol=1e-5)
    n = len(decoder_layers(base))
    own = counts[:n] if side == 0 else counts[n:]
    assert sum(counts[n:] if side == 0 else counts[:n]) == 0, "the partner ran"
    assert own[: LAYER + 1] == [0] * (LAYER + 1) and own[LAYER + 1 :] == [1] * (n - LAYER - 1)
    assert (prefix.misses, prefix.hits) == (1, 1)
    assert _no_hooks_left(model) and all(type(m).__name__ != "_Passthrough" for m in decoder_layers(model))


def test_replayed_prefix_scores_mc_questions_as_the_full_forward(pair, crosscoder):
    """Through the MC runner (packed options, a 4-D tree mask, its own position ids): the
    cached edit gives the same log-likelihoods as the uncached one, and a new batch is a miss."""
    base, ft, tok = pair
    items = [
        MCItem(q, choices, answer, "animals")
        for q, choices, answer in [
            ("the cat sat on the", ["mat", "dog and the hills", "spring", "green"], 0),
            ("birds fly over the", ["green hills", "cat", "mat of the dog", "sat"], 1),
            ("the dog looked at", ["the cat", "spring birds", "hills", "the mat on"], 2),
        ]
    ]
    edit = _ablation(crosscoder, (3, 7, 11, 20, 41))
    with intervene(base, LAYER, edit, ft):
        full = score_questions(base, tok, items, batch_size=2, packing="tree", progress=False)
    prefix = PrefixCache(base, ft, LAYER)
    for _ in range(2):
        with intervene(base, LAYER, edit, ft, prefix):
            cached = score_questions(base, tok, items, batch_size=2, packing="tree", progress=False)
        for a, b in zip(full["logliks"], cached["logliks"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert (prefix.misses, prefix.hits) == (2, 2)  # two batches, each computed once


def test_replayed_prefix_puts_the_real_layers_back_when_the_forward_fails(pair, crosscoder):
    base, ft, tok = pair
    originals = list(decoder_layers(base))
    prefix = PrefixCache(base, ft, LAYER)
    with pytest.raises(RuntimeError), intervene(base, LAYER, _ablation(crosscoder, (3,)), ft, prefix):
        base(input_ids=_ids(tok))
        raise RuntimeError("scoring failed")
    assert list(decoder_layers(base)) == originals and _no_hooks_left(base)


def test_a_forward_that_fails_after_layer_l_does_not_poison_the_cache(pair, crosscoder):
    """A forward that dies in a layer after L (say out of memory) and is caught inside the
    block: the next batch must still be computed from the real layers 0..L."""
    base, ft, tok = pair
    ids = _ids(tok)
    other = ids.flip(-1)
    edit = _ablation(crosscoder, (3, 7, 11, 20, 41))
    with torch.no_grad(), intervene(base, LAYER, edit, ft):
        want = base(input_ids=other).logits
    fail = [True]

    def boom(*_a):
        if fail[0]:
            fail[0] = False
            raise MemoryError("simulated")

    prefix = PrefixCache(base, ft, LAYER)
    assert prefix.can_swap(base)  # checked before the failure is armed
    handle = decoder_layers(base)[LAYER + 1].register_forward_pre_hook(boom)
    try:
        with torch.no_grad(), intervene(base, LAYER, edit, ft, prefix):
            with pytest.raises(MemoryError):
                base(input_ids=ids)
            got = base(input_ids=other).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_replayed_prefix_scores_a_bfloat16_model(tiny_model_dirs, crosscoder):
    """bfloat16 models get a bfloat16 packed-option mask; the cache key must read it."""
    base, tok = load_model(ModelSpec(path=str(tiny_model_dirs[0]), dtype="bfloat16"))
    ft, _ = load_model(ModelSpec(path=str(tiny_model_dirs[1]), dtype="bfloat16"))
    items = [MCItem("the cat sat on the", ("mat", "dog and the hills", "spring", "green"), 0, "animals")]
    edit = _ablation(crosscoder, (3, 7, 11, 20, 41))
    with intervene(base, LAYER, edit, ft):
        full = score_questions(base, tok, items, packing="tree", progress=False)
    prefix = PrefixCache(base, ft, LAYER)
    with intervene(base, LAYER, edit, ft, prefix):
        cached = score_questions(base, tok, items, packing="tree", progress=False)
    np.testing.assert_allclose(full["logliks"][0], cached["logliks"][0], rtol=1e-2, atol=1e-2)
    assert prefix.misses == 1
