"""MNEME: find the side effects of fine-tuning and unlearning by sparse model diffing.

The engine. It never imports Streamlit; every stage is a plain function over plain data.
The folders follow the pipeline (docs/ARCHITECTURE.md draws it): ``common`` (atomic writes,
config, errors, shared helpers) → ``run`` (the run directory, the contract) → ``collect``
(models, corpus, paired activations) → ``dictionary`` (the cross-coder) → ``analysis``
(latent scaling, contexts, activation differences) → ``interp`` (descriptions, categories)
→ ``evaluation`` (side effects against benchmarks) → ``views`` (tables and figures); ``cli``
and ``demo`` sit on top.

The public API is re-exported here and imported on first use, so ``import mneme_core``
stays cheap for the dashboard (no torch until a cross-coder is asked for).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Run": "mneme_core.run.reader",
    "open_run": "mneme_core.run.reader",
    "RunError": "mneme_core.common.errors",
    "BatchTopKCrossCoder": "mneme_core.dictionary.crosscoder",
    "train_crosscoder": "mneme_core.dictionary.training",
    "latent_table": "mneme_core.analysis.diffing",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mneme_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
