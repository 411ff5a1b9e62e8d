"""Paired activation collection and the sharded store, on two tiny real models."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import torchrun_cli
from tiny import save_model, tiny_llama, tiny_tokenizer

from mneme_core.collect.activations import (
    ActivationStore,
    StoreError,
    collect,
    run_stage,
)
from mneme_core.collect.corpus import excluded_token_ids, iter_contexts
from mneme_core.collect.models import ModelError, load_model_pair, truncated_forward
from mneme_core.common.config import load_config
from mneme_core.run.store import init_run, read_manifest

LAYER = 2


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dirs, tiny_corpus):
    """A study config on the shared tiny pair and corpus, collected once by the real stage."""
    root = tmp_path_factory.mktemp("acts")
    base, ft = tiny_model_dirs
    corpus = tiny_corpus
    cfg = load_config(
        {
            "name": "tiny",
            "run_dir": str(root / "run"),
            "models": {"base": {"path": str(base)}, "ft": {"path": str(ft)}, "layer": LAYER},
            "corpus": {"files": [str(corpus)], "n_tokens": 640, "context_length": 16},
            "activations": {"shard_tokens": 64, "batch_size": 3},
        }
    )
    init_run(cfg.run_path, cfg.to_dict())
    metrics = run_stage(cfg, cfg.run_path, progress=False)
    return cfg, metrics, ActivationStore(cfg.run_path / "activations")


def _collect(cfg, out, **kw):
    return collect(cfg.models, cfg.corpus, cfg.activations, out, progress=False, **kw)


def test_store_holds_both_models_residuals_of_kept_tokens(study):
    cfg, metrics, store = study
    pair = load_model_pair(cfg.models)
    contexts = list(iter_contexts(cfg.corpus, pair.tokenizer))
    x = torch.from_numpy(np.stack([c.input_ids for c in contexts]))
    m = torch.from_numpy(np.stack([c.attention_mask for c in contexts]))
    keep = torch.from_numpy(np.stack([c.keep for c in contexts]))
    keep &= torch.cumsum(keep.long(), 1) > 1  # the first kept token (attention sink) is dropped by default
    with torch.inference_mode():
        expected = torch.stack([truncated_forward(model, x, m, LAYER)[keep] for model in (pair.base, pair.ft)], dim=1)
    ids = x[keep].numpy()
    assert metrics["excluded_massive_tokens"] == 0  # a tiny random model has no massive activations
    assert metrics["excluded_first_tokens"] == len(contexts)
    assert store.n_tokens == metrics["n_tokens"] == len(expected) and store.d_model == 32 and store.layer == LAYER
    # shards interleave in context order here (one rank), so rows line up with the corpus
    torch.testing.assert_close(store.read(), expected.half().float())
    assert np.array_equal(store.token_ids, ids)
    assert not torch.equal(expected[:, 0], expected[:, 1])  # the fine-tune changed the residual
    assert len(store.shards) == 10 and store.index["dtype"] == "float16"


def test_excluded_tokens_absent_and_metadata_consistent(study):
    cfg, _, store = study
    tok = tiny_tokenizer()
    assert not np.isin(store.token_ids, excluded_token_ids(tok, True)).any()
    assert store.positions.min() >= 2  # position 0 is BOS, the first text token (a sink) is dropped too
    assert store.positions.max() < cfg.corpus.context_length
    assert len(store.doc_ids) == len(store.context_ids) == store.n_tokens
    assert (np.diff(store.context_ids) >= 0).all()


def test_norm_stats_match_the_data(study):
    _, _, store = study
    x = store.read().double()
    stats = store.norm_stats
    torch.testing.assert_close(stats["mean"].double(), x.mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stats["std"].double(), x.std(0, unbiased=False), atol=1e-5, rtol=1e-3)
    mean_norm = x.norm(dim=-1).mean(0)
    torch.testing.assert_close(stats["mean_norm"].double(), mean_norm, rtol=1e-4, atol=0)
    torch.testing.assert_close(stats["scale"].double(), 32**0.5 / mean_norm, rtol=1e-4, atol=0)


def test_iter_batches_order_shuffle_range_and_ranks(study):
    _, _, store = study
    x = store.read()
    seq = list(store.iter_batches(50, shuffle=False))
    assert [len(b) for b in seq[:-1]] == [50] * (len(seq) - 1) and seq[0].dtype == torch.float32
    torch.testing.assert_close(torch.cat(seq), x)
    shuf = torch.cat(list(store.iter_batches(50, shuffle=True, seed=3)))
    again = torch.cat(list(store.iter_batches(50, shuffle=True, seed=3)))
    assert torch.equal(shuf, again) and not torch.equal(shuf, x)
    key = lambda t: t[:, 0, 0] * 1e3 + t[:, 1, 1]  # noqa: E731 - a row fingerprint
    assert torch.equal(key(shuf).sort().values, key(x).sort().values)  # a permutation of the same rows
    part = torch.cat(list(store.iter_batches(64, shuffle=False, start=100, stop=300)))
    torch.testing.assert_close(part, x[100:300])
    # two ranks with batch 16 see, step by step, exactly one rank's batches of 32
    one = list(store.iter_batches(32, shuffle=True, seed=1))
    r0 = list(store.iter_batches(16, shuffle=True, seed=1, rank=0, world_size=2))
    r1 = list(store.iter_batches(16, shuffle=True, seed=1, rank=1, world_size=2))
    assert len(one) == len(r0) == len(r1)
    for a, b, c in zip(one, r0, r1):
        assert torch.equal(a, torch.cat([b, c]))


def test_resume_after_a_kill_keeps_finished_shards(study, tmp_path):
    cfg, _, reference = study
    out = tmp_path / "acts"

    def die_after_three(seq, _path):
        if seq == 2:
            raise KeyboardInterrupt  # what a Ctrl-C or kill mid-collection looks like to us

    with pytest.raises(KeyboardInterrupt):
        _collect(cfg, out, on_shard=die_after_three)
    finished = sorted(out.glob("shard-*.safetensors"))
    assert len(finished) == 3 and not (out / "index.json").exists()
    with pytest.raises(StoreError, match="did not finish"):
        ActivationStore(out)
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    recomputed = []
    metrics = _collect(cfg, out, on_shard=lambda seq, path: recomputed.append(seq))
    assert recomputed == list(range(3, 10))  # only the unfinished shards ran the models
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == stamps
    assert metrics["computed_tokens"] == 7 * 4 * 16  # 7 shards of 4 contexts of 16 tokens
    store = ActivationStore(out)
    assert torch.equal(store.read(), reference.read())
    assert np.array_equal(store.token_ids, reference.token_ids)
    # a finished store is not recomputed at all
    assert _collect(cfg, out, on_shard=lambda *a: pytest.fail("recomputed a finished store"))["computed_tokens"] == 0


def test_two_ranks_cover_the_same_tokens(study, tmp_path):
    cfg, _, reference = study
    out = tmp_path / "acts2"
    with pytest.raises(StoreError, match="rank 1 of 2 has not finished"):
        _collect(cfg, out, rank=0, world_size=2)
    _collect(cfg, out, rank=1, world_size=2)
    _collect(cfg, out, rank=0, world_size=2)  # rank 0's shards are reused; it writes the index
    store = ActivationStore(out)
    assert store.n_tokens == reference.n_tokens
    for ctx in (0, 1, 7):
        mine, ref = store.context_ids == ctx, reference.context_ids == ctx
        assert np.array_equal(store.token_ids[mine], reference.token_ids[ref])
        torch.testing.assert_close(store.read()[torch.from_numpy(mine)], reference.read()[torch.from_numpy(ref)])


def test_other_settings_into_the_same_folder_are_refused(study, tmp_path):
    cfg, _, _ = study
    out = tmp_path / "acts3"

    def stop(seq, _path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _collect(cfg, out, on_shard=stop)  # a partial collection with one shard
    other = dataclasses.replace(cfg.models, layer=1)
    with pytest.raises(StoreError, match="collected with other settings \\(models differ\\)"):
        collect(other, cfg.corpus, cfg.activations, out, progress=False)


def test_corrupt_or_missing_shard_is_a_clear_error(study, tmp_path):
    cfg, _, _ = study
    out = tmp_path / "acts4"
    shutil.copytree(cfg.run_path / "activations", out)
    shard = sorted(out.glob("shard-*.safetensors"))[4]
    shard.write_bytes(b"garbage" * 10)
    store = ActivationStore(out)
    with pytest.raises(StoreError, match=f"{shard.name} is unreadable.*re-run the collect stage"):
        list(store.iter_batches(64, shuffle=False))
    os.unlink(shard)
    with pytest.raises(StoreError, match=f"{shard.name} is missing"):
        store.read()
    with pytest.raises(StoreError, match="no activation store"):
        ActivationStore(tmp_path / "nowhere")


def test_collecting_again_remakes_only_the_shards_that_are_not_whole(study, tmp_path):
    """What the damaged-store messages advise works: collecting into the folder again
    recomputes a deleted shard and a garbled one, leaves the other shards' files alone, and
    gives the same store."""
    cfg, _, _ = study
    out = tmp_path / "acts-mend"
    shutil.copytree(cfg.run_path / "activations", out)
    reference = ActivationStore(out).read()
    shards = sorted(out.glob("shard-*.safetensors"))
    gone, garbled, kept = shards[1], shards[4], shards[0]
    kept_inode = kept.stat().st_ino
    os.unlink(gone)
    garbled.write_bytes(b"garbage" * 10)
    metrics = _collect(cfg, out)
    assert metrics["computed_tokens"] > 0 and gone.is_file()
    assert kept.stat().st_ino == kept_inode  # a whole shard is not rewritten
    torch.testing.assert_close(ActivationStore(out).read(), reference)
    assert _collect(cfg, out)["computed_tokens"] == 0  # whole again: nothing to do
    (out / "index.json").write_text("{not json")
    assert _collect(cfg, out)["computed_tokens"] == 0  # a damaged index is rebuilt from the shards
    torch.testing.assert_close(ActivationStore(out).read(), reference)
    stats = ActivationStore(out).norm_stats
    (out / "norm_stats.safetensors").unlink()
    assert _collect(cfg, out)["computed_tokens"] == 0  # and so are the normalisation statistics
    for key, value in ActivationStore(out).norm_stats.items():
        torch.testing.assert_close(value, stats[key])


def test_mismatched_models_fail_before_any_shard(study, tmp_path):
    cfg, _, _ = study
    tok = tiny_tokenizer()
    wide = save_model(tiny_llama(tok, hidden_size=48), tok, tmp_path / "wide")
    bad = dataclasses.replace(cfg.models, ft=dataclasses.replace(cfg.models.ft, path=str(wide)))
    with pytest.raises(ModelError, match="hidden sizes differ"):
        collect(bad, cfg.corpus, cfg.activations, tmp_path / "acts5", progress=False)
    assert not list((tmp_path / "acts5").glob("shard-*"))


def test_stage_records_provenance_and_metrics(study):
    cfg, metrics, _ = study
    prov = read_manifest(cfg.run_path)["provenance"]
    kinds = sorted(p["kind"] for p in prov)
    assert kinds == ["corpus", "model", "model"]
    assert metrics["layer"] == LAYER and metrics["computed_tokens"] > 0 and metrics["tokens_per_s"] > 0


def test_reuse_base_halves_from_an_earlier_collection(study, tmp_path):
    """A second intervention on the same base only runs its own model (demo: two RMU runs)."""
    cfg, _, reference = study
    donor = cfg.run_path / "activations"
    # "fine-tuned" = the base itself, so a correct reuse gives identical halves
    same = dataclasses.replace(cfg.models, ft=cfg.models.base)
    act = dataclasses.replace(cfg.activations, reuse_base_from=str(donor))
    metrics = collect(same, cfg.corpus, act, tmp_path / "second", progress=False)
    store = ActivationStore(tmp_path / "second")
    x, ref = store.read(), reference.read()
    assert metrics["reused_base_tokens"] == store.n_tokens == reference.n_tokens
    assert torch.equal(x[:, 0], ref[:, 0]) and torch.equal(x[:, 1], x[:, 0])
    # the real fine-tuned model on the donor's tokens: exactly the first collection
    metrics = collect(cfg.models, cfg.corpus, act, tmp_path / "again", progress=False)
    assert metrics["reused_base_tokens"] == reference.n_tokens
    assert torch.equal(ActivationStore(tmp_path / "again").read(), ref)
    other_layer = dataclasses.replace(same, layer=1)
    with pytest.raises(StoreError, match="different base model, corpus, layer or settings \\(models differ\\)"):
        collect(other_layer, cfg.corpus, act, tmp_path / "third", progress=False)


def test_torchrun_two_ranks_collect_the_same_activations_through_the_cli(study, tmp_path):
    """The README's command, ``torchrun --nproc_per_node 2 -m mneme_core.cli collect STUDY.yaml``
    (two gloo ranks on the CPU): the stage joins the process group itself, each rank collects its contexts, and
    rank 0 writes the index only after the other rank finished (no barrier, and rank 0 would
    find rank 1's shards missing whenever it finished first)."""
    from mneme_core.common.config import dump_config

    cfg, _, reference = study
    study_file = tmp_path / "study.yaml"
    study_file.write_text(dump_config(dataclasses.replace(cfg, run_dir=str(tmp_path / "run"))))
    proc = torchrun_cli(["collect", str(study_file)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    store = ActivationStore(tmp_path / "run" / "activations")
    assert {s["rank"] for s in store.shards} == {0, 1} and store.n_tokens == reference.n_tokens
    order = lambda s: np.argsort(s.context_ids * 10_000 + s.positions, kind="stable")  # noqa: E731
    ours, theirs = store.read()[order(store)], reference.read()[order(reference)]
    if torch.cuda.is_available():  # the reference ran on the GPU: the same up to its arithmetic
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-2, atol=1e-2)
    else:
        assert torch.equal(ours, theirs)
    assert read_manifest(tmp_path / "run")["stages"]["collect"]["status"] == "complete"


def test_massive_activation_tokens_are_dropped_by_the_base_norm_and_counted(study, tmp_path):
    """A token whose base residual is ~1000× the others (an attention sink, planted by
    blowing up its embedding in both models) never reaches the store; the count is in
    the index and the stage metrics; a fine-tune that grows a token's norm is kept."""
    from mneme_core.collect.activations import massive_token_mask

    cfg, _, reference = study
    tok = tiny_tokenizer()
    pair = load_model_pair(cfg.models)
    sink = int(np.bincount(reference.token_ids).argmax())  # a frequent token
    for model, name in ((pair.base, "base"), (pair.ft, "ft")):
        with torch.no_grad():
            model.get_input_embeddings().weight[sink] *= 1000.0
        save_model(model, tok, tmp_path / name)
    models = dataclasses.replace(
        cfg.models,
        base=dataclasses.replace(cfg.models.base, path=str(tmp_path / "base")),
        ft=dataclasses.replace(cfg.models.ft, path=str(tmp_path / "ft")),
    )
    metrics = collect(models, cfg.corpus, cfg.activations, tmp_path / "acts", progress=False)
    store = ActivationStore(tmp_path / "acts")
    n_sink = int((reference.token_ids == sink).sum())
    assert n_sink > 0 and not (store.token_ids == sink).any()
    assert metrics["excluded_massive_tokens"] == store.index["excluded_tokens"]["massive"] >= n_sink
    assert store.n_tokens == reference.n_tokens - metrics["excluded_massive_tokens"]
    # the rule: first kept positions, then base norm > m × median; the fine-tuned norm is never read
    norms = torch.tensor([[1.0, 1.0, 50.0, 1.0, 1.0, 1.0]])
    keep = torch.tensor([[False, True, True, True, True, True]])
    drop, counts = massive_token_mask(norms, keep, skip_first=1, multiple=10.0)
    assert drop.tolist() == [[False, True, True, False, False, False]] and counts == {"first": 1, "massive": 1}
    drop, counts = massive_token_mask(norms, keep, skip_first=0, multiple=0.0)
    assert not drop.any() and counts == {"first": 0, "massive": 0}


def test_a_bfloat16_forward_pass_collects_the_float32_activations_to_bfloat16_precision(study, tmp_path):
    """``activations.forward_dtype`` runs the models in bf16 while collecting: the same
    tokens, activations within bf16's rounding of the float32 ones; a collection begun in
    one precision does not resume in the other."""
    cfg, _, store = study
    act = dataclasses.replace(cfg.activations, forward_dtype="bfloat16")
    metrics = collect(cfg.models, cfg.corpus, act, tmp_path / "bf16", progress=False)
    bf16 = ActivationStore(tmp_path / "bf16")
    assert metrics["n_tokens"] == store.n_tokens and np.array_equal(bf16.token_ids, store.token_ids)
    a, b = bf16.read(), store.read()
    for m in range(2):
        rel = float((a[:, m] - b[:, m]).norm() / b[:, m].norm())
        assert 1e-4 < rel < 0.02, (m, rel)  # really computed in bf16 (~3 significant digits), and close
    with pytest.raises(StoreError, match="other settings"):
        collect(cfg.models, cfg.corpus, cfg.activations, tmp_path / "bf16", progress=False)
