"""Read per-category benchmark scores (before and after an intervention) from files.

Sources:

- a CSV or JSON table the user writes: ``category, score_before, score_after, n_questions``
  (scores are fractions in [0, 1]; JSON is a list of records, or ``{"categories": [...]}``);
- a pair of lm-evaluation-harness results files (``results_*.json``, or the folder holding
  them), one per model. The harness writes ``{"results": {"mmlu_virology": {"acc,none": ..,
  "acc_stderr,none": .., "alias": ..}, ...}, "groups": .., "group_subtasks": ..,
  "n-samples": {"mmlu_virology": {"original": 166, "effective": 166}}, ...}``;
  we keep each leaf task's accuracy and drop group aggregates (``mmlu``, ``mmlu_stem``),
  which would double-count their subjects.

Nothing here unpickles anything: JSON, CSV and Parquet only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mneme_core.common.config import LM_EVAL_PREFIX, RUNNER_PREFIX, map_benchmark_files

BENCHMARK_COLUMNS = ("category", "score_before", "score_after", "n_questions")
PAIRED_COLUMNS = ("n_lost", "n_gained")  # optional: exact paired counts from per-question results
# optional: 95% intervals of each score (our runner writes Wilson intervals)
SCORE_CI_COLUMNS = ("ci_before_low", "ci_before_high", "ci_after_low", "ci_after_high")
# Task-name prefixes stripped to give the subject name (new harness, MMLU-Pro, harness < 0.4).
_TASK_PREFIXES = ("mmlu_pro_", "mmlu_", "hendrycksTest-")


class BenchmarkError(ValueError):
    """A benchmark source is missing or malformed; the message says what to fix."""


def validate_benchmark(df: pd.DataFrame, where: str = "benchmark") -> pd.DataFrame:
    """Check a benchmark table and return it with canonical dtypes (category-sorted).

    Why strict: a percentage where a fraction was meant, or a duplicated subject, silently
    turns every significance test into nonsense.
    """
    missing = [c for c in BENCHMARK_COLUMNS if c not in df.columns]
    if missing:
        raise BenchmarkError(
            f"{where} lacks column(s) {missing}; a benchmark table needs {list(BENCHMARK_COLUMNS)} "
            f"(found {list(df.columns)})"
        )
    keep = list(BENCHMARK_COLUMNS) + [c for c in PAIRED_COLUMNS + SCORE_CI_COLUMNS if c in df.columns]
    out = df[keep].copy()
    if len(out) == 0:
        raise BenchmarkError(f"{where} has no rows; give one row per benchmark category")
    out["category"] = out["category"].astype(str).str.strip()
    if (out["category"] == "").any():
        raise BenchmarkError(f"{where} has an empty category name")
    dup = out["category"][out["category"].duplicated()].unique().tolist()
    if dup:
        raise BenchmarkError(f"{where} lists category {dup[0]!r} more than once; merge or rename the rows")
    for col in ("score_before", "score_after"):
        vals = pd.to_numeric(out[col], errors="coerce")
        if vals.isna().any():
            bad = out["category"][vals.isna()].iloc[0]
            raise BenchmarkError(f"{where}: {col} of {bad!r} is not a number")
        if ((vals < 0) | (vals > 1)).any():
            bad = out["category"][(vals < 0) | (vals > 1)].iloc[0]
            raise BenchmarkError(
                f"{where}: {col} of {bad!r} is {float(vals[out['category'] == bad].iloc[0])}, outside [0, 1]; "
                "give accuracies / rates as fractions (0.74, not 74)"
            )
        out[col] = vals.astype("float64")
    for col in ("n_questions",) + tuple(c for c in PAIRED_COLUMNS if c in out.columns):
        vals = pd.to_numeric(out[col], errors="coerce")
        if vals.isna().any() or (vals != np.round(vals)).any() or (vals < 0).any():
            raise BenchmarkError(f"{where}: {col} must hold non-negative whole numbers")
        out[col] = vals.astype("int64")
    if (out["n_questions"] <= 0).any():
        bad = out["category"][out["n_questions"] <= 0].iloc[0]
        raise BenchmarkError(f"{where}: n_questions of {bad!r} must be > 0 (it sizes the significance test)")
    return out.sort_values("category").reset_index(drop=True)


def load_benchmark_table(path: str | Path) -> pd.DataFrame:
    """Read a user CSV / JSON / Parquet benchmark table."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            df = pd.read_csv(path, comment="#", skipinitialspace=True)
        except (ValueError, UnicodeDecodeError) as exc:  # pandas' EmptyDataError and ParserError are ValueErrors
            raise BenchmarkError(f"{path} could not be read as CSV: {exc}") from exc
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BenchmarkError(f"{path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict) and "results" in data:
            raise BenchmarkError(
                f"{path} looks like an lm-evaluation-harness results file; give the pair as "
                f"'{LM_EVAL_PREFIX}BEFORE.json,AFTER.json'"
            )
        if isinstance(data, dict) and isinstance(data.get("categories"), list):
            data = data["categories"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BenchmarkError(
                f"{path}: expected a list of records, one object per category (or {{'categories': [...]}})"
            )
        df = pd.DataFrame.from_records(data)
    elif suffix == ".parquet":
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise BenchmarkError(f"{path} could not be read as Parquet: {exc}") from exc
    else:
        raise BenchmarkError(f"{path}: unsupported benchmark file type {suffix!r}; use .csv, .json or .parquet")
    return validate_benchmark(df, str(path))


# --------------------------------------------------------------------------- lm-eval


def _results_file(path: Path) -> Path:
    """A results file, or the newest ``results_*.json`` under a harness output folder."""
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.rglob("results*.json"), key=lambda p: (p.stat().st_mtime, p.name))
        if found:
            return found[-1]
        raise BenchmarkError(f"{path} holds no lm-evaluation-harness results*.json file")
    raise BenchmarkError(f"lm-evaluation-harness results not found: {path}")


def _subject(task: str) -> str:
    for prefix in _TASK_PREFIXES:
        if task.startswith(prefix) and len(task) > len(prefix):
            return task[len(prefix) :]
    return task


def _metric(entry: dict[str, Any], metric: str, filt: str) -> tuple[float | None, float | None]:
    """Value and stderr of ``metric`` under the harness's ``metric,filter`` keys (or the
    pre-0.4 bare ``metric`` keys)."""
    for key, err in ((f"{metric},{filt}", f"{metric}_stderr,{filt}"), (metric, f"{metric}_stderr")):
        if key in entry and isinstance(entry[key], (int, float)):
            se = entry.get(err)
            return float(entry[key]), float(se) if isinstance(se, (int, float)) else None
    return None, None


def load_lm_eval_results(path: str | Path, *, metric: str = "acc", filt: str = "none") -> pd.DataFrame:
    """Per-task scores from one lm-evaluation-harness results file.

    Returns ``category, score, n_questions, stderr, task``. The question count comes from
    ``n-samples[task].effective``; files without it (harness < 0.4.2) fall back to the
    count implied by the harness's sample stderr, ``n = p(1-p)/se² + 1``, rounded.
    """
    file = _results_file(Path(path))
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{file} is not valid JSON: {exc}") from exc
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        raise BenchmarkError(f"{file} has no 'results' mapping; is it an lm-evaluation-harness results file?")
    # Group aggregates: listed under "groups", or have subtasks (leaf tasks map to []).
    groups = set(data.get("groups") or {}) | {g for g, subs in (data.get("group_subtasks") or {}).items() if subs}
    n_samples = data.get("n-samples", {}) or {}
    rows = []
    for task, entry in results.items():
        if task in groups or not isinstance(entry, dict):
            continue
        score, se = _metric(entry, metric, filt)
        if score is None:
            continue
        n = (n_samples.get(task) or {}).get("effective")
        if n is None and se:
            n = round(score * (1 - score) / se**2 + 1)
        if not n:
            raise BenchmarkError(
                f"{file}: task {task!r} has no 'n-samples' count and no usable stderr; "
                "re-run the harness (>= 0.4.2 writes n-samples) or write a CSV with n_questions"
            )
        rows.append(
            {
                "category": _subject(task),
                "score": score,
                "n_questions": int(n),
                "stderr": se if se is not None else math.nan,
                "task": task,
            }
        )
    if not rows:
        raise BenchmarkError(f"{file} has no task with metric '{metric},{filt}'; check the metric name")
    return pd.DataFrame(rows).sort_values("category").reset_index(drop=True)


def load_lm_eval_pair(
    before: str | Path, after: str | Path, *, metric: str = "acc", filt: str = "none"
) -> pd.DataFrame:
    """Benchmark table from the harness results of the base (before) and the changed model."""
    b = load_lm_eval_results(before, metric=metric, filt=filt)
    a = load_lm_eval_results(after, metric=metric, filt=filt)
    only_b = sorted(set(b["category"]) - set(a["category"]))
    only_a = sorted(set(a["category"]) - set(b["category"]))
    if only_b or only_a:
        raise BenchmarkError(
            f"the two lm-eval results cover different tasks (only before: {only_b[:5]}, only after: "
            f"{only_a[:5]}); run both models on the same task list"
        )
    merged = b.merge(a, on="category", suffixes=("_before", "_after"))
    differ = merged[merged["n_questions_before"] != merged["n_questions_after"]]
    if len(differ):
        row = differ.iloc[0]
        raise BenchmarkError(
            f"task {row['category']!r} was scored on {row['n_questions_before']} questions before and "
            f"{row['n_questions_after']} after (a --limit?); run both on the same questions"
        )
    df = pd.DataFrame(
        {
            "category": merged["category"],
            "score_before": merged["score_before"],
            "score_after": merged["score_after"],
            "n_questions": merged["n_questions_before"],
        }
    )
    return validate_benchmark(df, f"lm-eval pair ({before}, {after})")


def absolute_spec(spec: str) -> str:
    """``evaluation.benchmark`` with its file paths made absolute (from the working folder),
    so a spec given on the command line still names the same files when the run is later
    resumed from another folder. Empty stays empty (the run's own table)."""
    return map_benchmark_files(spec.strip(), lambda part: str(Path(part).absolute()))


def check_benchmark(spec: str, run_path: str | Path | None = None) -> None:
    """Fail with a BenchmarkError now, before a run's settings change, if ``spec`` cannot
    be evaluated: a table or harness pair that does not load, or a ``runner:`` question
    file that is not there (the evaluate stage scores those itself)."""
    if spec.startswith(RUNNER_PREFIX):
        missing = [p for p in spec[len(RUNNER_PREFIX) :].split(",") if not Path(p.strip()).is_file()]
        if missing:
            raise BenchmarkError(f"question file not found: {missing[0]}")
        return
    try:
        load_benchmark(spec, run_path)
    except (KeyError, TypeError) as exc:  # a harness file of another shape
        raise BenchmarkError(f"benchmark {spec}: {type(exc).__name__}: {exc}") from exc


def load_benchmark(spec: str, run_path: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """Resolve ``evaluation.benchmark`` to a table; returns ``(table, description of source)``.

    ``spec`` is a CSV/JSON/Parquet path, ``lm_eval:BEFORE.json,AFTER.json``, or empty to
    reuse the run's own ``benchmark.parquet`` (written earlier, e.g. by the MC runner).
    Relative paths resolve against the working directory.
    """
    spec = spec.strip()
    if spec.startswith(LM_EVAL_PREFIX):
        parts = [p.strip() for p in spec[len(LM_EVAL_PREFIX) :].split(",")]
        if len(parts) != 2 or not all(parts):
            raise BenchmarkError(f"evaluation.benchmark {spec!r}: write '{LM_EVAL_PREFIX}BEFORE.json,AFTER.json'")
        return load_lm_eval_pair(parts[0], parts[1]), spec
    if spec:
        return load_benchmark_table(spec), spec
    if run_path is not None and (Path(run_path) / "benchmark.parquet").is_file():
        path = Path(run_path) / "benchmark.parquet"
        return load_benchmark_table(path), str(path)
    raise BenchmarkError(
        "no benchmark results: set evaluation.benchmark to a CSV/JSON file "
        f"(category, score_before, score_after, n_questions), '{LM_EVAL_PREFIX}BEFORE.json,AFTER.json', "
        "or 'runner:QUESTIONS_FILE' to score both models with MNEME's multiple-choice runner"
    )
