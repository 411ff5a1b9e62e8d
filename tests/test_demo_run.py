"""Integrity of the committed demo study in data/demo/ (schema, contexts, evaluation, sizes).

``check_demo_dir`` is shared with the slow rebuild test, which runs it on a fresh build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from safetensors import safe_open

from mneme_core import open_run
from mneme_core.common.config import resolve_run_relative
from mneme_core.demo.build import default_demo_dir
from mneme_core.demo.study import INTERVENTIONS
from mneme_core.evaluation import confirmation_view as cv
from mneme_core.evaluation.evaluate import metrics
from mneme_core.run.store import SCHEMA_VERSION

LATENT_COLUMNS = (
    "latent",
    "dec_norm_base",
    "dec_norm_ft",
    "rel_norm",
    "dec_cos",
    "freq",
    "max_act",
    "beta_err_base",
    "beta_err_ft",
    "beta_recon_base",
    "beta_recon_ft",
    "nu_err",
    "nu_recon",
    "shift",
    "attribution",
    "label_by_norm",
    "description",
    "explainer",
    "explanation_score",
    "category",
    "umap_x",
    "umap_y",
)
# four runs (two RMU, the null control, the LoRA fine-tune) of ~25 MB each, plus deltas and adapter
MAX_DATA_BYTES = 110 * 1024 * 1024


def check_run(run_dir: Path, name: str, demo_dir: Path, min_subjects: int = 20, min_questions: int = 100) -> None:
    run = open_run(run_dir)
    m = run.manifest
    assert m["schema_version"] == SCHEMA_VERSION
    assert run.missing_stages() == [], run.missing_stages()
    # the published run points at its committed delta; the delta holds only RMU's tensors
    delta = Path(resolve_run_relative(m["config"], run_dir)["models"]["ft"]["path"])
    if not delta.is_absolute():  # published before runs named their files from their own folder
        delta = demo_dir.parents[1] / delta
    assert delta.resolve() == (demo_dir / "deltas" / f"{name}.safetensors").resolve()
    rmu = INTERVENTIONS[name]
    with safe_open(str(delta), framework="pt") as fh:
        keys = sorted(fh.keys())
    layers = range(rmu.layer - rmu.n_update_layers + 1, rmu.layer + 1)
    assert keys == sorted(f"model.layers.{i}.mlp.{p}.weight" for i in layers for p in rmu.params)
    kinds = {p.get("package") or p.get("kind") for p in m["provenance"]}
    assert {"wordnet-base", "bible-kjv-text", "dict-devil", "intervention", "benchmark"} <= kinds
    assert all(p.get("licence") for p in m["provenance"] if p.get("package"))

    latents = run.latents
    missing = [c for c in LATENT_COLUMNS if c not in latents.columns]
    assert not missing, missing
    assert latents["latent"].is_unique and len(latents) == m["stages"]["train"]["metrics"].get(
        "n_latents", len(latents)
    )
    # every latent that fired has its top contexts; contexts name only real latents
    contexts = run.contexts()
    assert set(contexts["latent"]) <= set(latents["latent"])
    fired = set(latents.loc[latents["freq"] > 0, "latent"])
    top = set(contexts.loc[contexts["kind"] == "top", "latent"])
    assert fired <= top, f"{len(fired - top)} firing latents lack contexts"
    assert contexts["token_ids"].map(len).eq(contexts["tokens"].map(len)).all()
    assert contexts["acts"].map(len).eq(contexts["tokens"].map(len)).all()
    described = latents["description"].notna() & (latents["description"].astype(str) != "")
    assert described[latents["freq"] > 0].all()

    # evaluation agrees with its benchmark table
    bench, ev = run.benchmark, run.evaluation
    assert bench is not None and ev is not None
    assert ev["universe"] == sorted(bench["category"])
    assert ev["T"] == sorted(bench.loc[bench["degraded"], "category"])
    assert len(bench) >= min_subjects and (bench["n_questions"] >= min_questions).all()
    assert ev["metrics"]["mneme"] | metrics(ev["T"], ev["P"], ev["universe"]) == ev["metrics"]["mneme"]
    assert ev["metrics"]["oracle"]["set"] == ev["T"]
    for method in ("random", "naive", "oracle", "activation_diff"):
        assert method in ev["metrics"] and "skipped" not in ev["metrics"][method]
    # causal confirmation of the prediction, where the run carries one (the reduced rebuild
    # always does; `mneme confirm` adds it to a run): every predicted category tested
    if (run_dir / "confirmation.parquet").is_file():
        conf = pd.read_parquet(run_dir / "confirmation.parquet")
        assert {"category", "control", "confirmed", "status", "control_mean", "effect"} <= set(conf.columns)
        target = conf[(conf["set"] == "target") & (conf["scored_category"] == conf["category"])]
        assert set(ev["P"]) <= set(target["category"]) and target["status"].ne("").all()
        assert conf["control"].any()  # mass-matched random sets were scored beside each target
        assert cv.stale_categories(conf, ev) == []  # confirmed against the evaluation the run ships
    assert not (run_dir / "confirmation_cache").exists() and not (run_dir / "benchmark_cache").exists()
    train = m["stages"]["train"]["metrics"]
    assert {"fve_base", "fve_ft", "dead_fraction", "l0_over_k"} <= set(train)
    # θ calibrated on held-out tokens; the check needs enough of them: mean L0 per context
    # ranges 13-32 at the reduced rebuild's k = 16, so its ~290 metric tokens (5 contexts) say
    # more about which contexts they are than about θ
    if train["n_val_tokens"] >= 2000:
        assert 0.8 <= train["l0_over_k"] <= 1.25
    assert m["stages"]["collect"]["metrics"]["excluded_first_tokens"] > 0  # sink tokens were dropped, and counted
    scores = pd.read_csv(demo_dir / "benchmark" / f"scores-{name}.csv")
    merged = bench.merge(scores, on="category", suffixes=("", "_file"))
    assert len(merged) == len(bench)
    assert (merged["score_before"] - merged["score_before_file"]).abs().max() < 1e-9
    assert (merged["score_after"] - merged["score_after_file"]).abs().max() < 1e-9
    # the activation store is not committed (rebuilt); the cross-coder is
    assert not (run_dir / "activations").exists()
    assert (run_dir / "crosscoder" / "model.safetensors").is_file()


def check_demo_dir(demo_dir: Path, names: list[str], min_subjects: int = 20, min_questions: int = 100) -> None:
    for name in names:
        check_run(demo_dir / name, name, demo_dir, min_subjects, min_questions)
    questions = pd.read_parquet(demo_dir / "benchmark" / "questions.parquet")
    screen = pd.read_csv(demo_dir / "benchmark" / "base_accuracy.csv")
    kept = set(screen.loc[screen["kept"], "category"])
    assert set(questions["subject"]) == kept  # at-chance subjects were dropped, the others kept
    assert (screen.loc[screen["kept"], "ci_low"] > 0.25).all()
    bench = open_run(demo_dir / names[0]).benchmark
    assert set(bench["category"]) == kept
    # the benchmark items never appear in any text MNEME or RMU saw
    split = json.loads((demo_dir / "benchmark" / "split.json").read_text())
    assert split["items"]["benchmark"] >= len(questions)


@pytest.fixture(scope="module")
def demo_dir() -> Path:
    path = default_demo_dir()
    if not all((path / name / "run.json").is_file() for name in INTERVENTIONS):
        pytest.skip(f"no committed demo run in {path} yet (build it with `mneme demo --rebuild`)")
    return path


def test_committed_demo_runs_are_complete_and_consistent(demo_dir):
    check_demo_dir(demo_dir, list(INTERVENTIONS))


def test_stronger_rmu_forgets_more(demo_dir):
    info = {n: json.loads((demo_dir / "deltas" / f"{n}.json").read_text()) for n in INTERVENTIONS}
    weak, strong = (info[n]["held_out_report"] for n in ("rmu", "rmu-strong"))
    assert strong["forget_rel_change"] > weak["forget_rel_change"]


def test_committed_data_fits_the_budget(demo_dir):
    data = demo_dir.parent
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert total <= MAX_DATA_BYTES, f"data/ holds {total / 2**20:.1f} MB (budget 110 MB)"


def test_null_control_run_predicts_nothing(demo_dir):
    """The base model against itself, through the same pipeline: (almost) no latent
    attributed, an empty prediction from MNEME and from the dictionary-free baseline."""
    from mneme_core.demo.study import NULL_RUN

    run = open_run(demo_dir / NULL_RUN)
    assert run.manifest["null_control"] is True and run.missing_stages() == []
    lat = run.latents
    assert (lat["attribution"] != "unchanged").mean() <= 0.01
    ev = run.evaluation
    assert ev["T"] == [] and ev["P"] == [] and ev["metrics"]["activation_diff"]["set"] == []


def test_finetune_run_records_its_adapter_and_evaluates_both_directions(demo_dir):
    """The LoRA study: its manifest names the committed adapter (safetensors only, loadable as
    models.ft.source: adapter), and its evaluation holds both directions with every baseline."""
    from mneme_core.collect.models import check_adapter
    from mneme_core.demo.study import FINETUNES

    for name, spec in FINETUNES.items():
        if not (demo_dir / name / "run.json").is_file():
            pytest.skip(f"no committed fine-tune run {name} (build it with `mneme demo --rebuild --runs {name}`)")
        run = open_run(demo_dir / name)
        assert run.missing_stages() == []
        ft = resolve_run_relative(run.manifest["config"], demo_dir / name)["models"]["ft"]
        assert ft["source"] == "adapter"
        assert Path(ft["path"]).resolve() == (demo_dir / "adapters" / name).resolve()
        adapter = check_adapter(ft["path"])
        assert adapter["r"] == spec.lora.r and sorted(adapter["target_modules"]) == sorted(spec.lora.target_modules)
        assert {p.name for p in (demo_dir / "adapters" / name).iterdir()} == {
            "adapter_config.json",
            "adapter_model.safetensors",
        }
        ft_record = [p for p in run.manifest["provenance"] if p.get("role") == "ft"]
        assert ft_record and ft_record[0]["adapter"]["r"] == spec.lora.r  # the manifest records the adapter
        info = json.loads((demo_dir / "adapters" / f"{name}.json").read_text())
        loss = info["held_out_loss"]
        assert loss["subject (held out)"]["change"] < loss["neutral"]["change"] < 0  # it learnt its domain most
        ev = run.evaluation
        assert set(ev["directions"]) == {"degraded", "improved"}
        for direction in ev["directions"].values():
            assert {"mneme", "random", "naive", "oracle", "activation_diff"} <= set(direction["metrics"])
            for method in ("random", "naive", "oracle", "activation_diff"):
                assert "skipped" not in direction["metrics"][method], (method, direction["metrics"][method])
            mneme = direction["metrics"]["mneme"]
            assert mneme | metrics(direction["T"], direction["P"], ev["universe"]) == mneme
