"""Corpus loading, chat templates, packing and the exclusion mask, on tiny local files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tiny import tiny_tokenizer, write_tiny_corpus

from mneme_core.collect.corpus import (
    CorpusError,
    corpus_provenance,
    excluded_token_ids,
    iter_contexts,
)
from mneme_core.common.config import CorpusConfig


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _cfg(path, **kw):
    return CorpusConfig(files=(str(path),), **({"n_tokens": 160, "context_length": 16} | kw))


def test_packing_shape_bos_and_count(tmp_path, tok):
    contexts = list(iter_contexts(_cfg(write_tiny_corpus(tmp_path / "c.jsonl")), tok))
    assert len(contexts) == 10  # ceil(160 / 16)
    assert [c.index for c in contexts] == list(range(10))
    for c in contexts:
        assert c.input_ids.shape == (16,) and c.input_ids[0] == tok.bos_token_id
        assert c.attention_mask.all() and c.doc_ids[0] == -1


def test_documents_are_recoverable_from_doc_ids(tmp_path, tok):
    path = write_tiny_corpus(tmp_path / "c.jsonl", n_docs=30)
    texts = {json.loads(line)["text"] for line in path.read_text().splitlines()}
    contexts = list(iter_contexts(_cfg(path, n_tokens=10_000), tok))
    ids = np.concatenate([c.input_ids[1:] for c in contexts])
    docs = np.concatenate([c.doc_ids[1:] for c in contexts])
    rebuilt = [tok.decode(ids[(docs == d) & (ids != tok.eos_token_id)]) for d in np.unique(docs[docs >= 0])]
    assert len(rebuilt) == 30 and set(rebuilt) == texts  # every document, whole, once


def test_deterministic_given_seed(tmp_path, tok):
    path = write_tiny_corpus(tmp_path / "c.jsonl")
    a = [c.input_ids for c in iter_contexts(_cfg(path), tok)]
    b = [c.input_ids for c in iter_contexts(_cfg(path), tok)]
    c = [c.input_ids for c in iter_contexts(_cfg(path, shuffle_seed=5), tok)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_exclusion_mask(tmp_path, tok):
    path = write_tiny_corpus(tmp_path / "chat.jsonl", fmt="chat")
    ctrl = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    strict = list(iter_contexts(_cfg(path, messages_field="messages"), tok))
    ids = np.concatenate([c.input_ids for c in strict])
    keep = np.concatenate([c.keep for c in strict])
    assert ctrl <= set(ids.tolist())  # the chat template was applied
    excluded = set(ids[~keep].tolist())
    assert {tok.bos_token_id, tok.eos_token_id} | ctrl <= excluded
    assert set(ids[keep].tolist()).isdisjoint(excluded_token_ids(tok, True).tolist())
    loose = list(iter_contexts(_cfg(path, messages_field="messages", exclude_control_tokens=False), tok))
    kept = set(np.concatenate([c.input_ids[c.keep] for c in loose]).tolist())
    assert ctrl <= kept and tok.bos_token_id not in kept and tok.pad_token_id not in kept


def test_short_corpus_pads_last_context(tmp_path, tok):
    path = tmp_path / "one.txt"
    path.write_text("the cat sat on the mat\n")
    contexts = list(iter_contexts(_cfg(path), tok))
    assert len(contexts) == 1
    c = contexts[0]
    n = 1 + 6 + 1  # BOS, six words, EOS
    assert c.attention_mask[:n].all() and not c.attention_mask[n:].any()
    assert not c.keep[n:].any() and (c.input_ids[n:] == tok.pad_token_id).all()
    assert c.keep.sum() == 6


def test_parquet_and_txt_sources(tmp_path, tok):
    txt = write_tiny_corpus(tmp_path / "c.txt", fmt="txt")
    lines = txt.read_text().splitlines()
    pq = tmp_path / "c.parquet"
    pd.DataFrame({"body": lines}).to_parquet(pq)
    from_txt = list(iter_contexts(_cfg(txt), tok))
    from_pq = list(iter_contexts(_cfg(pq, text_field="body"), tok))
    assert len(from_txt) == len(from_pq) == 10
    assert sum(c.keep.sum() for c in from_pq) == sum(c.keep.sum() for c in from_txt)


def test_bad_corpus_inputs(tmp_path, tok):
    with pytest.raises(CorpusError, match="corpus file not found"):
        list(iter_contexts(_cfg(tmp_path / "missing.jsonl"), tok))
    path = write_tiny_corpus(tmp_path / "c.jsonl")
    with pytest.raises(CorpusError, match=r"no field 'body'; its fields are \['text'\]"):
        list(iter_contexts(_cfg(path, text_field="body"), tok))
    other = tmp_path / "x.csv"
    other.write_text("text\nhello\n")
    with pytest.raises(CorpusError, match="must all be one kind"):
        list(iter_contexts(CorpusConfig(files=(str(path), str(other))), tok))
    with pytest.raises(CorpusError, match="list of {role, content} messages"):
        list(iter_contexts(_cfg(path, messages_field="text"), tok))


def test_provenance_records_file_hash(tmp_path):
    path = write_tiny_corpus(tmp_path / "c.jsonl")
    prov = corpus_provenance(_cfg(path))
    assert prov["files"][0]["bytes"] == path.stat().st_size and len(prov["files"][0]["sha256"]) == 64
