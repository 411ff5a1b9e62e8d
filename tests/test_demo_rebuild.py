"""The whole demo rebuild, end to end at reduced size (slow: run with --run-slow).

Real parts throughout: the packaged SmolLM2 base, RMU, the MC runner, the MNEME pipeline.
Then the published folder passes the same integrity checks as the committed demo, and a
second rebuild into the same work folder resumes (every step already done) instead of
recomputing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_demo_run import check_demo_dir  # tests/ is on sys.path
from test_portable import machine_paths_in

from mneme_core.demo.build import rebuild
from mneme_core.demo.study import INTERVENTIONS, REDUCED


@pytest.mark.slow
def test_reduced_rebuild_end_to_end(tmp_path):
    work, out = tmp_path / "work", tmp_path / "data" / "demo"
    names = list(INTERVENTIONS)
    summary = rebuild(sizes=REDUCED, work=work, out=out, names=names, progress=False)
    assert set(summary["seconds"]) >= {"text", "screen", "publish"} | {f"study:{n}" for n in names}
    check_demo_dir(out, names, min_subjects=1, min_questions=REDUCED.questions_per_subject)
    assert machine_paths_in(out, [str(tmp_path), str(Path.home())]) == {}  # publish names no path of this machine
    # the second intervention reused the first one's base activations
    from mneme_core import open_run

    collect = open_run(out / names[1]).stage_metrics("collect")
    assert collect["reused_base_tokens"] == collect["n_tokens"]
    # everything is resumable: a rerun finds every step done and rewrites none of its outputs
    outputs = [
        work / "text" / "questions.parquet",
        *(work / "deltas" / f"{n}.safetensors" for n in names),
        *(work / "scores" / f"{n}.csv" for n in names),
        *(work / "runs" / n / "crosscoder" / "model.safetensors" for n in names),
    ]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    rebuild(sizes=REDUCED, work=work, out=out, names=names, progress=False)
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    check_demo_dir(out, names, min_subjects=1, min_questions=REDUCED.questions_per_subject)
