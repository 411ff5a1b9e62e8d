"""Rebuild the demo study from nothing: text → benchmark screen → RMU → scores → MNEME → publish.

Steps (each resumable; a killed rebuild continues where it stopped):

1. ``text``: read the Debian sources, generate the WordNet benchmark, split by item, write
   forget / retain / neutral documents (jsonl) and the questions (parquet).
2. ``screen``: score the base model on every subject; drop subjects where it is not above
   chance (Wilson 95% lower bound ≤ 1/4). The kept questions are the benchmark.
3. ``rmu:<name>`` per intervention: RMU on forget vs retain text; the result is a delta
   (only the changed tensors) over the base. Checkpointed. ``lora:<name>`` per fine-tune
   (``study.FINETUNES``): a LoRA adapter trained on one subject's retain-set glosses.
4. ``score:<name>``: the MC runner on base and unlearned model (per-question results cached
   by model fingerprint, so the base is scored once for both interventions).
5. ``study:<name>``: the MNEME pipeline (``pipeline.run_study``); the second intervention
   reuses the first one's base activations (``activations.reuse_base_from``), so it costs
   only its own half.
6. ``confirm:<name>``: causal confirmation of each unlearning run's prediction
   (``mneme confirm`` at its defaults; about 20 minutes per run on 2 cores).
7. ``publish``: copy what the dashboard needs into ``data/demo/`` — every run file except
   the activation store and training checkpoints (hundreds of MB, rebuilt in minutes), plus
   the deltas, the adapters, the questions and the base-accuracy screen. The published files name no
   path of the building machine (``portable``), so the folder opens wherever it is.

The work folder (default ``~/.cache/mneme/demo-build``) keeps the big intermediate files.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from mneme_core.common.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    write_parquet,
)
from mneme_core.common.config import PRECISIONS, ModelSpec, Precision, load_config
from mneme_core.common.hardware import cpu_bf16_speedup
from mneme_core.demo import sources
from mneme_core.demo.benchmark import make_questions, to_mc_items
from mneme_core.demo.split import DemoSplit, all_items, documents, split_items, write_jsonl
from mneme_core.demo.study import (
    BASE_MODEL,
    BENCHMARK,
    DEMO,
    FINETUNES,
    FULL,
    INTERVENTIONS,
    NULL_RUN,
    SPLIT,
    DemoSizes,
    Scenario,
    reading_settings,
    resolve_precision,
    scaled,
    scaled_lora,
    study_config,
)
from mneme_core.demo.subjects import subject_index
from mneme_core.dictionary.crosscoder import WEIGHTS_FILE
from mneme_core.evaluation.confirmation_view import CONFIRMATION_FILE
from mneme_core.run.store import LOCK_FILE, REPLICAS_DIR, add_provenance, update_manifest

CHANCE = 0.25
CHARS_PER_TOKEN = 4.0  # rough, only to size the neutral file with headroom
PUBLISH_SKIP = (
    "activations",
    "checkpoints",
    "benchmark_cache",
    "confirmation_cache",
    "confirmation_parts",
    LOCK_FILE,
    REPLICAS_DIR,  # `mneme seeds` copies: their record (seed_agreement.json) is published, not them
)
BENCHMARK_FILES = ("questions.parquet", "base_accuracy.csv", "split.json")


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_demo_dir() -> Path:
    return Path(os.environ.get("MNEME_DEMO_DIR", project_root() / "data" / "demo"))


def default_work_dir() -> Path:
    from mneme_core.collect.models import cache_root

    return Path(os.environ.get("MNEME_DEMO_WORK", cache_root() / "demo-build"))


# --------------------------------------------------------------------------- steps


def prepare_text(work: Path, sizes: DemoSizes, scenario: Scenario = DEMO) -> dict[str, Any]:
    """Step 1: questions + the disjoint text split, written under ``work/text``."""
    out = work / "text"
    summary_path = out / "split.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    questions, split = text_split(scenario)
    write_parquet(out / "questions_all.parquet", questions)
    write_jsonl(out / "forget.jsonl", documents(split.forget, seed=SPLIT.seed))
    write_jsonl(out / "retain.jsonl", documents(split.retain, seed=SPLIT.seed))
    neutral = neutral_documents(split, sizes.corpus_tokens)
    write_jsonl(out / "neutral.jsonl", neutral)
    summary = {
        "items": {name: len(items) for name, items in split.sets().items()} | {"benchmark": len(split.benchmark_keys)},
        "neutral_docs_written": len(neutral),
        "neutral_forget_domain_share": round(
            sum(d["domain"] in scenario.forget_subjects for d in neutral) / max(1, len(neutral)), 4
        ),
        "scenario": scenario.name,
        "forget_subjects": sorted(scenario.forget_subjects),
        "split": asdict(SPLIT),
        "benchmark": asdict(BENCHMARK),
    }
    atomic_write_json(summary_path, summary)
    return summary


def text_split(scenario: Scenario = DEMO) -> tuple[pd.DataFrame, DemoSplit]:
    """The questions and the disjoint item split, from the Debian text packages (seconds)."""
    wn = sources.read_wordnet()
    subjects = subject_index(wn)
    questions = make_questions(wn, subjects, BENCHMARK)
    return questions, split_items(all_items(wn, subjects), questions["item_key"], SPLIT, scenario.forget_subjects)


def neutral_documents(split: DemoSplit, corpus_tokens: int) -> list[dict[str, Any]]:
    """The neutral corpus's documents, in their fixed order, with headroom over
    ``corpus_tokens`` (the corpus reader stops at the token count)."""
    neutral, chars = [], 0
    budget = 1.5 * corpus_tokens * CHARS_PER_TOKEN
    for doc in documents(split.neutral, seed=SPLIT.seed):
        if chars > budget:
            break
        neutral.append(doc)
        chars += len(doc["text"])
    return neutral


def screen_subjects(work: Path, sizes: DemoSizes, base: Any, tokenizer: Any, progress: bool) -> pd.DataFrame:
    """Step 2: base accuracy per subject; keep the subjects clearly above chance."""
    from mneme_core.benchmarks.mc_runner import accuracy_table, score_questions

    path = work / "text" / "base_accuracy.csv"
    if path.is_file():
        return pd.read_csv(path)
    questions = pd.read_parquet(work / "text" / "questions_all.parquet")
    if sizes.subjects:
        questions = questions[questions["subject"].isin(sizes.subjects)]
    screen = questions.groupby("subject", sort=True).head(sizes.screen_questions)
    per_q = score_questions(
        base, tokenizer, to_mc_items(screen), cache_dir=work / "benchmark_cache", progress=progress, desc="screen base"
    )
    acc = accuracy_table(per_q)
    acc["kept"] = acc["ci_low"] > CHANCE
    kept = questions[questions["subject"].isin(acc.loc[acc["kept"], "category"])]
    write_parquet(
        work / "text" / "questions.parquet", kept.groupby("subject", sort=True).head(sizes.questions_per_subject)
    )
    atomic_write_bytes(path, acc.to_csv(index=False).encode())
    return acc


def make_delta(work: Path, name: str, sizes: DemoSizes, base: Any, tokenizer: Any, progress: bool) -> dict[str, Any]:
    """Step 3: RMU → ``work/deltas/<name>.safetensors`` + metrics (checkpointed)."""
    from mneme_core.interventions.rmu import (
        activation_report,
        rmu_unlearn,
        save_rmu_delta,
    )

    delta = work / "deltas" / f"{name}.safetensors"
    info_path = work / "deltas" / f"{name}.json"
    if delta.is_file() and info_path.is_file():
        return json.loads(info_path.read_text())
    cfg = scaled(INTERVENTIONS[name], sizes)
    forget = [json.loads(line)["text"] for line in (work / "text" / "forget.jsonl").read_text().splitlines()]
    retain = [json.loads(line)["text"] for line in (work / "text" / "retain.jsonl").read_text().splitlines()]
    # the last 32 documents of each set are held out from training to measure the effect
    result = rmu_unlearn(
        base,
        tokenizer,
        forget[:-32],
        retain[:-32],
        cfg,
        checkpoint=work / "deltas" / f"{name}.ckpt.safetensors",
        progress=progress,
    )
    report = activation_report(
        base,
        result.model,
        tokenizer,
        forget[-32:],
        retain[-32:],
        result.metrics["layer"],
        result.direction,
        result.steering_coef,
    )
    names = save_rmu_delta(base, result, delta)
    info = {
        "name": name,
        "method": "RMU (Li et al. 2024)",
        "tensors": names,
        "held_out_report": report,
        **result.metrics,
    }
    atomic_write_json(info_path, info)
    (work / "deltas" / f"{name}.ckpt.safetensors").unlink(missing_ok=True)
    return info


def _jsonl_texts(path: Path, domain: str | None = None) -> list[str]:
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    return [d["text"] for d in docs if domain is None or (d["source"] == "wordnet" and d["domain"] == domain)]


def make_adapter(work: Path, name: str, sizes: DemoSizes, base: Any, tokenizer: Any, progress: bool) -> dict[str, Any]:
    """Step 3 for a fine-tune: LoRA → ``work/adapters/<name>/`` (a PEFT folder) + metrics.

    Trained on the subject's retain-set documents less the last 16, which with 16 neutral
    documents (text MNEME reads, not trained on) measure what the fine-tune did to loss."""
    from mneme_core.interventions.lora import lora_finetune, loss_report, save_lora_adapter

    spec = FINETUNES[name]
    folder, info_path = work / "adapters" / name, work / "adapters" / f"{name}.json"
    if folder.is_dir() and info_path.is_file():
        return json.loads(info_path.read_text())
    cfg = scaled_lora(spec.lora, sizes)
    domain = _jsonl_texts(work / "text" / "retain.jsonl", spec.subject)
    if len(domain) < 32:
        raise DemoBuildError(f"only {len(domain)} retain documents for subject {spec.subject!r}; a fine-tune needs 32")
    result = lora_finetune(
        base, tokenizer, domain[:-16], cfg, checkpoint=work / "adapters" / f"{name}.ckpt.safetensors", progress=progress
    )
    held_out = {
        "subject (held out)": domain[-16:],
        "neutral": _jsonl_texts(work / "text" / "neutral.jsonl")[:16],
    }
    report = loss_report(base, result.model, tokenizer, held_out, cfg.max_tokens)
    save_lora_adapter(result, folder, overwrite=True)
    info = {
        "name": name,
        "method": "LoRA (PEFT)",
        "subject": spec.subject,
        "description": spec.description,
        "config": asdict(cfg),
        "training_documents": len(domain) - 16,
        "held_out_loss": report,
        **{k: v for k, v in result.metrics.items() if k != "loss_curve"},
    }
    atomic_write_json(info_path, info)
    (work / "adapters" / f"{name}.ckpt.safetensors").unlink(missing_ok=True)
    return info


def score_models(work: Path, name: str, base: Any, tokenizer: Any, progress: bool) -> Path:
    """Step 4: per-subject scores before/after with the MC runner → ``work/scores/<name>.csv``.
    The null control scores the base against itself (every answer from the cache)."""
    from mneme_core.benchmarks.mc_runner import score_pair
    from mneme_core.collect.models import apply_delta, merge_adapter

    path = work / "scores" / f"{name}.csv"
    if path.is_file():
        return path
    import copy

    ft = base
    if name in FINETUNES:
        ft = merge_adapter(copy.deepcopy(base), work / "adapters" / name)
    elif name != NULL_RUN:
        ft = copy.deepcopy(base)
        apply_delta(ft, work / "deltas" / f"{name}.safetensors")
    questions = pd.read_parquet(work / "text" / "questions.parquet")
    table = score_pair(
        (base, tokenizer),
        (ft, tokenizer),
        to_mc_items(questions),
        cache_dir=work / "benchmark_cache",
        progress=progress,
    )
    atomic_write_bytes(path, table.to_csv(index=False).encode())
    return path


def run_mneme(
    work: Path, name: str, sizes: DemoSizes, first: str | None, progress: bool, scenario: Scenario = DEMO
) -> Path:
    """Step 5: the MNEME study for one intervention (resumable by the pipeline itself)."""
    from mneme_core.run.pipeline import run_study

    run_dir = work / "runs" / name
    reuse = work / "runs" / first / "activations" if first and first != name else None
    null, finetune = name == NULL_RUN, FINETUNES.get(name)
    cfg = load_config(
        study_config(
            name,
            run_dir=run_dir,
            delta=None if null or finetune else work / "deltas" / f"{name}.safetensors",
            adapter=work / "adapters" / name if finetune else None,
            description=finetune.description if finetune else None,
            corpus=work / "text" / "neutral.jsonl",
            benchmark=work / "scores" / f"{name}.csv",
            sizes=sizes,
            reuse_base_from=reuse,
            scenario=scenario,
        )
    )
    run_study(cfg, progress=progress)
    split = json.loads((work / "text" / "split.json").read_text())
    if null:

        def edit_null(m: dict[str, Any]) -> None:
            m["null_control"] = True
            m["demo"] = {"intervention": None, "split": split, "sizes": asdict(sizes)}

        add_provenance(
            run_dir,
            [
                *sources.provenance(),
                {"kind": "control", "name": NULL_RUN, "what": "the base model compared with itself"},
            ],
        )
        update_manifest(run_dir, edit_null)
        return run_dir
    if finetune:
        _record_finetune(work, run_dir, name, sizes, split)
        return run_dir
    rmu_info = json.loads((work / "deltas" / f"{name}.json").read_text())
    add_provenance(
        run_dir,
        [
            *sources.provenance(),
            {
                "kind": "intervention",
                "name": name,
                "method": rmu_info["method"],
                "config": rmu_info["config"],
                "steering_coef": rmu_info["steering_coef"],
                "tensors": rmu_info["tensors"],
                "forget_text": "WordNet glosses of the forget subjects " + ", ".join(split["forget_subjects"]),
                "retain_text": "WordNet glosses of all other subjects, KJV verses, Devil's Dictionary entries",
            },
            _benchmark_provenance(split),
        ],
    )

    def edit(m: dict[str, Any]) -> None:
        m["demo"] = {"intervention": rmu_info, "split": split, "sizes": asdict(sizes)}

    update_manifest(run_dir, edit)
    return run_dir


def _benchmark_provenance(split: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "benchmark",
        "name": "WordNet per-subject multiple choice (built in)",
        "generator": "mneme_core.demo.benchmark",
        "spec": split["benchmark"],
        "licence": "WordNet 3.0 licence",
    }


def _record_finetune(work: Path, run_dir: Path, name: str, sizes: DemoSizes, split: dict[str, Any]) -> None:
    """A fine-tune run's provenance: the adapter, what it was trained on, the benchmark."""
    info = json.loads((work / "adapters" / f"{name}.json").read_text())
    add_provenance(
        run_dir,
        [
            *sources.provenance(),
            {
                "kind": "intervention",
                "name": name,
                "method": info["method"],
                "config": info["config"],
                "adapter": f"adapters/{name}",
                "training_text": f"WordNet glosses of subject {info['subject']} from the retain set "
                "(in neither the neutral corpus nor the questions)",
            },
            _benchmark_provenance(split),
        ],
    )

    def edit(m: dict[str, Any]) -> None:
        m["demo"] = {"intervention": info, "split": split, "sizes": asdict(sizes)}

    update_manifest(run_dir, edit)


def confirm_run(work: Path, name: str, progress: bool) -> Path:
    """Step 6: ``mneme confirm`` at its defaults on one unlearning run (resumable per
    category), scored on the demo's questions. A run whose evaluation leaves nothing to test
    is published without a confirmation (the dashboard then shows the command), and the
    build goes on: a reduced build or another scenario can attribute nothing."""
    from mneme_core.evaluation.confirmation import (
        PLAIN_CACHE_DIR,
        ConfirmSettings,
        NothingToConfirm,
        run_confirmation,
    )

    run_dir = work / "runs" / name
    # the build scored both models on these questions already (score step, keyed by model
    # fingerprint and question tokens): confirmation's plain scores are then cache hits
    if (work / "benchmark_cache").is_dir():
        shutil.copytree(work / "benchmark_cache", run_dir / PLAIN_CACHE_DIR, dirs_exist_ok=True)
    try:
        # replace: the table is this build's, whatever an earlier build into the folder tested
        settings = ConfirmSettings(questions=str(work / "text" / "questions.parquet"), replace=True)
        run_confirmation(run_dir, settings, progress=progress)
    except NothingToConfirm as exc:
        (run_dir / CONFIRMATION_FILE).unlink(missing_ok=True)  # an earlier build's verdicts are not this build's
        tqdm.write(f"confirm:{name}: skipped, {exc}")
    return run_dir


def publish(work: Path, out: Path, names: list[str], confirmed: bool = True) -> None:
    """Step 7: copy the dashboard's files into ``out`` (atomically per run). ``confirmed``
    False (a build without confirmation) leaves out a confirmation an earlier build left in
    the work folder, which would not belong to this build."""
    skip = PUBLISH_SKIP if confirmed else (*PUBLISH_SKIP, CONFIRMATION_FILE)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("deltas", "adapters", "benchmark"):
        (out / sub).mkdir(exist_ok=True)
    for name in names:
        if name in FINETUNES:
            _publish_adapter(work / "adapters" / name, out / "adapters" / name)
            shutil.copy2(work / "adapters" / f"{name}.json", out / "adapters" / f"{name}.json")
        elif name != NULL_RUN:
            shutil.copy2(work / "deltas" / f"{name}.safetensors", out / "deltas" / f"{name}.safetensors")
            shutil.copy2(work / "deltas" / f"{name}.json", out / "deltas" / f"{name}.json")
        shutil.copy2(work / "scores" / f"{name}.csv", out / "benchmark" / f"scores-{name}.csv")
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(work / "runs" / name, tmp, ignore=shutil.ignore_patterns(*skip, ".*.tmp"))
        _half_precision_weights(tmp / "crosscoder" / WEIGHTS_FILE)
        _relocate_run(tmp, name, work, out, ran_in=work / "runs" / name)
        shutil.rmtree(out / name, ignore_errors=True)
        tmp.rename(out / name)
    for file in BENCHMARK_FILES:
        shutil.copy2(work / "text" / file, out / "benchmark" / file)


def _publish_adapter(src: Path, dest: Path) -> None:
    """The two files MNEME loads, the base named portably (PEFT records the building machine's
    path, and adds a boilerplate model card that is left out)."""
    from mneme_core.collect.models import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copy2(src / ADAPTER_WEIGHTS, dest / ADAPTER_WEIGHTS)
    config = json.loads((src / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = BASE_MODEL
    atomic_write_bytes(dest / ADAPTER_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def _half_precision_weights(path: Path) -> None:
    """Store a published cross-coder's weights as float16: half the bytes (each file stays
    under 20 MB, data/ under its budget), and ``BatchTopKCrossCoder.from_pretrained`` casts
    them back into its float32 parameters."""
    from safetensors.torch import load_file, save_file

    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def _portable_names(work: Path, out: Path, name: str) -> list[tuple[str, str]]:
    """(machine path, portable name) pairs for run ``name``, longest path first.

    What the demo ships with is named from the published run's folder (``.``, ``../deltas/
    ...``), which ``config.resolve_run_relative`` finds again wherever the folder is; what
    stays behind in the work folder, the Python environment or the home folder gets a
    provenance name (``$MNEME_DEMO_WORK/text/neutral.jsonl``, ``~/.cache/...``).
    """
    run = out / name
    published = {
        work / "runs" / name: run,
        work / "deltas" / f"{name}.safetensors": out / "deltas" / f"{name}.safetensors",
        work / "deltas" / f"{name}.json": out / "deltas" / f"{name}.json",
        work / "adapters" / name: out / "adapters" / name,
        work / "adapters" / f"{name}.json": out / "adapters" / f"{name}.json",
        work / "scores" / f"{name}.csv": out / "benchmark" / f"scores-{name}.csv",
        **{work / "text" / f: out / "benchmark" / f for f in BENCHMARK_FILES},
        run: run,
        out: out,
    }
    pairs = {str(src): os.path.relpath(dst, run) for src, dst in published.items()}
    left_behind = {
        work: "$MNEME_DEMO_WORK",
        Path(sysconfig.get_paths()["purelib"]): "$SITE_PACKAGES",
        Path(sysconfig.get_paths()["platlib"]): "$SITE_PACKAGES",
        Path.home(): "~",
    }
    for place, label in left_behind.items():
        if len(place.parts) > 1:  # a home folder of "/" names nothing
            pairs.setdefault(str(place), label)
    return sorted(pairs.items(), key=lambda pair: -len(pair[0]))


def portable(obj: Any, names: list[tuple[str, str]]) -> Any:
    """``obj`` (JSON-like) with each machine path in ``names`` replaced by its portable
    name wherever a string holds it (config values, provenance, messages). Matched only
    as a whole path prefix, so ``runs/rmu`` never rewrites ``runs/rmu-strong``."""
    if isinstance(obj, dict):
        return {k: portable(v, names) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, names) for v in obj]
    if isinstance(obj, str):
        for path, name in names:
            # a function, so ``name`` is used as is (no backslash escapes); called within this iteration
            obj = re.sub(r"(?<![\w./-])" + re.escape(path) + r"(?![\w.-])", lambda _: name, obj)
    return obj


def _relocate_run(run_dir: Path, name: str, work: Path, out: Path, ran_in: Path) -> None:
    """Name every path in the published run portably, and say what was left out. ``ran_in``
    is the folder the run's own relative paths start from (the work folder's run when
    publishing, the published run itself when refreshing)."""
    names = _portable_names(work.resolve(), out.resolve(), name)  # the runs record absolute paths (rebuild)

    def edit(m: dict[str, Any]) -> None:
        _absolute_question_sources(m, ran_in)
        m.update(portable(m, names))
        m["published"] = {
            "omitted": ["activations/ (rebuild: mneme demo --rebuild)", "crosscoder/checkpoints/", "benchmark_cache/"],
            "crosscoder_weights": "float16 (loaded as float32)",
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    update_manifest(run_dir, edit)
    (run_dir / LOCK_FILE).unlink(missing_ok=True)  # the edit's lock; a published run holds none
    cfg_yaml = run_dir / "config.yaml"
    if cfg_yaml.is_file():
        data = portable(yaml.safe_load(cfg_yaml.read_text()), names)
        atomic_write_bytes(cfg_yaml, yaml.safe_dump(data, sort_keys=False).encode())
    evaluation = run_dir / "evaluation.json"
    if evaluation.is_file():
        atomic_write_json(evaluation, portable(json.loads(evaluation.read_text()), names))


def _absolute_question_sources(manifest: dict[str, Any], built_in: Path) -> None:
    """``mneme confirm`` names its question files from the run folder it ran in (the work
    folder's); made absolute here, so ``portable`` renames them like every other path."""
    for item in manifest.get("provenance", []):
        if item.get("kind") == "confirmation_questions":
            parts = [p.strip() for p in str(item.get("source", "")).split(",") if p.strip()]
            item["source"] = ",".join(str((built_in / p).resolve()) for p in parts)


def apply_reading_settings(
    run_dir: Path, *, null: bool, scenario: Scenario = DEMO, description: str | None = None
) -> None:
    """Write ``study.reading_settings`` into an existing run's config (validated), so its
    categories and evaluation stages read it the way a fresh build would."""
    from mneme_core.run.pipeline import override_section

    for section, changes in reading_settings(null=null, scenario=scenario, description=description).items():
        override_section(run_dir, section, changes)


def refresh(out: Path | None = None, names: list[str] | None = None, progress: bool = True) -> dict[str, float]:
    """Re-run the categories and evaluation stages of the published runs with the demo's
    current reading settings (``study.reading_settings``), in place; returns seconds per run.

    Why: those two stages read only what a published run keeps (context windows,
    descriptions, the kept context texts of the dictionary-free baseline, benchmark
    scores), so a change of taxonomy or of the latents a prediction reads reaches the
    committed runs without the hour of a rebuild, and gives what a rebuild would: the
    stages before them are deterministic and untouched. No model is needed.
    """
    from mneme_core.run.pipeline import run_config, run_study

    out = Path(out or default_demo_dir()).resolve()
    names = names or [p.name for p in sorted(out.iterdir()) if (p / "run.json").is_file()]
    seconds = {}
    for name in names:
        t0 = time.perf_counter()
        run_dir = out / name
        finetune = FINETUNES.get(name)
        apply_reading_settings(run_dir, null=name == NULL_RUN, description=finetune.description if finetune else None)
        run_study(run_config(run_dir), stages=["categories", "evaluate"], force=True, progress=progress)
        _relocate_run(run_dir, name, default_work_dir().resolve(), out, ran_in=run_dir)
        seconds[name] = round(time.perf_counter() - t0, 1)
    return seconds


# --------------------------------------------------------------------------- driver


# what a work folder's build key without a precision was built in (every build before the setting)
PRECISION_BEFORE_SETTING = "float32"


class DemoBuildError(RuntimeError):
    """The work folder holds a build with other settings; the message says how to start over."""


def _check_work_dir(work: Path, sizes: DemoSizes, scenario: Scenario = DEMO) -> None:
    """Refuse to resume a work folder built with other sizes or settings (no silent mix)."""
    key = json.loads(
        json.dumps(
            {
                "sizes": asdict(sizes),
                "split": asdict(SPLIT),
                "benchmark": asdict(BENCHMARK),
                "interventions": {n: asdict(c) for n, c in INTERVENTIONS.items()},
                "finetunes": {n: asdict(f) for n, f in FINETUNES.items()},
                "scenario": {"name": scenario.name, "forget": sorted(scenario.forget_subjects)},
            }
        )
    )
    path = work / "build_key.json"
    if path.is_file():
        old = json.loads(path.read_text())
        old.get("sizes", {}).setdefault("precision", PRECISION_BEFORE_SETTING)
        if old != key:
            changed = sorted(k for k in key if old.get(k) != key[k] and k != "sizes")
            changed += sorted(f"sizes.{k}" for k in key["sizes"] if old.get("sizes", {}).get(k) != key["sizes"][k])
            raise DemoBuildError(
                f"{work} holds a demo build with other settings ({', '.join(changed)} differ); "
                f"delete it or pass another work folder (MNEME_DEMO_WORK) to rebuild from nothing"
            )
    else:
        atomic_write_json(path, key)


def _precision_for(work: Path, sizes: DemoSizes, asked: Precision | None) -> DemoSizes:
    """``sizes`` with a concrete precision: the one asked for; else the one a build in
    ``work`` began with (a build resumed on another machine must not mix precisions; a build
    from before the setting was float32); else the sizes' own. "auto" becomes what this
    machine runs fast."""
    if asked is not None:
        return resolve_precision(replace(sizes, precision=asked))
    key = work / "build_key.json"
    if key.is_file():
        recorded = json.loads(key.read_text()).get("sizes", {}).get("precision", PRECISION_BEFORE_SETTING)
        if recorded in PRECISIONS and recorded != "auto":
            return replace(sizes, precision=recorded)
    return resolve_precision(sizes)


def rebuild(
    *,
    sizes: DemoSizes = FULL,
    work: Path | None = None,
    out: Path | None = None,
    names: list[str] | None = None,
    null_control: bool = True,
    confirm: bool = True,
    progress: bool = True,
    scenario: Scenario = DEMO,
    precision: Precision | None = None,
) -> dict[str, Any]:
    """Rebuild the demo into ``out`` (default ``data/demo``); returns a summary with timings.
    ``null_control`` adds the base-vs-base study (``NULL_RUN``); ``confirm`` the causal
    confirmation of each unlearning run (a development scenario, which reads only the
    prediction, skips it); ``scenario`` picks what is unlearned (the development scenario
    uses the same steps on another forget set); ``precision`` overrides ``sizes.precision``
    (None: a resumed build keeps the precision it began with)."""
    from mneme_core.collect.models import load_model

    # absolute, so every path the runs record is one publish can name portably
    work = Path(work or default_work_dir()).resolve()
    out = Path(out or default_demo_dir()).resolve()
    some_runs = bool(names)  # some runs only: build.json keeps the record of the others
    names = list(names or [*INTERVENTIONS, *FINETUNES])
    unknown = [n for n in names if n not in INTERVENTIONS and n not in FINETUNES]
    if unknown:
        raise DemoBuildError(f"no demo intervention {unknown[0]!r}; known: {', '.join([*INTERVENTIONS, *FINETUNES])}")
    work.mkdir(parents=True, exist_ok=True)
    sizes = _precision_for(work, sizes, precision)
    _check_work_dir(work, sizes, scenario)
    timings: dict[str, float] = {}
    state: dict[str, Any] = {}

    def base_pair() -> tuple[Any, Any]:
        if "base" not in state:
            state["base"] = load_model(ModelSpec(source="named", path=BASE_MODEL, dtype="float32"))
        return state["base"]

    # The steps of one run, bound to its name with ``partial`` (a loop's lambda would see the last name).
    def intervene(n: str) -> Any:  # RMU's delta or a fine-tune's adapter
        return (make_adapter if n in FINETUNES else make_delta)(work, n, sizes, *base_pair(), progress)

    def score(n: str) -> Any:
        return score_models(work, n, *base_pair(), progress)

    def study(n: str) -> Any:
        return run_mneme(work, n, sizes, names[0], progress, scenario)

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("text", lambda: prepare_text(work, sizes, scenario)),
        ("screen", lambda: screen_subjects(work, sizes, *base_pair(), progress)),
    ]
    for name in names:
        kind = "lora" if name in FINETUNES else "rmu"
        steps.append((f"{kind}:{name}", partial(intervene, name)))
        steps.append((f"score:{name}", partial(score, name)))
    if null_control:
        steps.append((f"score:{NULL_RUN}", partial(score, NULL_RUN)))
    studies = [*names, NULL_RUN] if null_control else names
    for name in studies:
        steps.append((f"study:{name}", partial(study, name)))
    for name in [n for n in names if confirm and n in INTERVENTIONS]:  # causal confirmation of each unlearning run
        steps.append((f"confirm:{name}", partial(confirm_run, work, name, progress)))
    steps.append(("publish", lambda: publish(work, out, studies, confirmed=confirm)))

    t_all = time.perf_counter()
    bar = tqdm(steps, desc="demo rebuild", unit="step", disable=not progress, dynamic_ncols=True)
    for label, fn in bar:
        bar.set_postfix_str(label)
        t0 = time.perf_counter()
        fn()
        timings[label] = round(time.perf_counter() - t0, 1)
        atomic_write_json(work / "build_progress.json", timings)  # a killed build still says where time went
    bar.close()
    summary: dict[str, Any] = {
        "seconds_total": round(time.perf_counter() - t_all, 1),
        "seconds": timings,
        "sizes": asdict(sizes),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "bf16_matmul_speedup": round(cpu_bf16_speedup(), 2),
        },
        "runs": studies,
    }
    if some_runs and (out / "build.json").is_file():  # runs built apart keep the others' record
        earlier = json.loads((out / "build.json").read_text())
        own = {k: v for k, v in timings.items() if k.partition(":")[2] in studies}  # shared steps keep their record
        summary["seconds"] = {**earlier.get("seconds", {}), **own}
        summary["seconds_total"] = round(sum(summary["seconds"].values()), 1)
        summary["runs"] = list(dict.fromkeys([*earlier.get("runs", []), *studies]))
        summary["note"] = (
            f"{', '.join(studies)} built apart on {summary['machine']['cpus']} cores; "
            f"earlier runs: {earlier.get('note', 'as recorded')}"
        )
    atomic_write_json(out / "build.json", summary)
    return summary
