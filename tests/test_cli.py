"""The `mneme` command: example studies validate, bad inputs are one clear line + exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_study_dict
from tiny import save_model, tiny_llama, tiny_tokenizer

from mneme_core import cli
from mneme_core.common.config import load_config
from mneme_core.run.store import read_manifest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_study_validates(path):
    cfg = load_config(path)
    assert cfg.name and cfg.models.base.path and cfg.models.ft.path


def test_the_gpu_example_is_the_papers_setting():
    cfg = load_config(Path(__file__).parent.parent / "examples" / "zephyr_rmu_gpu.yaml")
    assert (cfg.models.base.path, cfg.models.ft.path) == ("HuggingFaceH4/zephyr-7b-beta", "cais/Zephyr_RMU")
    assert (cfg.models.layer, cfg.crosscoder.expansion, cfg.crosscoder.k) == (14, 32, 100)
    assert cfg.models.base.dtype == cfg.models.ft.dtype == "bfloat16" and cfg.models.device == "cuda"


def _write_study(tmp_path: Path, base: Path, ft: Path, corpus: Path, **patch) -> Path:
    data = tiny_study_dict(base, ft, corpus, tmp_path / "run")
    for key, value in patch.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _fails_cleanly(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()  # drop setup output (e.g. transformers' save progress)
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _assert_not_complete(run_dir: Path, stage: str) -> None:
    manifest = read_manifest(run_dir)
    assert manifest["stages"][stage]["status"] == "failed"
    assert all(s["status"] != "complete" for s in manifest["stages"].values())


def test_wrong_config_key_names_the_key_and_creates_nothing(tmp_path, tiny_model_dirs, tiny_corpus, capsys):
    study = _write_study(tmp_path, *tiny_model_dirs, tiny_corpus, training={"learning_rate": 1e-3})
    _fails_cleanly(capsys, ["run", str(study)], "training.learning_rate")
    assert not (tmp_path / "run").exists()


def test_missing_study_file(tmp_path, capsys):
    _fails_cleanly(capsys, ["run", str(tmp_path / "nope.yaml")], "nope.yaml")


def test_missing_corpus_file(tmp_path, tiny_model_dirs, capsys):
    study = _write_study(tmp_path, *tiny_model_dirs, tmp_path / "missing.jsonl")
    _fails_cleanly(capsys, ["-q", "run", str(study)], "missing.jsonl")
    _assert_not_complete(tmp_path / "run", "collect")


def test_missing_model_folder(tmp_path, tiny_model_dirs, tiny_corpus, capsys):
    study = _write_study(tmp_path, tiny_model_dirs[0], tmp_path / "no_such_model", tiny_corpus)
    _fails_cleanly(capsys, ["-q", "run", str(study)], "no_such_model")
    _assert_not_complete(tmp_path / "run", "collect")


def test_mismatched_hidden_sizes(tmp_path, tiny_model_dirs, tiny_corpus, capsys):
    tok = tiny_tokenizer()
    wide = save_model(tiny_llama(tok, hidden_size=48), tok, tmp_path / "wide")
    study = _write_study(tmp_path, tiny_model_dirs[0], wide, tiny_corpus)
    _fails_cleanly(capsys, ["-q", "run", str(study)], "hidden size", "32", "48")
    _assert_not_complete(tmp_path / "run", "collect")


def test_corrupt_safetensors(tmp_path, tiny_model_dirs, tiny_corpus, capsys):
    broken = shutil.copytree(tiny_model_dirs[1], tmp_path / "broken")
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header" + b"\0" * 64)
    study = _write_study(tmp_path, tiny_model_dirs[0], broken, tiny_corpus)
    _fails_cleanly(capsys, ["-q", "run", str(study)], weights.name)
    _assert_not_complete(tmp_path / "run", "collect")


def test_per_stage_command_needs_the_earlier_stages(tmp_path, tiny_model_dirs, tiny_corpus, capsys):
    study = _write_study(tmp_path, *tiny_model_dirs, tiny_corpus)
    _fails_cleanly(capsys, ["-q", "train", str(study)], "needs stage 'collect'", "mneme collect")


def test_info_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    _fails_cleanly(capsys, ["info", str(tmp_path)], "not a MNEME run")


def test_bad_stage_name_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", str(tmp_path / "s.yaml"), "--stages", "collect,trian"])
    assert exc.value.code == 2
    assert "trian" in capsys.readouterr().err


def test_info_reports_stages_metrics_and_tables(tiny_run, capsys):
    assert cli.main(["info", str(tiny_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "tiny"
    assert info["stages"]["collect"]["status"] == "complete"
    assert info["stages"]["collect"]["metrics"]["n_tokens"] > 0
    assert info["tables"]["latents"]["rows"] == 64
    assert sum(info["tables"]["latents"]["attribution"].values()) == 64
    assert cli.main(["info", str(tiny_run)]) == 0
    text = capsys.readouterr().out
    assert "collect" in text and "complete" in text and "latents  64 rows" in text


def test_demo_runs_or_no_serve_without_rebuild_or_refresh_is_refused(capsys):
    """`--runs` and `--no-serve` only qualify a rebuild or a refresh; alone they must not open
    the dashboard as if the choice had been applied, nor silently do nothing."""
    _fails_cleanly(capsys, ["demo", "--runs", "lora-people"], "--runs", "--rebuild or --refresh")
    _fails_cleanly(capsys, ["demo", "--no-serve"], "--no-serve", "--rebuild or --refresh")
    _fails_cleanly(capsys, ["demo", "--refresh", "--precision", "bfloat16"], "--precision", "--rebuild")


def test_demo_main_without_serving_returns_instead_of_opening_the_dashboard():
    """``serve_after=False`` (what --no-serve passes after a rebuild or refresh) returns 0;
    serving would block until the timeout, so a regression fails here instead of hanging."""
    code = "import sys; from mneme_core import demo; sys.exit(demo.main(serve_after=False))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "damage, stage",
    [("latents.parquet", "diff"), ("run.json", None)],
)
def test_a_damaged_run_file_is_named_with_the_stage_that_remakes_it(tiny_run, tmp_path, capsys, damage, stage):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / damage).write_bytes((run / damage).read_bytes()[:40] if damage != "run.json" else b"[1, 2]")
    err = _fails_cleanly(capsys, ["info", str(run)], damage)
    assert (f"--force {stage}" in err) if stage else "not a MNEME manifest" in err


def test_a_damaged_evaluation_record_is_a_run_error_naming_it(tiny_run, tmp_path):
    from mneme_core import open_run
    from mneme_core.common.errors import RunError

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "evaluation.json").write_text('{"T": ')
    with pytest.raises(RunError, match=r"evaluation\.json cannot be read.*--force evaluate"):
        _ = open_run(run).evaluation
    (run / "evaluation.json").write_text("[1]")
    with pytest.raises(RunError, match="not a JSON object"):
        _ = open_run(run).evaluation


def test_info_reports_a_damaged_side_table_beside_the_others(tiny_run, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "contexts.parquet").write_bytes(b"not parquet")
    capsys.readouterr()
    assert cli.main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "contexts.parquet cannot be read" in out and "--force contexts" in out
    assert "histograms" in out and "rows" in out  # the readable tables are still listed


def test_export_refuses_to_overwrite_the_runs_own_crosscoder_or_a_file(tiny_run, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    weights = (run / "crosscoder" / "model.safetensors").read_bytes()
    _fails_cleanly(capsys, ["export-crosscoder", str(run), str(run / "crosscoder")], "holds a MNEME cross-coder")
    assert (run / "crosscoder" / "model.safetensors").read_bytes() == weights
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _fails_cleanly(capsys, ["export-crosscoder", str(run), str(blocker)], "a-file")


def test_a_yaml_syntax_error_or_a_folder_given_as_a_study_is_one_line(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nmodels: {base: {path: a}\n  ft: [\n")
    _fails_cleanly(capsys, ["run", str(bad)], "bad.yaml is not valid YAML", "line 3")
    _fails_cleanly(capsys, ["run", str(tiny_run)], "is a folder", str(tiny_run / "config.yaml"))


@pytest.mark.parametrize("name, text", [("empty.csv", ""), ("numbers.json", "[1, 2]"), ("bad.parquet", "x")])
def test_an_unreadable_benchmark_is_one_line_and_changes_nothing(tiny_run, tmp_path, capsys, name, text):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    before = (run / "run.json").read_bytes()
    (tmp_path / name).write_text(text)
    _fails_cleanly(capsys, ["-q", "evaluate", str(run), "--benchmark", str(tmp_path / name)], name)
    assert (run / "run.json").read_bytes() == before


def test_global_options_go_before_or_after_the_command():
    parse = cli.build_parser().parse_args
    after = parse(["info", "RUN", "--traceback", "-q"])
    assert after.traceback and after.quiet
    before = parse(["-q", "info", "RUN"])
    assert before.quiet and not before.traceback
    assert not parse(["info", "RUN"]).quiet


def test_force_outside_the_chosen_stages_and_rebuild_with_refresh_are_refused(tiny_run, tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text((tiny_run / "config.yaml").read_text())
    _fails_cleanly(capsys, ["run", str(study), "--stages", "evaluate", "--force", "categories"], "--force categories")
    _fails_cleanly(capsys, ["demo", "--rebuild", "--refresh", "--no-serve"], "give one")
    _fails_cleanly(capsys, ["dashboard", str(study)], "is a file, not a run folder")


def test_evaluate_with_the_runner_scores_named_question_files(tiny_run, tmp_path, capsys, monkeypatch):
    """`--benchmark runner:FILE` (relative here) scores both models on the questions: the
    file is checked and recorded absolute, and a missing one is refused up front."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    rows = [
        {"question": "the cat sat on the", "choices": ["mat", "sea"], "answer": 0, "subject": "animals"},
        {"question": "the dog ran in the", "choices": ["park", "moon"], "answer": 0, "subject": "animals"},
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(capsys, ["-q", "evaluate", str(run), "--benchmark", "runner:nope.jsonl"], "nope.jsonl")
    assert cli.main(["-q", "evaluate", str(run), "--benchmark", "runner:q.jsonl"]) == 0
    from mneme_core import open_run

    assert open_run(run).manifest["config"]["evaluation"]["benchmark"] == f"runner:{tmp_path / 'q.jsonl'}"
    assert list(open_run(run).benchmark["category"]) == ["animals"]
