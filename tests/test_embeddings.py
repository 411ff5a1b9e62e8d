"""The embedder remembers texts it has embedded: same vectors, no second pass."""

from __future__ import annotations

import numpy as np

from mneme_core.common.embeddings import Embedder


def test_remembered_texts_give_the_vectors_a_fresh_embedder_gives():
    emb = Embedder()
    first = emb.encode(["a cat sat", "the sea"])
    again = emb.encode(["the sea", "a new text", "a cat sat", "the sea"])
    assert len(emb._memo) == 3  # each distinct text embedded once
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[2], first[0])
    np.testing.assert_array_equal(again[3], again[0])
    fresh = Embedder().encode(["the sea", "a new text", "a cat sat", "the sea"])
    np.testing.assert_allclose(again, fresh, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)
    assert emb.encode([]).shape == (0, emb.dim)
