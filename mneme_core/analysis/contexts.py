"""The contexts stage: where each latent fires, in windows of text a person can read.

One streaming pass of the analysis tokens through the cross-coder in threshold mode.
The tokens come from the run's activation store, not from re-running the two language
models: the store *is* the pair of residual streams of both models for those tokens
(same inputs, same layer), stored with their token ids, document ids and positions, so
re-running the models would recompute the same numbers at far greater cost.

Per latent, memory bounded whatever the corpus size (nothing is kept per token):

- **top windows**: a fixed-size slot table of the strongest activations, at most one
  candidate per latent per contiguous text segment per batch (so the top windows are
  different examples, not neighbouring tokens of one), merged batch by batch;
- **quantile samples**: a uniform random sample of the latent's activations (bottom-k
  sampling: each activation gets a random key, the largest keys are kept — the same slot
  merge as the top windows), split at the end into equal-count activation quantiles;
- **density** (fraction of counted tokens where the latent fires) and an exact
  **histogram** of non-zero activations on edges 0..U, where U doubles (merging bin
  pairs, which is exact) whenever a larger activation arrives.

A window's per-token activations are read from the sparse codes of the neighbouring
batches, kept one batch behind, so no second pass is needed. BOS, pad, EOS and chat
control tokens (the tokenizer's special tokens) never count: not as maxima, not in the
density. The store already leaves them out of the activations it keeps when
``corpus.exclude_control_tokens`` is set; the filter here covers stores made without it.

Outputs: ``contexts.parquet`` and ``histograms.parquet`` (the run directory: docs/ARCHITECTURE.md), ``token_counts.parquet``
(corpus frequency of every token, for the offline explainer), ``random_contexts.parquet``
(random windows with the latents active in them: non-activating examples for scorers),
and latents columns ``freq`` (density) and ``max_act``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from mneme_core.common.atomic import atomic_path, write_parquet
from mneme_core.common.config import ContextsConfig, StudyConfig
from mneme_core.run.store import merge_latent_columns, read_manifest

ROW_GROUP = 8192


# --------------------------------------------------------------------------- slot tables


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    idx = np.arange(len(groups))
    starts = np.r_[True, groups[1:] != groups[:-1]] if len(groups) else np.zeros(0, bool)
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


class SlotTable:
    """For each of F rows, the K entries with the largest keys seen so far.

    Slots are unordered: survivors never move, newcomers take the slots of the entries
    they beat, so payloads filled later (window activations) stay attached to their slot.
    """

    def __init__(self, n_rows: int, k: int, window: int):
        self.k = k
        self.keys = np.full((n_rows, k), -np.inf, dtype=np.float32)
        self.tok = np.full((n_rows, k), -1, dtype=np.int64)
        self.val = np.zeros((n_rows, k), dtype=np.float32)
        self.lo = np.zeros((n_rows, k), dtype=np.int16)
        self.hi = np.zeros((n_rows, k), dtype=np.int16)
        self.acts = np.zeros((n_rows, k, window), dtype=np.float16)

    def admit(
        self, lat: np.ndarray, key: np.ndarray, tok: np.ndarray, val: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Offer candidates; returns (rows, slots) of those admitted."""
        if not len(lat):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        order = np.lexsort((-key, lat))
        lat, key, tok, val = lat[order], key[order], tok[order], val[order]
        rank = _rank_within(lat)
        keep = rank < self.k
        lat, key, tok, val, rank = lat[keep], key[keep], tok[keep], val[keep], rank[keep]
        u, inv = np.unique(lat, return_inverse=True)
        c = int(rank.max()) + 1
        cand = np.full((len(u), c), -np.inf, dtype=np.float32)
        cand[inv, rank] = key
        cand_ix = np.full((len(u), c), -1, dtype=np.int64)
        cand_ix[inv, rank] = np.arange(len(lat))
        comb = np.concatenate([self.keys[u], cand], axis=1)
        sel = np.argpartition(-comb, self.k - 1, axis=1)[:, : self.k]
        chosen = np.zeros(comb.shape, dtype=bool)
        np.put_along_axis(chosen, sel, True, axis=1)
        won = chosen[:, self.k :] & np.isfinite(cand)
        freed_order = np.argsort(chosen[:, : self.k], axis=1, kind="stable")  # freed slots first
        won_order = np.argsort(~won, axis=1, kind="stable")  # winners first
        i, j = np.nonzero(np.arange(c)[None, :] < won.sum(1)[:, None])
        rows, slots, src = u[i], freed_order[i, j], cand_ix[i, won_order[i, j]]
        self.keys[rows, slots] = key[src]
        self.tok[rows, slots] = tok[src]
        self.val[rows, slots] = val[src]
        return rows, slots


class DoublingHistogram:
    """Exact per-row histograms of positive values on edges linspace(0, U, n_bins + 1),
    U a power of two that doubles (merging bin pairs) when a larger value arrives."""

    def __init__(self, n_rows: int, n_bins: int):
        self.nb = 2 * ((n_bins + 1) // 2)
        self.upper = np.zeros(n_rows, dtype=np.float64)
        self.counts = np.zeros((n_rows, self.nb), dtype=np.int64)

    def _double(self, rows: np.ndarray, times: int) -> None:
        c = self.counts[rows]
        for _ in range(min(times, int(math.log2(self.nb)) + 2)):
            half = c.reshape(len(rows), self.nb // 2, 2).sum(-1)
            c = np.concatenate([half, np.zeros_like(half)], axis=1)
        self.counts[rows] = c
        self.upper[rows] *= 2.0**times

    def add(self, lat: np.ndarray, val: np.ndarray) -> None:
        """``lat`` sorted ascending."""
        if not len(lat):
            return
        u, starts = np.unique(lat, return_index=True)
        batch_max = np.maximum.reduceat(val.astype(np.float64), starts)
        fresh = (self.upper[u] == 0) & (batch_max > 0)
        self.upper[u[fresh]] = 2.0 ** np.ceil(np.log2(batch_max[fresh]))
        grow = batch_max > self.upper[u]
        if grow.any():
            times = np.ceil(np.log2(batch_max[grow] / self.upper[u[grow]])).astype(int)
            for t in np.unique(times):
                self._double(u[grow][times == t], int(t))
        nb = self.nb
        b = np.minimum((val / self.upper[lat] * nb).astype(np.int64), nb - 1)
        flat, n = np.unique(lat * nb + b, return_counts=True)
        self.counts.reshape(-1)[flat] += n

    def table(self, rows: np.ndarray) -> pd.DataFrame:
        edges, counts = [], []
        for r in rows:
            c = self.counts[r]
            last = int(np.nonzero(c)[0].max()) + 1
            edges.append(np.linspace(0.0, self.upper[r] * last / self.nb, last + 1).tolist())
            counts.append(c[:last].tolist())
        return pd.DataFrame({"latent": rows.astype(np.int64), "edges": edges, "counts": counts})


# --------------------------------------------------------------------------- the pass


@dataclass
class TokenSource:
    """Token metadata for the streamed activations, indexable by global token index."""

    token_ids: np.ndarray
    doc_ids: np.ndarray
    positions: np.ndarray


class ContextCollector:
    """Streams sparse codes batch by batch; see the module docstring for what it keeps."""

    def __init__(
        self,
        n_latents: int,
        n_tokens: int,
        tokens: TokenSource,
        ccfg: ContextsConfig,
        special_ids: Iterable[int] = (),
        seed: int = 0,
    ):
        self.F, self.N = n_latents, n_tokens
        self.src = tokens
        self.cfg = ccfg
        self.W = ccfg.window
        self.left = (3 * ccfg.window) // 4
        self.right = ccfg.window - self.left - 1
        self.top = SlotTable(n_latents, ccfg.top_n + max(2, ccfg.top_n // 4), self.W)
        self.sample = SlotTable(n_latents, max(2 * ccfg.n_quantiles * ccfg.per_quantile, 8), self.W)
        self.hist = DoublingHistogram(n_latents, ccfg.hist_bins)
        self.count = np.zeros(n_latents, dtype=np.int64)
        self.n_counted = 0
        self.rng = np.random.default_rng(seed)
        self.special = np.asarray(sorted(set(int(i) for i in special_ids)), dtype=np.int64)
        # (start, dense codes, segment ids, counted mask) of the last three batches
        self._recent: list[tuple[int, torch.Tensor, np.ndarray, np.ndarray]] = []
        self._pending: list[tuple[SlotTable, np.ndarray, np.ndarray]] = []
        self._seg_carry = 0
        n_rand = min(ccfg.n_random, n_tokens)
        self.rand_centers = (
            np.sort(self.rng.choice(n_tokens, size=n_rand, replace=False)) if n_rand else np.zeros(0, np.int64)
        )
        self._rand_pairs: list[np.ndarray] = []

    # ---- helpers

    def _segments(self, start: int, stop: int) -> np.ndarray:
        """Segment id per token: a new segment where the document changes or the position
        stops increasing (a new packed context)."""
        doc = np.asarray(self.src.doc_ids[start:stop])
        pos = np.asarray(self.src.positions[start:stop])
        if start > 0:
            prev_doc, prev_pos = self.src.doc_ids[start - 1], self.src.positions[start - 1]
        else:
            prev_doc, prev_pos = doc[0] - 1, pos[0]
        new = np.r_[(doc[0] != prev_doc) or (pos[0] <= prev_pos), (doc[1:] != doc[:-1]) | (pos[1:] <= pos[:-1])]
        seg = self._seg_carry + np.cumsum(new)
        self._seg_carry = int(seg[-1])
        return seg

    def _fill(self) -> None:
        """Window activations for slots admitted one batch ago (their right context has
        now arrived). Read straight from the dense codes of the last three batches, and a
        window is cut where its text segment ends (segments are contiguous runs)."""
        if not self._pending:
            return
        base = self._recent[0][0]
        seg = np.concatenate([r[2] for r in self._recent])
        end = base + len(seg)
        for table, rows, slots in self._pending:
            center = table.tok[rows, slots]
            g = center[:, None] - self.left + np.arange(self.W)[None, :]
            inside = (g >= base) & (g < end)
            local = np.clip(g - base, 0, len(seg) - 1)
            valid = inside & (seg[local] == seg[center - base][:, None])
            # segments are contiguous, so the valid part of a window is one run around the centre
            n_left = valid[:, : self.left].sum(1)
            lo, hi = self.left - n_left, self.left + 1 + valid[:, self.left + 1 :].sum(1)
            acts = torch.zeros(g.shape, dtype=torch.float32)
            lat_t = torch.from_numpy(np.broadcast_to(rows[:, None], g.shape).copy())
            g_t = torch.from_numpy(g)
            for start, f_BF, _, counted in self._recent:
                sel = torch.from_numpy(valid & (g >= start) & (g < start + f_BF.shape[0]))
                if sel.any():
                    r = (g_t[sel] - start).to(f_BF.device)
                    vals = f_BF[r, lat_t[sel].to(f_BF.device)].float().cpu()
                    acts[sel] = vals * torch.from_numpy(counted)[g_t[sel] - start]
            table.acts[rows, slots] = acts.clamp(max=65000).numpy().astype(np.float16)
            table.lo[rows, slots] = lo
            table.hi[rows, slots] = hi
        self._pending = []

    # ---- public

    def update(self, start: int, f_BF: torch.Tensor) -> None:
        """Add the sparse codes of tokens ``start .. start + B``."""
        B = f_BF.shape[0]
        rows_t, lat_t = torch.nonzero(f_BF, as_tuple=True)
        val = f_BF[rows_t, lat_t].float().cpu().numpy()
        rows, lat = rows_t.cpu().numpy(), lat_t.cpu().numpy().astype(np.int64)
        ids = np.asarray(self.src.token_ids[start : start + B])
        counted = ~np.isin(ids, self.special) if len(self.special) else np.ones(B, bool)
        keep = counted[rows]
        rows, lat, val = rows[keep], lat[keep], val[keep]
        tok = start + rows.astype(np.int64)
        self.n_counted += int(counted.sum())
        self.count += np.bincount(lat, minlength=self.F)

        seg_B = self._segments(start, start + B)
        self._recent = (self._recent + [(start, f_BF, seg_B, counted)])[-3:]
        self._fill()

        order = np.argsort(lat, kind="stable")
        self.hist.add(lat[order], val[order])

        seg = seg_B[rows]
        o = np.lexsort((-val, seg, lat))
        first = np.r_[True, (lat[o][1:] != lat[o][:-1]) | (seg[o][1:] != seg[o][:-1])] if len(o) else np.zeros(0, bool)
        best = o[first]
        r, s = self.top.admit(lat[best], val[best], tok[best], val[best])
        self._pending.append((self.top, r, s))
        r, s = self.sample.admit(lat, self.rng.random(len(lat), dtype=np.float32), tok, val)
        self._pending.append((self.sample, r, s))

        if len(self.rand_centers):
            a = np.searchsorted(self.rand_centers, tok - self.right, side="left")
            b = np.searchsorted(self.rand_centers, tok + self.left, side="right")
            n = b - a
            if n.any():
                w = np.repeat(a, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
                self._rand_pairs.append(np.stack([w, np.repeat(lat, n)], 1))

    def finish(self) -> None:
        self._recent = self._recent[-2:]
        self._fill()


def stream_contexts(
    encode: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    collector: ContextCollector,
    *,
    progress: bool = True,
) -> None:
    """Feed (B, 2, d) activation batches, in store order, through ``encode`` into ``collector``."""
    bar = tqdm(
        total=collector.N, desc="contexts", unit="tok", unit_scale=True, disable=not progress, dynamic_ncols=True
    )
    start = 0
    with torch.inference_mode():
        for x_B2d in batches:
            B = min(x_B2d.shape[0], collector.N - start)
            if B <= 0:
                break
            collector.update(start, encode(x_B2d[:B]))
            start += B
            bar.update(B)
    bar.close()
    collector.finish()


# --------------------------------------------------------------------------- writing


class TokenDecoder:
    """Per-token strings, decoded once per token id, with the spacing the token has in
    running text.

    ``decode([i])`` alone drops a word-initial space for SentencePiece and word-level
    tokenizers, so a window would read "theviruswas". Decoding ``[ref, i]`` and cutting
    off the decoded ``ref`` keeps it (" virus") for every tokenizer family.
    """

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.cache: dict[int, str] = {}
        ref = tokenizer.encode("a", add_special_tokens=False)[:1]
        self.ref = ref
        self.ref_text = tokenizer.decode(ref) if ref else ""

    def _decode(self, ids: list[int]) -> list[str]:
        if not self.ref:
            return [self.tok.decode([i]) for i in ids]
        pairs = self.tok.batch_decode([self.ref + [i] for i in ids])
        return [
            p[len(self.ref_text) :] if p.startswith(self.ref_text) else self.tok.decode([i]) for i, p in zip(ids, pairs)
        ]

    def strings(self, ids: np.ndarray) -> pa.Array:
        uniq, inv = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        missing = [i for i in uniq.tolist() if i not in self.cache]
        self.cache.update(zip(missing, self._decode(missing)))
        return pa.array([self.cache[i] for i in uniq.tolist()], type=pa.string()).take(pa.array(inv.ravel()))


def _list(values: pa.Array, lengths: np.ndarray) -> pa.Array:
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _select_top(t: SlotTable, rows: np.ndarray, top_n: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, slot, rank) of each latent's best windows, strongest first; a window whose
    centre lies inside a stronger kept window of the same latent is dropped."""
    keys = t.keys[rows]
    order = np.argsort(-keys, axis=1, kind="stable")
    k_sorted = np.take_along_axis(keys, order, 1)
    tok = np.take_along_axis(t.tok[rows], order, 1)
    near = np.abs(tok[:, :, None] - tok[:, None, :]) < window
    earlier = np.tril(np.ones((t.k, t.k), bool), -1)  # [i, j]: j ranks above i
    dup = (near & earlier[None] & np.isfinite(k_sorted)[:, None, :]).any(2)
    ok = np.isfinite(k_sorted) & ~dup
    rank = np.cumsum(ok, axis=1) - 1
    ok &= rank < top_n
    i, j = np.nonzero(ok)
    return rows[i], order[i, j], rank[i, j]


def _select_quantiles(t: SlotTable, rows: np.ndarray, n_q: int, per_q: int) -> tuple[np.ndarray, ...]:
    """(row, slot, rank, quantile): from each latent's random sample, ``per_q`` examples
    spread evenly through each of ``n_q`` equal-count activation quantiles."""
    keys, vals = t.keys[rows], np.where(np.isfinite(t.keys[rows]), t.val[rows], np.inf)
    order = np.argsort(vals, axis=1, kind="stable")
    n_valid = np.isfinite(keys).sum(1)
    q = np.repeat(np.arange(n_q), per_q)
    frac = (q + (np.tile(np.arange(per_q), n_q) + 0.5) / per_q) / n_q
    pick = np.floor(frac[None, :] * n_valid[:, None]).astype(np.int64)
    ok = (np.diff(pick, axis=1, prepend=-1) > 0) & (n_valid[:, None] > 0)  # pick is non-decreasing
    rank = np.cumsum(ok, axis=1) - 1
    i, j = np.nonzero(ok)
    slot = np.take_along_axis(order, np.minimum(pick, t.k - 1), 1)[i, j]
    return rows[i], slot, rank[i, j], q[j]


def write_contexts(path: Path, col: ContextCollector, decoder: TokenDecoder, chunk: int = 4096) -> int:
    """Write ``contexts.parquet`` chunk by chunk (bounded memory); returns the row count."""
    cfg = col.cfg
    schema = pa.schema(
        [
            ("latent", pa.int64()),
            ("kind", pa.string()),
            ("rank", pa.int32()),
            ("quantile", pa.int32()),
            ("tokens", pa.list_(pa.string())),
            ("token_ids", pa.list_(pa.int64())),
            ("acts", pa.list_(pa.float32())),
            ("max_act", pa.float32()),
            ("token_index", pa.int64()),
            ("source", pa.string()),
        ]
    )
    live = np.nonzero(col.count > 0)[0]
    n_rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for c0 in range(0, len(live), chunk):
            rows = live[c0 : c0 + chunk]
            r_t, s_t, rank_t = _select_top(col.top, rows, cfg.top_n, col.W)
            r_q, s_q, rank_q, quant_q = _select_quantiles(col.sample, rows, cfg.n_quantiles, cfg.per_quantile)
            lat = np.concatenate([r_t, r_q])
            kind_code = np.r_[np.zeros(len(r_t), np.int64), np.ones(len(r_q), np.int64)]
            rank = np.concatenate([rank_t, rank_q])
            quant = np.concatenate([np.full(len(r_t), -1), quant_q])

            def gather(name: str) -> np.ndarray:
                return np.concatenate([getattr(col.top, name)[r_t, s_t], getattr(col.sample, name)[r_q, s_q]])

            order = np.lexsort((rank, kind_code, lat))
            lat, kind_code, rank, quant = lat[order], kind_code[order], rank[order], quant[order]
            tok = gather("tok")[order]
            lo = gather("lo").astype(np.int64)[order]
            hi = gather("hi").astype(np.int64)[order]
            acts_W = gather("acts").astype(np.float32)[order]
            lengths = hi - lo
            total = int(lengths.sum())
            owner = np.repeat(np.arange(len(lat)), lengths)
            offset = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            col_ix = lo[owner] + offset
            g = tok[owner] - col.left + col_ix
            ids = np.asarray(col.src.token_ids[g]).astype(np.int64)
            acts = acts_W[owner, col_ix]
            centre = col_ix == col.left  # the slot's own activation, exact (the rest is float16)
            acts[centre] = gather("val")[order][owner[centre]]
            max_act = np.zeros(len(lat), np.float32)
            np.maximum.at(max_act, owner, acts)
            docs = np.asarray(col.src.doc_ids[tok])
            posn = np.asarray(col.src.positions[tok])
            batch = pa.record_batch(
                [
                    pa.array(lat, pa.int64()),
                    pa.array(np.array(["top", "quantile"])[kind_code]),
                    pa.array(rank, pa.int32()),
                    pa.array(quant, pa.int32()),
                    _list(decoder.strings(ids), lengths),
                    _list(pa.array(ids), lengths),
                    _list(pa.array(acts, pa.float32()), lengths),
                    pa.array(max_act),
                    pa.array(tok, pa.int64()),
                    pa.array([f"doc {d} pos {p}" for d, p in zip(docs.tolist(), posn.tolist())]),
                ],
                schema=schema,
            )
            writer.write_table(pa.Table.from_batches([batch]), row_group_size=ROW_GROUP)
            n_rows += len(lat)
    return n_rows


def write_random_contexts(path: Path, col: ContextCollector, decoder: TokenDecoder) -> None:
    """The random windows with every latent active anywhere in them."""
    pairs = np.concatenate(col._rand_pairs) if col._rand_pairs else np.zeros((0, 2), np.int64)
    active = [np.unique(pairs[pairs[:, 0] == w, 1]).tolist() for w in range(len(col.rand_centers))]
    tokens, ids_out = [], []
    for c in col.rand_centers.tolist():
        a, b = max(0, c - col.left), min(col.N, c + col.right + 1)
        doc = np.asarray(col.src.doc_ids[a:b])
        ids = np.asarray(col.src.token_ids[a:b])[doc == col.src.doc_ids[c]].astype(np.int64)
        ids_out.append(ids.tolist())
        tokens.append(decoder.strings(ids).to_pylist() if len(ids) else [])
    write_parquet(
        path,
        pd.DataFrame(
            {
                "center": col.rand_centers.astype(np.int64),
                "tokens": tokens,
                "token_ids": ids_out,
                "active_latents": active,
            }
        ),
    )


def write_token_counts(
    path: Path, token_ids: np.ndarray, n_tokens: int, decoder: TokenDecoder, chunk: int = 1 << 22
) -> None:
    counts = np.zeros(0, np.int64)
    for s in range(0, n_tokens, chunk):
        c = np.bincount(np.asarray(token_ids[s : min(n_tokens, s + chunk)]).astype(np.int64))
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[: len(c)] += c
    ids = np.nonzero(counts)[0]
    write_parquet(
        path,
        pd.DataFrame(
            {"token_id": ids.astype(np.int64), "token": decoder.strings(ids).to_pylist(), "count": counts[ids]}
        ),
    )


def special_token_ids(tokenizer: Any) -> set[int]:
    """BOS/EOS/pad and every added token marked special (chat-template control tokens)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def collect_run_contexts(
    encode: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    tokens: TokenSource,
    n_latents: int,
    n_tokens: int,
    tokenizer: Any,
    run_path: Path,
    ccfg: ContextsConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Everything the stage does, on any encoder and batch source (tests plant latents here)."""
    t0 = time.perf_counter()
    col = ContextCollector(n_latents, n_tokens, tokens, ccfg, special_token_ids(tokenizer), seed=seed)
    stream_contexts(encode, batches, col, progress=progress)
    t_stream = time.perf_counter() - t0
    decoder = TokenDecoder(tokenizer)
    n_rows = write_contexts(run_path / "contexts.parquet", col, decoder)
    live = np.nonzero(col.count > 0)[0]
    write_parquet(run_path / "histograms.parquet", col.hist.table(live), row_group_size=ROW_GROUP)
    write_random_contexts(run_path / "random_contexts.parquet", col, decoder)
    write_token_counts(run_path / "token_counts.parquet", tokens.token_ids, n_tokens, decoder)
    max_act = np.where(col.count > 0, col.top.keys.max(1), 0.0).astype(np.float64)
    merge_latent_columns(
        run_path,
        pd.DataFrame(
            {
                "latent": np.arange(n_latents, dtype=np.int64),
                "freq": col.count / max(col.n_counted, 1),
                "max_act": max_act,
            }
        ),
    )
    return {
        "n_tokens": int(n_tokens),
        "n_counted_tokens": int(col.n_counted),
        "n_latents": int(n_latents),
        "n_live_latents": int(len(live)),
        "n_context_rows": int(n_rows),
        "tokens_per_s": round(n_tokens / t_stream, 1) if t_stream > 0 else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def default_batch_size(n_latents: int, window: int) -> int:
    """Tokens per batch so the dense (B, F) float32 code is ~64 MB; never below the window
    (window activations are read from the neighbouring batch only)."""
    return int(max(2 * window, min(4096, (16 << 20) // max(n_latents, 1))))


def run_stage(cfg: StudyConfig, run_path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Contexts stage. Records which dictionary it read (``dictionary_trained_at``: when
    the train stage finished, or imported the cross-coder). If that is not the dictionary
    of its previous pass, the explanations kept across interpret runs describe other
    latents under the same numbers and go, once every input has loaded; with the same
    dictionary they stay (``mneme interpret`` adds to them, explainers are compared)."""
    from mneme_core.collect.activations import ActivationStore
    from mneme_core.collect.models import load_tokenizer, resolve_device
    from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
    from mneme_core.interp import EXPLANATIONS

    run_path = Path(run_path)
    stages = read_manifest(run_path).get("stages", {})
    trained_at = stages.get("train", {}).get("at")
    previous = (stages.get("contexts", {}).get("metrics") or {}).get("dictionary_trained_at")
    ccfg = cfg.contexts
    store = ActivationStore(run_path / "activations")
    model = BatchTopKCrossCoder.from_pretrained(run_path / "crosscoder")
    device = resolve_device(cfg.models.device)
    model = model.to(device).eval()
    n_latents = int(model.W_enc.shape[-1])
    n_tokens = store.n_tokens if ccfg.n_tokens <= 0 else min(ccfg.n_tokens, store.n_tokens)
    batch_size = max(ccfg.batch_size or default_batch_size(n_latents, ccfg.window), 2 * ccfg.window)
    tokenizer = load_tokenizer(cfg.models.base)
    tokens = TokenSource(store.token_ids, store.doc_ids, store.positions)

    def encode(x_B2d: torch.Tensor) -> torch.Tensor:
        return model.encode(x_B2d.to(device, torch.float32), use_threshold=True)

    batches = store.iter_batches(batch_size, shuffle=False, stop=n_tokens)
    if previous != trained_at:  # another dictionary, or a pass from before this was recorded
        (run_path / EXPLANATIONS).unlink(missing_ok=True)
    metrics = collect_run_contexts(
        encode, batches, tokens, n_latents, n_tokens, tokenizer, run_path, ccfg, seed=ccfg.seed, progress=progress
    )
    return {**metrics, "dictionary_trained_at": trained_at}


__all__ = [
    "run_stage",
    "collect_run_contexts",
    "ContextCollector",
    "SlotTable",
    "DoublingHistogram",
    "TokenSource",
    "special_token_ids",
]
