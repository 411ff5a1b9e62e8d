"""Contexts stage: bounded top-k and histograms against brute force, planted latents."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _planted import BOS_LATENT, CONCEPTS, build_planted_run

from mneme_core.analysis.contexts import DoublingHistogram, SlotTable
from mneme_core.run.reader import open_run


def test_slot_table_keeps_the_k_largest_per_row_across_batches():
    rng = np.random.default_rng(0)
    F, K = 7, 5
    table = SlotTable(F, K, window=4)
    seen: dict[int, list[float]] = {j: [] for j in range(F)}
    tok = 0
    for _ in range(30):
        n = int(rng.integers(0, 40))
        lat = rng.integers(0, F, n)
        key = rng.random(n).astype(np.float32)
        toks = np.arange(tok, tok + n)
        tok += n
        rows, slots = table.admit(lat, key, toks, key)
        assert np.all(table.keys[rows, slots] > -np.inf)
        for j, k in zip(lat, key):
            seen[int(j)].append(float(k))
    for j in range(F):
        want = sorted(seen[j], reverse=True)[:K]
        got = sorted(table.keys[j][np.isfinite(table.keys[j])].tolist(), reverse=True)
        assert got == pytest.approx(want)
        # payloads travel with their keys
        finite = np.isfinite(table.keys[j])
        assert np.allclose(table.val[j][finite], table.keys[j][finite])


def test_doubling_histogram_is_exact():
    rng = np.random.default_rng(1)
    hist = DoublingHistogram(3, n_bins=10)
    values = {r: [] for r in range(3)}
    for step in range(20):
        lat = np.sort(rng.integers(0, 3, 50))
        val = rng.random(50) * (1.5**step) + 1e-3
        hist.add(lat, val)
        for r, v in zip(lat, val):
            values[int(r)].append(v)
    table = hist.table(np.arange(3))
    for r, row in table.iterrows():
        v = np.asarray(values[r])
        edges = np.asarray(row["edges"])
        assert edges[0] == 0 and edges[-1] >= v.max() and edges[-2] < v.max()
        # bins are [a, b) like ours except values landing exactly on an inner edge (none here)
        want, _ = np.histogram(v, bins=edges)
        assert list(row["counts"]) == want.tolist()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    run_path = tmp_path_factory.mktemp("ctx") / "run"
    cfg, metrics, arrays = build_planted_run(run_path, batch_size=200)
    return run_path, cfg, metrics, arrays


def _truth(arrays):
    tok, x, src, cc, names = arrays
    with torch.inference_mode():
        f = cc.encode(x, use_threshold=True).numpy()
    counted = src.token_ids != tok.bos_token_id
    return f, counted


def test_density_and_max_match_brute_force_and_bos_never_counts(planted):
    run_path, cfg, metrics, arrays = planted
    tok, x, src, cc, names = arrays
    f, counted = _truth(arrays)
    assert f[~counted, BOS_LATENT].min() > f[counted, BOS_LATENT].max()  # BOS would win if counted
    lat = open_run(run_path).latents
    np.testing.assert_allclose(lat["freq"], (f[counted] > 0).sum(0) / counted.sum(), rtol=1e-9)
    np.testing.assert_allclose(lat["max_act"], f[counted].max(0), rtol=1e-6)
    assert metrics["n_counted_tokens"] == int(counted.sum())
    hist = pd.read_parquet(run_path / "histograms.parquet")
    for _, row in hist.iterrows():
        assert sum(row["counts"]) == int((f[counted, row["latent"]] > 0).sum())


def test_windows_are_real_text_around_the_maximum(planted):
    run_path, cfg, metrics, arrays = planted
    tok, x, src, cc, names = arrays
    f, counted = _truth(arrays)
    ctx = open_run(run_path).contexts()
    assert set(ctx["latent"]) == set(range(len(names)))  # the two dead latents have none
    for latent, group in ctx.groupby("latent"):
        words = {" " + w for w in CONCEPTS[names[latent]]}
        top = group[group["kind"] == "top"]
        assert 1 <= len(top) <= cfg.contexts.top_n
        assert list(top["rank"]) == list(range(len(top)))
        assert top["max_act"].is_monotonic_decreasing
        assert top["max_act"].iloc[0] == pytest.approx(f[counted, latent].max(), rel=1e-6)
        for _, row in group.iterrows():
            acts, ids = np.asarray(row["acts"]), np.asarray(row["token_ids"])
            assert len(row["tokens"]) == len(acts) == len(ids) <= cfg.contexts.window
            marked = {row["tokens"][i] for i in np.nonzero(acts > 0)[0]}
            assert marked and marked <= words, (latent, marked)
            # the window is a contiguous piece of one document of the store
            if row["kind"] == "top":  # the centre is the window's maximum
                start = int(row["token_index"]) - int(np.argmax(acts))
                span = slice(start, start + len(ids))
                np.testing.assert_array_equal(ids, src.token_ids[span])
                assert len(set(src.doc_ids[span])) == 1
                truth = f[span, latent] * counted[span]  # BOS shows as text, never as activation
                np.testing.assert_allclose(acts, truth, rtol=2e-3, atol=2e-3)
        quant = group[group["kind"] == "quantile"]
        assert len(quant) >= cfg.contexts.n_quantiles
        assert set(quant["quantile"]) <= set(range(cfg.contexts.n_quantiles))


def test_random_windows_list_every_latent_active_in_them(planted):
    run_path, cfg, metrics, arrays = planted
    f, counted = _truth(arrays)
    tok, x, src, cc, names = arrays
    pool = pd.read_parquet(run_path / "random_contexts.parquet")
    assert len(pool) == cfg.contexts.n_random
    left = (3 * cfg.contexts.window) // 4
    for _, row in pool.iterrows():
        c = int(row["center"])
        lo, hi = max(0, c - left), c + cfg.contexts.window - left
        doc = src.doc_ids[c]
        in_doc = np.arange(lo, min(hi, len(src.doc_ids)))
        in_doc = in_doc[src.doc_ids[in_doc] == doc]
        truly = set(np.nonzero((f[in_doc] > 0) & counted[in_doc, None])[1].tolist())
        assert truly <= set(row["active_latents"])  # never a "negative" where the latent fired
    counts = pd.read_parquet(run_path / "token_counts.parquet")
    assert counts["count"].sum() == len(src.token_ids)


def test_run_stage_reads_the_store_and_gives_the_same_contexts(planted, tmp_path):
    from _planted import write_planted_store_run

    from mneme_core.analysis import contexts

    run_path, cfg_mem, _, _ = planted
    cfg, arrays = write_planted_store_run(tmp_path / "run", contexts={"batch_size": 200})
    metrics = contexts.run_stage(cfg, tmp_path / "run", progress=False)
    assert metrics["n_live_latents"] == 10 and metrics["n_tokens"] == len(arrays[1])
    got = open_run(tmp_path / "run").contexts()
    want = open_run(run_path).contexts()
    assert len(got) == len(want)
    for col in ("latent", "kind", "rank", "token_index"):
        assert got[col].tolist() == want[col].tolist()
    assert [list(t) for t in got["tokens"]] == [list(t) for t in want["tokens"]]
    np.testing.assert_allclose(got["max_act"], want["max_act"], rtol=1e-6)
    assert "shift" in open_run(tmp_path / "run").latents.columns  # diff columns survive the merge
