"""Paired activation collection and the sharded on-disk store.

The same packed contexts go through the base and the fine-tuned model, each run only up
to the study's layer (``models.truncated_forward``); the residual stream of every kept
token (BOS, padding and control tokens dropped, see ``corpus.excluded_token_ids``; the
massive-activation tokens, attention sinks, dropped by ``massive_token_mask``) becomes
one row ``(2, d)`` of the store: index 0 base, index 1 fine-tuned. The massive-token rule
reads the base model only, and a collection reusing a donor's base halves keeps exactly
the donor's tokens. ``index.json`` counts what was dropped (``excluded_tokens``).

Layout of ``activations/``::

    collect.json                      what was collected (config fingerprint); a resumed
                                      run with other inputs is refused
    shard-r{rank}-{seq}.safetensors   acts (n, 2, d) fp16/bf16, token_ids int32,
                                      doc_ids int64, positions int32 (in the context),
                                      context_ids int64, stats_* (float64 sums for the
                                      normalisation statistics)
    rank-{rank}.done.json             a rank finished; lists its shards
    index.json                        shard order and sizes, d_model, dtype, layer, norm summary
    norm_stats.safetensors            mean, std (2, d), mean_norm, scale (2,)

Each shard is written atomically, so a killed collection keeps every finished shard and a
rerun skips them (it re-tokenises, which is cheap, but never re-runs the models on them).
Under ``torchrun`` the stage joins the process group (one process per GPU, each on its own
GPU), rank r collects contexts r, r + W, r + 2W, ... into its own shards, and rank 0 writes
the index once every rank is done.

Reading never holds more than a bounded number of shards in memory.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mneme_core.collect.corpus import (
    PackedContext,
    corpus_provenance,
    iter_contexts,
    n_contexts,
)
from mneme_core.collect.models import (
    DTYPES,
    ModelPair,
    load_model_config,
    load_model_pair,
    load_tokenizer,
    model_provenance,
    resolve_device,
    truncated_forward,
    validate_pair,
)
from mneme_core.common.atomic import atomic_path, atomic_write_json
from mneme_core.common.config import (
    ActivationsConfig,
    CorpusConfig,
    ModelsConfig,
    StudyConfig,
)
from mneme_core.common.distributed import join_process_group, on_every_rank
from mneme_core.run.store import add_provenance, differing_keys

FORMAT = "mneme-activations-1"
INDEX = "index.json"
FINGERPRINT = "collect.json"
NORM_STATS = "norm_stats.safetensors"
NORM_STATS_KEYS = ("mean", "std", "mean_norm", "scale")
META_FIELDS = ("token_ids", "doc_ids", "positions", "context_ids")
EXCLUDED_KINDS = ("first", "massive")


class StoreError(RuntimeError):
    """The activation store is missing, incomplete, corrupt or from other inputs."""


# --------------------------------------------------------------------------- reading


# what every damaged-store message tells the user (``collect`` below keeps the whole shards)
RECOLLECT = (
    "re-run the collect stage (`mneme collect STUDY.yaml --force`): it recomputes the shards that are missing or "
    "damaged and keeps the rest"
)


class ActivationStore:
    """Read-only view of a finished collection.

    ``iter_batches`` streams raw (not normalised) float32 ``(B, 2, d)`` tensors;
    ``token_ids`` / ``doc_ids`` / ``positions`` / ``context_ids`` are small int arrays
    aligned with the global token order (shards in index order).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            hint = f" (collection started but did not finish: {RECOLLECT})" if self.path.is_dir() else ""
            raise StoreError(f"no activation store at {self.path}: {INDEX} is missing{hint}")
        try:
            self.index: dict[str, Any] = json.loads(index_path.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{index_path} is not valid JSON ({exc}); {RECOLLECT}") from exc
        if self.index.get("format") != FORMAT:
            raise StoreError(f"{index_path} has format {self.index.get('format')!r}; this MNEME reads {FORMAT!r}")
        self.shards: list[dict[str, Any]] = self.index["shards"]
        self.offsets = np.cumsum([0] + [s["n_tokens"] for s in self.shards])

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, n_tokens={self.n_tokens}, d_model={self.d_model})"

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def d_model(self) -> int:
        return int(self.index["d_model"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.index["dtype"]]

    @property
    def layer(self) -> int:
        return int(self.index["layer"])

    @cached_property
    def norm_stats(self) -> dict[str, torch.Tensor]:
        """``mean``, ``std`` (2, d) and ``mean_norm``, ``scale`` (2,) float32, over every token.

        ``scale = sqrt(d) / mean_norm``: multiplying model m's activations by it gives them
        mean norm sqrt(d), so both models weigh equally in the loss whatever their scale.
        """
        return self._read_file(self.path / NORM_STATS, NORM_STATS_KEYS)

    def _field(self, name: str) -> np.ndarray:
        parts = [self.read_shard(i, fields=(name,))[name].numpy() for i in range(len(self.shards))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @cached_property
    def token_ids(self) -> np.ndarray:
        return self._field("token_ids")

    @cached_property
    def doc_ids(self) -> np.ndarray:
        return self._field("doc_ids")

    @cached_property
    def positions(self) -> np.ndarray:
        """Position of each token in its packed context (0 = the context's first token)."""
        return self._field("positions")

    @cached_property
    def context_ids(self) -> np.ndarray:
        return self._field("context_ids")

    def read_shard(
        self, i: int, start: int = 0, stop: int | None = None, fields: tuple[str, ...] = ("acts",)
    ) -> dict[str, torch.Tensor]:
        """Rows ``start:stop`` of shard ``i`` (only those rows are read from disk)."""
        return self._read_file(self.path / self.shards[i]["file"], fields, start, stop)

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Raw float32 activations ``(stop - start, 2, d)`` of a global token range.

        For small stores or slices (tests, notebooks); training streams ``iter_batches``.
        """
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        parts = [self.read_shard(i, lo, hi)["acts"] for i, lo, hi in self._pieces(start, stop)]
        if not parts:
            return torch.zeros(0, 2, self.d_model)
        return torch.cat(parts).float()

    def _read_file(
        self, path: Path, fields: tuple[str, ...], start: int = 0, stop: int | None = None
    ) -> dict[str, torch.Tensor]:
        try:
            with safe_open(str(path), framework="pt") as fh:
                return {name: fh.get_slice(name)[start:stop] for name in fields}
        except FileNotFoundError as exc:
            raise StoreError(f"activation store file {path} is missing; {RECOLLECT}") from exc
        except Exception as exc:
            raise StoreError(f"activation store file {path} is unreadable ({exc}); {RECOLLECT}") from exc

    def _pieces(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(shard, lo, hi) local row ranges covering global tokens [start, stop)."""
        out = []
        for i in range(len(self.shards)):
            lo, hi = max(start, int(self.offsets[i])), min(stop, int(self.offsets[i + 1]))
            if lo < hi:
                out.append((i, lo - int(self.offsets[i]), hi - int(self.offsets[i])))
        return out

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        start: int = 0,
        stop: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        buffer_shards: int = 2,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Float32 ``(B, 2, d)`` batches of tokens ``[start, stop)``.

        Shuffling permutes the shard order, then the tokens of ``buffer_shards`` shards at a
        time, so memory stays bounded while batches mix documents. The token order does not
        depend on ``rank``: each global batch of ``batch_size * world_size`` tokens is split
        between the ranks, so W processes with batch B/W see exactly the batches one process
        with batch B sees. The last, short global batch is split evenly too (dropped with
        ``drop_last`` or when there are fewer tokens than ranks).
        """
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size > 0 and 0 <= rank < world_size; got {batch_size}, {rank}, {world_size}")
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        pieces = self._pieces(start, stop)
        gen = torch.Generator().manual_seed(seed)
        if shuffle:
            pieces = [pieces[i] for i in torch.randperm(len(pieces), generator=gen).tolist()]
        global_bs = batch_size * world_size
        carry = torch.zeros(0, 2, self.d_model, dtype=self.dtype)
        for g in range(0, len(pieces), max(1, buffer_shards)):
            group = [self.read_shard(i, lo, hi)["acts"] for i, lo, hi in pieces[g : g + buffer_shards]]
            data = torch.cat([carry, *group])
            if shuffle:
                data = data[torch.randperm(len(data), generator=gen)]
            n_full = len(data) // global_bs
            for b in range(n_full):
                chunk = data[b * global_bs : (b + 1) * global_bs]
                yield chunk[rank * batch_size : (rank + 1) * batch_size].float()
            carry = data[n_full * global_bs :]
        if len(carry) >= world_size and not drop_last:
            yield torch.tensor_split(carry, world_size)[rank].float()


# --------------------------------------------------------------------------- collection


def _fingerprint(
    models_cfg: ModelsConfig, corpus_cfg: CorpusConfig, act_cfg: ActivationsConfig, world_size: int
) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "format": FORMAT,
        "models": asdict(models_cfg) | {"device": None},  # the device does not change the numbers much; allow moving
        "corpus": asdict(corpus_cfg),
        "activations": {
            "dtype": act_cfg.dtype,
            "shard_tokens": act_cfg.shard_tokens,
            "skip_first_tokens": act_cfg.skip_first_tokens,
            "massive_norm_multiple": act_cfg.massive_norm_multiple,
            # only where it changes the numbers (set, and not the models' own dtype), so a
            # collection made before the setting existed, or with it spelled out, still resumes
            **({"forward_dtype": act_cfg.forward_dtype} if _recast(models_cfg, act_cfg.forward_dtype) else {}),
        },
        "world_size": world_size,
    }


def _check_fingerprint(out_dir: Path, fingerprint: dict[str, Any]) -> None:
    path = out_dir / FINGERPRINT
    plain = json.loads(json.dumps(fingerprint))
    if path.is_file():
        old = json.loads(path.read_text())
        if old != plain:
            raise StoreError(
                f"{out_dir} holds activations collected with other settings ({', '.join(differing_keys(old, plain))} differ). "
                "Delete the folder to recollect, or use another run directory."
            )
    else:
        atomic_write_json(path, plain)


def _check_donor(donor: Path, fingerprint: dict[str, Any]) -> Path:
    """The folder whose base halves ``activations.reuse_base_from`` may reuse, checked to
    hold the same base model, corpus, layer and shard layout as this collection."""
    path = donor / FINGERPRINT
    if not path.is_file():
        raise StoreError(f"activations.reuse_base_from = {donor} holds no collection ({FINGERPRINT} missing)")
    theirs = json.loads(path.read_text())
    mine = json.loads(json.dumps(fingerprint))
    for fp in (theirs, mine):
        fp["models"].pop("ft", None)
    if theirs != mine:
        raise StoreError(
            f"activations.reuse_base_from = {donor} was collected with a different base model, corpus, layer or "
            f"settings ({', '.join(differing_keys(theirs, mine))} differ); its base activations cannot be reused here"
        )
    return donor


@dataclass
class _DonorShard:
    """The base half of one donor shard: activations of its kept tokens, which tokens of
    each context it kept (the massive-token rule reads the base, so the fine-tuned half
    must keep exactly these), and the exclusion counts it recorded."""

    acts: torch.Tensor  # (n, d)
    keep_CT: np.ndarray  # (contexts, T) bool
    excluded: dict[str, int]


def _donor_base(donor: Path, name: str, group: list[PackedContext]) -> _DonorShard | None:
    """The same shard of the donor, if it holds these tokens (else None: recompute)."""
    path = donor / name
    if not _shard_complete(path):
        return None
    with safe_open(str(path), framework="pt") as fh:
        token_ids = fh.get_tensor("token_ids").numpy()
        ctx_ids, positions = fh.get_tensor("context_ids").numpy(), fh.get_tensor("positions").numpy()
        meta = fh.metadata() or {}
        row = {c.index: i for i, c in enumerate(group)}
        if not set(ctx_ids.tolist()) <= set(row):
            return None
        keep = np.zeros((len(group), len(group[0].input_ids)), dtype=bool)
        keep[[row[c] for c in ctx_ids.tolist()], positions] = True
        ids = np.stack([c.input_ids for c in group])
        allowed = np.stack([c.keep for c in group])
        if not np.array_equal(ids[keep], token_ids) or np.any(keep & ~allowed):
            return None  # same settings but other tokens (e.g. an edited corpus file): recompute
        excluded = {k: int(meta.get(f"excluded_{k}", 0)) for k in EXCLUDED_KINDS}
        return _DonorShard(fh.get_slice("acts")[:, 0], keep, excluded)


def _shard_name(rank: int, seq: int) -> str:
    return f"shard-r{rank:03d}-{seq:06d}.safetensors"


def _shard_complete(path: Path) -> bool:
    """A shard on disk is reusable if its header reads (writes are atomic, so a readable
    file is a whole file; an unreadable one was damaged later and is recomputed)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as fh:
            return "acts" in fh.keys()
    except Exception:
        return False


def _store_whole(out_dir: Path) -> bool:
    """Whether a finished store's index, every shard it lists and its normalisation
    statistics are on disk and readable."""
    try:
        shards = ActivationStore(out_dir).shards
        with safe_open(str(out_dir / NORM_STATS), framework="pt") as fh:
            stats = set(fh.keys())
    except Exception:  # any file that does not read is a store to mend
        return False
    return set(NORM_STATS_KEYS) <= stats and all(_shard_complete(out_dir / s["file"]) for s in shards)


def _rank_groups(
    contexts: Iterator[PackedContext], rank: int, world_size: int, per_shard: int
) -> Iterator[list[PackedContext]]:
    group: list[PackedContext] = []
    for ctx in contexts:
        if ctx.index % world_size != rank:
            continue
        group.append(ctx)
        if len(group) == per_shard:
            yield group
            group = []
    if group:
        yield group


def massive_token_mask(
    norms_BT: torch.Tensor, keep_BT: torch.Tensor, skip_first: int, multiple: float
) -> tuple[torch.Tensor, dict[str, int]]:
    """Which kept tokens to drop as non-text (attention sinks), and how many of each kind.

    ``first``: the first ``skip_first`` kept positions of each context; ``massive``: any
    other kept token whose base norm exceeds ``multiple`` × the median base norm of the
    batch's kept tokens (``multiple = 0`` turns it off).
    """
    rank_BT = torch.cumsum(keep_BT.long(), dim=1)  # 1 for the first kept token of a row
    first = keep_BT & (rank_BT <= skip_first)
    massive = torch.zeros_like(keep_BT)
    if multiple > 0 and bool(keep_BT.any()):
        median = norms_BT[keep_BT].median()
        massive = keep_BT & ~first & (norms_BT > multiple * median)
    return first | massive, {"first": int(first.sum()), "massive": int(massive.sum())}


def _forward_group(
    pair: ModelPair,
    group: list[PackedContext],
    act_cfg: ActivationsConfig,
    dtype: torch.dtype,
    on_batch: Callable[[int], None],
    donor: _DonorShard | None = None,
    same_model: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Activations and metadata of the kept tokens of ``group``, both models, one layer,
    and how many tokens the massive-token rule dropped (by kind).

    With ``donor`` (the same shard of an earlier collection) only the fine-tuned model
    runs, on the tokens the donor kept. With ``same_model`` (the fine-tuned spec equals the
    base: a null control) the base runs once and its activations fill both halves.
    """
    device = next(pair.base.parameters()).device
    models = [pair.base, pair.ft] if donor is None else [pair.ft]
    if same_model:
        models = models[:1] if donor is None else []
    acts: list[torch.Tensor] = []
    meta: dict[str, list[torch.Tensor]] = {k: [] for k in META_FIELDS}
    excluded = dict.fromkeys(EXCLUDED_KINDS, 0) if donor is None else dict(donor.excluded)
    n_done = 0
    for b in range(0, len(group), act_cfg.batch_size):
        batch = group[b : b + act_cfg.batch_size]
        ids = torch.from_numpy(np.stack([c.input_ids for c in batch])).to(device)
        attn = torch.from_numpy(np.stack([c.attention_mask for c in batch])).to(device)
        keep_BT = torch.from_numpy(np.stack([c.keep for c in batch]))
        T = ids.shape[1]
        with torch.inference_mode():
            full = [truncated_forward(m, ids, attn, pair.layer).to("cpu", torch.float32) for m in models]
        if donor is None:
            drop_BT, counts = massive_token_mask(
                full[0].norm(dim=-1), keep_BT, act_cfg.skip_first_tokens, act_cfg.massive_norm_multiple
            )
            keep_BT = keep_BT & ~drop_BT
            excluded = {k: excluded[k] + counts[k] for k in EXCLUDED_KINDS}
        else:
            keep_BT = torch.from_numpy(donor.keep_CT[b : b + len(batch)])
        resid = [x[keep_BT].to(dtype) for x in full]
        if donor is not None:
            n_kept = int(keep_BT.sum())
            resid.insert(0, donor.acts[n_done : n_done + n_kept].to(dtype))
            n_done += n_kept
        if same_model:
            resid = [resid[0], resid[0]]
        acts.append(torch.stack(resid, dim=1))
        meta["token_ids"].append(ids.cpu()[keep_BT].to(torch.int32))
        meta["doc_ids"].append(torch.from_numpy(np.stack([c.doc_ids for c in batch]))[keep_BT])
        meta["positions"].append(torch.arange(T, dtype=torch.int32).expand(len(batch), T)[keep_BT])
        meta["context_ids"].append(torch.tensor([c.index for c in batch]).repeat_interleave(keep_BT.sum(1)))
        on_batch(int(attn.sum()))
    out = {"acts": torch.cat(acts)} | {k: torch.cat(v) for k, v in meta.items()}
    if not torch.isfinite(out["acts"]).all():
        raise StoreError(
            f"activations overflow {dtype} (non-finite values at layer {pair.layer}); set activations.dtype: bfloat16 or float32"
        )
    return out | _stat_sums(out["acts"]), excluded


def _stat_sums(acts_N2d: torch.Tensor, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Float64 sums for the normalisation statistics, in chunks (a float64 copy of a
    whole shard of a 7B model would be gigabytes)."""
    d = acts_N2d.shape[-1]
    sums = {
        "stats_sum": torch.zeros(2, d, dtype=torch.float64),
        "stats_sumsq": torch.zeros(2, d, dtype=torch.float64),
        "stats_norm_sum": torch.zeros(2, dtype=torch.float64),
    }
    for i in range(0, len(acts_N2d), chunk):
        x = acts_N2d[i : i + chunk].double()
        sums["stats_sum"] += x.sum(0)
        sums["stats_sumsq"] += (x * x).sum(0)
        sums["stats_norm_sum"] += x.norm(dim=-1).sum(0)
    return sums


def collect(
    models_cfg: ModelsConfig,
    corpus_cfg: CorpusConfig,
    act_cfg: ActivationsConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    on_shard: Callable[[int, Path], None] | None = None,
) -> dict[str, Any]:
    """Collect paired activations into ``out_dir``; resumable; returns metrics.

    Validation (tokenizers, widths, layer, settings of an existing partial collection)
    happens before any model weights are loaded. The models are loaded only if some shard
    of this rank still needs computing. ``on_shard(seq, path)`` is called after each new
    shard is on disk (progress reporting for callers).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    if world_size > 1 and not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(models_cfg, corpus_cfg, act_cfg, world_size)
    _check_fingerprint(out_dir, fingerprint)
    donor = _check_donor(Path(act_cfg.reuse_base_from), fingerprint) if act_cfg.reuse_base_from else None
    # a finished store with a file missing or damaged is collected again: the shards that are
    # whole are kept, the rest recomputed, and finalize rewrites the index (atomically, so a
    # collection that fails again leaves the old one). Every rank takes the same decision.
    # (each rank checks the shared folder at its own moment; one rank recomputing while
    # another returned would leave their collective calls out of step)
    if on_every_rank((out_dir / INDEX).is_file() and _store_whole(out_dir)):
        return _summary(ActivationStore(out_dir)) | {
            "seconds": 0.0,
            "computed_tokens": 0,
            "reused_base_tokens": 0,
            "tokens_per_s": None,
        }

    tokenizer = load_tokenizer(models_cfg.base)
    layer = validate_pair(
        load_model_config(models_cfg.base),
        load_model_config(models_cfg.ft, models_cfg.base),
        tokenizer,
        load_tokenizer(models_cfg.ft, models_cfg.base),
        models_cfg.layer,
    )
    per_shard = max(1, act_cfg.shard_tokens // corpus_cfg.context_length)
    dtype = DTYPES[act_cfg.dtype]
    same_model = models_cfg.ft == models_cfg.base  # a null control: one forward fills both halves
    my_contexts = len(range(rank, n_contexts(corpus_cfg), world_size))
    pair: ModelPair | None = None
    shards: list[str] = []
    computed_tokens, reused_base_tokens, forward_s, t0 = 0, 0, 0.0, time.perf_counter()
    bar = tqdm(
        total=my_contexts * corpus_cfg.context_length,
        unit="tok",
        unit_scale=True,
        disable=not progress,
        desc=f"collect{f' rank {rank}' if world_size > 1 else ''}",
        dynamic_ncols=True,
    )
    try:
        groups = _rank_groups(iter_contexts(corpus_cfg, tokenizer), rank, world_size, per_shard)
        for seq, group in enumerate(groups):
            path = out_dir / _shard_name(rank, seq)
            shards.append(path.name)
            if _shard_complete(path):
                bar.update(sum(int(c.attention_mask.sum()) for c in group))
                continue
            if pair is None:
                pair = collection_pair(models_cfg, act_cfg.forward_dtype)
            donor_shard = _donor_base(donor, path.name, group) if donor else None
            t_fwd = time.perf_counter()
            tensors, excluded = _forward_group(pair, group, act_cfg, dtype, bar.update, donor_shard, same_model)
            forward_s += time.perf_counter() - t_fwd
            reused_base_tokens += 0 if donor_shard is None else len(donor_shard.acts)
            meta = {
                "n_tokens": str(len(tensors["acts"])),
                "first_context": str(group[0].index),
                "n_contexts": str(len(group)),
                **{f"excluded_{k}": str(v) for k, v in excluded.items()},
            }
            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
            computed_tokens += sum(int(c.attention_mask.sum()) for c in group)
            if on_shard is not None:
                on_shard(seq, path)
    finally:
        bar.close()
    if not shards:
        raise StoreError(
            f"the corpus gave no text for rank {rank}: check corpus.files / corpus.dataset and the text field"
        )
    atomic_write_json(out_dir / f"rank-{rank}.done.json", {"rank": rank, "shards": shards})
    seconds = time.perf_counter() - t0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    mine = {
        "seconds": round(seconds, 2),
        "computed_tokens": computed_tokens,
        "reused_base_tokens": reused_base_tokens,
        "tokens_per_s": round(computed_tokens / forward_s, 1) if forward_s > 0 else None,
    }
    if rank != 0:
        return {"rank": rank, "shards": len(shards)} | mine
    return _summary(finalize(out_dir, world_size, layer=layer)) | mine


def finalize(out_dir: str | Path, world_size: int, layer: int) -> ActivationStore:
    """Write ``index.json`` and the normalisation statistics once every rank is done.

    Separate from ``collect`` so ranks run on different machines (no torch.distributed)
    can be joined afterwards by calling it on the shared folder.
    """
    out_dir = Path(out_dir)
    files: list[tuple[int, int, str]] = []
    for r in range(world_size):
        done = out_dir / f"rank-{r}.done.json"
        if not done.is_file():
            raise StoreError(
                f"rank {r} of {world_size} has not finished collecting into {out_dir}; run it, then finalize"
            )
        files += [(seq, r, name) for seq, name in enumerate(json.loads(done.read_text())["shards"])]
    files.sort()  # interleave ranks: shard 0 of every rank, then shard 1, ... (close to corpus order)
    shards: list[dict[str, Any]] = []
    sums: list[torch.Tensor] | None = None
    d_model: int | None = None
    dtype: str | None = None
    excluded = dict.fromkeys(EXCLUDED_KINDS, 0)
    for _, r, name in files:
        with safe_open(str(out_dir / name), framework="pt") as fh:
            meta = fh.metadata() or {}
            n = int(meta["n_tokens"])
            excluded = {k: excluded[k] + int(meta.get(f"excluded_{k}", 0)) for k in EXCLUDED_KINDS}
            acts = fh.get_slice("acts")
            d_model, dtype = acts.get_shape()[-1], acts.get_dtype()
            part = [fh.get_tensor(k) for k in ("stats_sum", "stats_sumsq", "stats_norm_sum")]
        sums = part if sums is None else [a + b for a, b in zip(sums, part)]
        shards.append({"file": name, "n_tokens": n, "rank": r})
    n_total = sum(s["n_tokens"] for s in shards)
    if n_total == 0:
        raise StoreError(
            f"no tokens were kept in {out_dir}: every token was excluded (BOS/pad/control); check the corpus"
        )
    # Tokens were counted, so at least one shard was read and set these.
    assert sums is not None and d_model is not None and dtype is not None
    mean = sums[0] / n_total
    std = (sums[1] / n_total - mean**2).clamp_min(0).sqrt()
    mean_norm = sums[2] / n_total
    stats = {
        "mean": mean.float(),
        "std": std.float(),
        "mean_norm": mean_norm.float(),
        "scale": (math.sqrt(d_model) / mean_norm.clamp_min(1e-12)).float(),
    }
    with atomic_path(out_dir / NORM_STATS) as tmp:
        save_file(stats, str(tmp))
    dtype_name = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}[dtype]
    atomic_write_json(
        out_dir / INDEX,
        {
            "format": FORMAT,
            "d_model": d_model,
            "dtype": dtype_name,
            "layer": layer,
            "n_tokens": n_total,
            "fields": {
                "acts": "(n, 2, d): [:, 0] base, [:, 1] fine-tuned",
                "token_ids": "int32",
                "doc_ids": "int64",
                "positions": "int32, position in the packed context",
                "context_ids": "int64, packed context index",
            },
            "mean_norm": mean_norm.tolist(),
            "scale": stats["scale"].tolist(),
            "world_size": world_size,
            "shards": shards,
            "excluded_tokens": excluded
            | {
                "rule": "first text positions of each context, and base norm above a multiple "
                "of the batch median (activations.skip_first_tokens, "
                "activations.massive_norm_multiple)"
            },
        },
    )
    return ActivationStore(out_dir)


def _summary(store: ActivationStore) -> dict[str, Any]:
    """Store facts for the stage metrics; ``tokens_per_s`` (added by collect) counts
    context tokens per second of model forward time, both models together."""
    return {
        "n_tokens": store.n_tokens,
        "d_model": store.d_model,
        "layer": store.layer,
        "shards": len(store.shards),
        "dtype": store.index["dtype"],
        "mean_norm_base": store.index["mean_norm"][0],
        "mean_norm_ft": store.index["mean_norm"][1],
        "excluded_first_tokens": store.index.get("excluded_tokens", {}).get("first", 0),
        "excluded_massive_tokens": store.index.get("excluded_tokens", {}).get("massive", 0),
    }


def _recast(models_cfg: ModelsConfig, forward_dtype: str) -> bool:
    """Whether collection runs the models in another precision than they load in."""
    return bool(forward_dtype) and not forward_dtype == models_cfg.base.dtype == models_cfg.ft.dtype


def collection_pair(models_cfg: ModelsConfig, forward_dtype: str) -> ModelPair:
    """The pair in the precision collection runs in: loaded as configured (a delta or an
    adapter is applied at the models' own precision), then cast."""
    pair = load_model_pair(models_cfg)
    if _recast(models_cfg, forward_dtype):
        for model in {id(pair.base): pair.base, id(pair.ft): pair.ft}.values():
            model.to(DTYPES[forward_dtype])
    return pair


def run_stage(cfg: StudyConfig, run_path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Collect stage: ``run_path/activations/`` from the study's models and corpus."""
    run_path = Path(run_path)
    rank, world_size, _ = join_process_group(resolve_device(cfg.models.device))
    metrics = collect(
        cfg.models,
        cfg.corpus,
        cfg.activations,
        run_path / "activations",
        progress=progress,
        rank=rank,
        world_size=world_size,
    )
    if rank == 0:
        add_provenance(
            run_path,
            [
                corpus_provenance(cfg.corpus),
                model_provenance(cfg.models.base, "base"),
                model_provenance(cfg.models.ft, "ft"),
            ],
        )
    return metrics
