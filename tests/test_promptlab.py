"""The prompt lab encodes typed text the way the corpus was collected (after a BOS) and
shows its tokens the way the contexts stage stores them."""

from __future__ import annotations

import numpy as np
import torch

from mneme_core import open_run
from mneme_core.analysis import promptlab as pl
from mneme_core.analysis.contexts import TokenDecoder
from mneme_core.collect.models import truncated_forward


def test_typed_text_follows_a_bos_like_the_collected_corpus(tiny_run):
    run = open_run(tiny_run)
    lab = pl.load_lab(run.path, run.manifest)
    text = "the cat sat on the mat"
    analysis = pl.analyse(lab, text)
    ids = lab.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(analysis.tokens) == len(ids)  # BOS itself is not shown
    full = torch.tensor([[lab.tokenizer.bos_token_id, *ids]])
    with torch.inference_mode():
        x = torch.stack([truncated_forward(m, full, None, lab.layer)[0, 1:] for m in (lab.base, lab.ft)], dim=1)
        expected = lab.crosscoder.encode(x.float()).numpy()
    assert analysis.f_TF.shape == expected.shape
    assert abs(analysis.f_TF - expected).max() < 1e-5


def test_tokens_are_decoded_text_like_the_stored_contexts(tiny_run):
    """The lab shows what the text reads, not the tokenizer's names ("Ġvirus"): each id decoded
    with its spacing by the contexts stage's own decoder, so both pages show tokens alike."""
    run = open_run(tiny_run)
    lab = pl.load_lab(run.path, run.manifest)
    text = "the cat sat on the mat"
    analysis = pl.analyse(lab, text)
    ids = lab.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert analysis.tokens == TokenDecoder(lab.tokenizer).strings(np.asarray(ids)).to_pylist()
    assert "".join(analysis.tokens).strip() == text  # word-initial tokens keep their space
