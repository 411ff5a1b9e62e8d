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


def test_bfloat16_embedder_gives_unit_vectors_close_to_float32_and_keeps_its_own_memo():
    """``interpret.embedding_dtype: bfloat16`` changes the numbers a little, never their
    meaning: unit vectors (renormalised in float32), cosine ≥ 0.99 with float32's, the same
    nearest neighbour; the two precisions are separate embedders, so a memo never hands one
    precision's vector to the other."""
    import pytest

    from mneme_core.common.embeddings import get_embedder

    texts = ["a cat sat on the mat", "the sea was rough", "viruses infect cells", "a court ruled on the law"]
    f32, b16 = get_embedder(), get_embedder("", "bfloat16")
    assert f32 is not b16 and b16.dtype == "bfloat16"
    assert get_embedder("", dtype="float32") is f32 and get_embedder(dtype="bfloat16") is b16  # one each
    a, b = f32.encode(texts), b16.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-6)
    assert (a * b).sum(1).min() >= 0.99
    assert (b16.encode(["an infection"]) @ b.T).argmax() == (f32.encode(["an infection"]) @ a.T).argmax() == 2
    with pytest.raises(ValueError, match="embedding dtype must be one of"):
        Embedder(dtype="float16")
