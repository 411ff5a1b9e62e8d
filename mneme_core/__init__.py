"""MNEME: find the side effects of fine-tuning and unlearning by sparse model diffing.

The engine. It never imports Streamlit; every stage is a plain function over plain data.
"""

from mneme_core.store import Run, RunError, open_run

__all__ = ["Run", "RunError", "open_run"]
__version__ = "0.1.0"
