"""Neutral text for the comparison: load, tokenise and pack into fixed-length contexts.

Any ``datasets`` source works: a hub dataset (streamed, so a Pile-sized corpus is never
downloaded whole) or local text / json / jsonl / parquet / csv files (offline). A document
is either a text field or a chat-messages field rendered with the model's chat template.

Packing: documents are tokenised without special tokens, joined by EOS, and cut into
contexts of ``context_length`` tokens; each context starts with BOS when the tokenizer has
one (the models were trained that way; the BOS position itself carries no text signal).
Every token records its document id, so a context that spans two documents is still
traceable. The order is a function of ``shuffle_seed`` only, so every rank of a
distributed collection and every resumed run sees the same contexts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mneme_core.common.config import CorpusConfig

_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_TOKENIZE_BATCH = 256
_STREAM_SHUFFLE_BUFFER = 10_000


class CorpusError(ValueError):
    """The corpus cannot be read or does not hold what the config says; says how to fix it."""


@dataclass(frozen=True)
class PackedContext:
    """One model input of ``context_length`` tokens. Arrays have shape (T,)."""

    index: int  # position of this context in the corpus order (all ranks agree)
    input_ids: np.ndarray  # int64
    attention_mask: np.ndarray  # int64; 0 only for padding of the corpus's last context
    doc_ids: np.ndarray  # int64; -1 for BOS and padding
    keep: np.ndarray  # bool; False for tokens excluded from training activations


def n_contexts(cfg: CorpusConfig) -> int:
    """How many contexts ``cfg.n_tokens`` asks for (the last may be cut short by the corpus)."""
    return math.ceil(cfg.n_tokens / cfg.context_length)


def load_documents(cfg: CorpusConfig) -> Iterable[dict[str, Any]]:
    """The corpus rows in a seed-determined order (a ``datasets`` Dataset or IterableDataset)."""
    import datasets

    if cfg.files:
        paths = [Path(f).expanduser() for f in cfg.files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CorpusError(f"corpus file not found: {missing[0]}; check corpus.files")
        kinds = {_BUILDERS.get(p.suffix.lower()) for p in paths}
        if None in kinds or len(kinds) != 1:
            raise CorpusError(
                f"corpus.files must all be one kind of {sorted(set(_BUILDERS))} files; got {[p.name for p in paths]}"
            )
        try:
            ds = datasets.load_dataset(kinds.pop(), data_files=[str(p) for p in paths], split="train")
        except Exception as exc:
            raise CorpusError(f"could not read corpus files {[p.name for p in paths]}: {exc}") from exc
        return ds.shuffle(seed=cfg.shuffle_seed)
    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.subset or None, split=cfg.split, streaming=True)
    except Exception as exc:
        raise CorpusError(f"could not open dataset {cfg.dataset!r} (split {cfg.split!r}): {exc}") from exc
    return ds.shuffle(seed=cfg.shuffle_seed, buffer_size=_STREAM_SHUFFLE_BUFFER)


def document_texts(cfg: CorpusConfig, tokenizer: Any, rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Each row as model input text: the text field, or chat messages through the template."""
    field = cfg.messages_field or cfg.text_field
    if cfg.messages_field and not getattr(tokenizer, "chat_template", None):
        raise CorpusError("corpus.messages_field is set but the tokenizer has no chat template; use corpus.text_field")
    for i, row in enumerate(rows):
        if field not in row:
            raise CorpusError(
                f"corpus row {i} has no field {field!r}; its fields are {sorted(row)}. Set corpus.text_field or corpus.messages_field."
            )
        value = row[field]
        if cfg.messages_field:
            if not isinstance(value, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in value
            ):
                raise CorpusError(f"corpus row {i}: {field!r} must be a list of {{role, content}} messages")
            text = tokenizer.apply_chat_template(value, tokenize=False)
        else:
            if not isinstance(value, str):
                raise CorpusError(f"corpus row {i}: {field!r} must be text, got {type(value).__name__}")
            text = value
        if text.strip():
            yield text


def excluded_token_ids(tokenizer: Any, exclude_control_tokens: bool) -> np.ndarray:
    """Token ids never used as training activations.

    BOS and padding always (attention sinks with huge norms that carry no text); with
    ``exclude_control_tokens`` every special / chat-template control token too, since they
    dominate maxima and say nothing about the text.
    """
    ids = {tokenizer.bos_token_id, tokenizer.pad_token_id}
    if exclude_control_tokens:
        ids.update(tokenizer.all_special_ids)
        ids.update(
            i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)
        )
    return np.array(sorted(i for i in ids if i is not None), dtype=np.int64)


def _token_stream(cfg: CorpusConfig, tokenizer: Any) -> Iterator[list[int]]:
    batch: list[str] = []
    for text in document_texts(cfg, tokenizer, load_documents(cfg)):
        batch.append(text)
        if len(batch) == _TOKENIZE_BATCH:
            yield from tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def iter_contexts(cfg: CorpusConfig, tokenizer: Any) -> Iterator[PackedContext]:
    """Packed contexts in corpus order, stopping after ``n_contexts(cfg)`` of them.

    If the corpus runs out first, the last context is padded (attention 0, keep False) and
    the iterator ends early; callers report how many tokens they really got.
    """
    T = cfg.context_length
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    body = T - (bos is not None)
    if body < 1:
        raise CorpusError(f"corpus.context_length = {T} leaves no room for text after BOS")
    excluded = excluded_token_ids(tokenizer, cfg.exclude_control_tokens)
    wanted = n_contexts(cfg)
    ids: list[int] = []
    docs: list[int] = []
    made = 0

    def emit(n_text: int) -> PackedContext:
        head_ids = [bos] if bos is not None else []
        input_ids = np.full(T, pad, dtype=np.int64)
        doc_ids = np.full(T, -1, dtype=np.int64)
        attention = np.zeros(T, dtype=np.int64)
        n_head = len(head_ids)
        input_ids[:n_head] = head_ids
        input_ids[n_head : n_head + n_text] = ids[:n_text]
        doc_ids[n_head : n_head + n_text] = docs[:n_text]
        attention[: n_head + n_text] = 1
        keep = (attention == 1) & ~np.isin(input_ids, excluded)
        keep[:n_head] = False
        del ids[:n_text], docs[:n_text]
        return PackedContext(made, input_ids, attention, doc_ids, keep)

    for doc_id, doc in enumerate(_token_stream(cfg, tokenizer)):
        ids.extend(doc)
        docs.extend([doc_id] * len(doc))
        if eos is not None:
            ids.append(eos)
            docs.append(doc_id)
        while len(ids) >= body:
            yield emit(body)
            made += 1
            if made == wanted:
                return
    if ids and made < wanted:
        yield emit(len(ids))


def corpus_provenance(cfg: CorpusConfig) -> dict[str, Any]:
    """What text the activations came from, for the run manifest."""
    item: dict[str, Any] = {
        "kind": "corpus",
        "split": cfg.split,
        "field": cfg.messages_field or cfg.text_field,
        "chat_template": bool(cfg.messages_field),
        "shuffle_seed": cfg.shuffle_seed,
        "context_length": cfg.context_length,
    }
    if cfg.files:
        item["files"] = [_file_record(Path(f).expanduser()) for f in cfg.files]
    else:
        item["dataset"] = cfg.dataset
        item["subset"] = cfg.subset
    return item


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
