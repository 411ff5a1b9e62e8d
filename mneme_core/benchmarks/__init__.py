"""Benchmark results in: user tables, lm-evaluation-harness results, our own MC runner.

Every source ends as one *benchmark table* (one row per category):
``category, score_before, score_after, n_questions`` plus optional paired counts
``n_lost`` / ``n_gained`` (questions right before and wrong after, and the reverse) when
per-question results exist. ``mneme_core.evaluation.evaluate`` turns it into the degraded set.
"""

from mneme_core.benchmarks.loaders import (
    BENCHMARK_COLUMNS,
    BenchmarkError,
    load_benchmark,
    load_benchmark_table,
    load_lm_eval_pair,
    load_lm_eval_results,
    validate_benchmark,
)

__all__ = [
    "BENCHMARK_COLUMNS",
    "BenchmarkError",
    "load_benchmark",
    "load_benchmark_table",
    "load_lm_eval_pair",
    "load_lm_eval_results",
    "validate_benchmark",
]
