"""The ``mneme`` command.

    mneme run STUDY.yaml [--stages collect,train,...] [--force STAGE]
    mneme collect|train|diff|contexts STUDY.yaml [--force]   one stage (e.g. per machine)
    mneme info RUN [--json]
    mneme layers STUDY.yaml [--tokens N] [--json]   where along the depth the two models differ
    mneme interpret RUN [--explainer offline|openai|transformers] [--latents ...]
    mneme evaluate RUN --benchmark SPEC
    mneme confirm RUN [--categories ...] [--max-latents N] [--controls N]   causal test by ablation
    mneme seeds RUN [--seeds 1,2] [--work DIR]   which predictions recur with other dictionary seeds
    mneme dashboard [RUN_OR_FOLDER]
    mneme demo [--rebuild [--precision P] | --refresh] [--runs NAMES] [--no-serve]
    mneme import-crosscoder SRC RUN_OR_STUDY [--revision REV] [--force]   (skip training)
    mneme export-crosscoder RUN DEST [--legacy]      dictionary_learning's layout
    mneme push RUN REPO_ID [--crosscoder] [--private]    share on the Hugging Face hub
    mneme pull REPO_ID DEST [--revision REV]

User errors (bad config, missing or damaged files, a run that is not a run) print one
line to stderr and exit with status 2; ``--traceback`` shows where they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mneme_core.common.config import PRECISIONS, ConfigError, load_config
from mneme_core.common.errors import RunError
from mneme_core.run.reader import damaged, open_run
from mneme_core.run.store import SEED_AGREEMENT_FILE, STAGES

if TYPE_CHECKING:
    from mneme_core.common.hub import Hub

# OSError: a file in the way, a full disk, a folder without permission: the one-line message says which
USER_ERRORS = (ConfigError, RunError, OSError)
PER_STAGE_COMMANDS = ("collect", "train", "diff", "contexts")


# --------------------------------------------------------------------------- commands


def _stage_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(STAGES)}")
    return names


def cmd_run(args: argparse.Namespace) -> int:
    from mneme_core.common.distributed import is_main_process
    from mneme_core.run.pipeline import run_study

    outside = [s for s in args.force or () if args.stages and s not in args.stages]
    if outside:  # forcing a stage that will not run would re-run only the later ones, on its old output
        raise ConfigError(f"--force {outside[0]} is not among --stages {','.join(args.stages)}; add it to --stages")
    cfg = load_config(args.study)
    path = run_study(cfg, stages=args.stages, force=args.force or False, progress=not args.quiet)
    if is_main_process():  # under torchrun the other ranks end after training
        print(f"run ready: {path}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from mneme_core.common.distributed import is_main_process
    from mneme_core.run.pipeline import run_study

    cfg = load_config(args.study)
    path = run_study(cfg, stages=[args.command], force=args.force, progress=not args.quiet)
    if is_main_process():  # one report for all ranks
        print(f"stage {args.command} complete: {path}")
    return 0


def _table_summary(run: Any) -> dict[str, Any]:
    latents = run.latents
    tables: dict[str, Any] = {"latents": {"rows": int(len(latents)), "columns": list(latents.columns)}}
    for name in ("contexts", "histograms", "benchmark", "confirmation"):
        path = run.path / f"{name}.parquet"
        if path.is_file():
            import pyarrow.parquet as pq

            try:
                tables[name] = {"rows": int(pq.ParquetFile(path).metadata.num_rows)}
            except (OSError, ValueError) as exc:  # a damaged table is reported beside the others
                tables[name] = {"error": str(damaged(path, exc))}
    if "attribution" in latents.columns:
        tables["latents"]["attribution"] = {k: int(v) for k, v in latents["attribution"].value_counts().items()}
    if "label_by_norm" in latents.columns:
        tables["latents"]["label_by_norm"] = {k: int(v) for k, v in latents["label_by_norm"].value_counts().items()}
    for folder in ("activations", "crosscoder", "lancedb"):
        tables[folder] = (run.path / folder).is_dir()
    tables["evaluation"] = (run.path / "evaluation.json").is_file()
    if "rows" in tables.get("confirmation", {}):
        from mneme_core.evaluation import confirmation_view

        try:
            table = confirmation_view.load(run.path)
            tables["confirmation"]["verdicts"] = confirmation_view.category_status(table, run.evaluation)
        except confirmation_view.ConfirmationFileError as exc:
            tables["confirmation"]["error"] = str(exc)
    return tables


def run_info(path: str | Path) -> dict[str, Any]:
    """What a run holds: models, layer, stage status + metrics, tables (for `mneme info`)."""
    run = open_run(path)
    m = run.manifest
    stages = {}
    for s in STAGES:
        entry = m.get("stages", {}).get(s, {})
        stages[s] = {
            k: entry[k] for k in ("status", "at", "seconds", "error", "reason", "metrics") if entry.get(k) is not None
        }
        stages[s].setdefault("status", "missing")
    return {
        "name": run.name,
        "path": str(run.path),
        "schema_version": m.get("schema_version"),
        "created": m.get("created"),
        "models": m.get("models"),
        "layer": m.get("layer"),
        "stages": stages,
        "tables": _table_summary(run),
        "provenance": m.get("provenance", []),
    }


def _format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


def cmd_info(args: argparse.Namespace) -> int:
    info = run_info(args.run)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    models = info["models"] or {}
    print(f"run      {info['name']}  ({info['path']}, schema v{info['schema_version']}, created {info['created']})")
    for role in ("base", "ft"):
        spec = models.get(role) or {}
        print(f"{role:<8} {spec.get('source', '?')}:{spec.get('path', '?')}")
    print(f"layer    {info['layer']}")
    print("stages")
    for stage, entry in info["stages"].items():
        line = f"  {stage:<11} {entry['status']:<9}"
        if "seconds" in entry:
            line += f" {entry['seconds']:.1f}s"
        if entry.get("error"):
            line += f"  error: {entry['error']}"
        if entry.get("reason"):
            line += f"  ({entry['reason']})"
        print(line)
        for key, value in (entry.get("metrics") or {}).items():
            print(f"      {key} = {_format_metric(value)}")
    tables = info["tables"]
    lat = tables["latents"]
    print(f"latents  {lat['rows']} rows, {len(lat['columns'])} columns")
    for key in ("attribution", "label_by_norm"):
        if key in lat:
            print(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in lat[key].items()))
    for name in ("contexts", "histograms", "benchmark", "confirmation"):
        if name in tables and "rows" in tables[name]:
            print(f"{name:<13}{tables[name]['rows']} rows")
        elif name in tables:
            print(f"{name:<13}{tables[name]['error']}")
    confirmation = tables.get("confirmation", {})
    if confirmation.get("verdicts"):
        print("  verdicts: " + ", ".join(f"{c} {v}" for c, v in confirmation["verdicts"].items()))
    if confirmation.get("error") and "rows" in confirmation:
        print(f"  {confirmation['error']}")
    print(
        "files    "
        + ", ".join(
            f"{k}: {'yes' if tables[k] else 'no'}" for k in ("activations", "crosscoder", "lancedb", "evaluation")
        )
    )
    return 0


def _latents_spec(text: str) -> str:
    """attributed | all | amplified,suppressed,unchanged | comma-separated latent ids."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("--latents is empty")
    if len(parts) == 1 and parts[0] in ("attributed", "all"):
        return parts[0]
    labels = {"amplified", "suppressed", "unchanged"}
    if all(p in labels for p in parts) or all(p.isdigit() for p in parts):
        return ",".join(parts)
    raise argparse.ArgumentTypeError(
        f"--latents {text!r}: use 'attributed', 'all', labels like 'amplified,suppressed', or ids like '3,17,42'"
    )


def cmd_layers(args: argparse.Namespace) -> int:
    from mneme_core.analysis.layers import profile_lines, scan_study
    from mneme_core.collect.corpus import CorpusError
    from mneme_core.collect.models import ModelError

    cfg = load_config(args.study)
    if args.tokens < 1:
        raise ConfigError(f"--tokens must be at least 1, got {args.tokens}")
    try:
        profile, chosen = scan_study(cfg, args.tokens, progress=not args.quiet)
    except (ModelError, CorpusError) as exc:  # the study's models or corpus: the user's input
        raise ConfigError(str(exc)) from exc
    if args.json:
        print(json.dumps({"layer": chosen, "profile": profile.to_dict(orient="records")}, indent=2))
    else:
        print("\n".join(profile_lines(profile, chosen)))
    return 0


def cmd_interpret(args: argparse.Namespace) -> int:
    from mneme_core.interp.selection import select_latents
    from mneme_core.run.pipeline import rerun_with

    changes = {
        k: v
        for k, v in (
            ("explainer", args.explainer),
            ("latents", args.latents),
            ("max_latents", args.max_latents),
            ("base_url", args.base_url),
            ("model", args.model),
        )
        if v is not None
    }
    if args.latents is not None:  # a wrong id is refused before the run's settings change
        try:
            select_latents(open_run(args.run).latents, args.latents)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    # new descriptions mean new categories, so the prediction is re-made too (skipped without a benchmark)
    rerun_with(args.run, "interpret", changes, ["interpret", "categories", "evaluate"], progress=not args.quiet)
    print(f"interpreted: {args.run}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mneme_core.benchmarks.loaders import absolute_spec, check_benchmark
    from mneme_core.run.pipeline import rerun_with

    spec = absolute_spec(args.benchmark)
    try:  # a benchmark that cannot be read is refused before the run's settings change
        check_benchmark(spec, args.run)
    except ValueError as exc:  # BenchmarkError, and pandas' own parse errors
        raise ConfigError(str(exc)) from None
    changes: dict[str, Any] = {"benchmark": spec}
    if args.description is not None:
        changes["intervention_description"] = args.description
    rerun_with(args.run, "evaluation", changes, ["evaluate"], progress=not args.quiet)
    record = open_run(args.run).evaluation or {}
    print(_evaluation_summary(record))
    print(f"the whole record: {Path(args.run) / 'evaluation.json'}")
    return 0


def _evaluation_summary(record: dict[str, Any]) -> str:
    """T, P and the scores of MNEME and its baselines, a line each."""
    from mneme_core.views.explore import fmt

    lines = [f"T (degraded): {', '.join(sorted(record.get('T') or [])) or '(none)'}"]
    lines.append(f"P (MNEME):    {', '.join(sorted(record.get('P') or [])) or '(none)'}")
    for name, scores in (record.get("metrics") or {}).items():
        if isinstance(scores, dict) and "f1" in scores:
            # a random baseline's figures are distributions over draws: their means here
            values = {k: v.get("mean") if isinstance(v, dict) else v for k, v in scores.items()}
            figures = " · ".join(f"{k} {fmt(values.get(k), 3)}" for k in ("accuracy", "precision", "f1"))
            lines.append(f"  {name:<16} {figures}" + (" (mean over draws)" if values != scores else ""))
    return "\n".join(lines)


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names:
        raise argparse.ArgumentTypeError("the list is empty: name at least one")
    return names


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def cmd_confirm(args: argparse.Namespace) -> int:
    from mneme_core.evaluation.confirmation import ConfirmSettings, run_confirmation
    from mneme_core.evaluation.confirmation_view import CONFIRMATION_FILE, summary

    settings = ConfirmSettings(
        categories=args.categories or (),
        max_latents=args.max_latents,
        controls=args.controls,
        others=args.others,
        questions=args.questions or "",
        limit_per_category=args.limit_per_category,
        z=args.z,
        min_effect=args.min_effect,
        batch_size=args.batch_size,
        device=args.device,
        replace=args.replace,
    )
    table = run_confirmation(args.run, settings, progress=not args.quiet)
    print(summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written: {Path(args.run) / CONFIRMATION_FILE}")
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from mneme_core.evaluation import seeds

    record = seeds.measure(args.run, args.seeds or seeds.DEFAULT_SEEDS, work=args.work, progress=not args.quiet)
    print(seeds.quality_frame(record).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for direction in record["seeds"][0]["predicted"]:
        print(f"{direction}: {seeds.agreement_note(record, direction)}")
    print(f"written: {Path(args.run) / SEED_AGREEMENT_FILE}")
    return 0


def _seed_list(text: str) -> tuple[int, ...]:
    return tuple(_count(s) for s in _name_list(text))


def cmd_dashboard(args: argparse.Namespace) -> int:
    from mneme_dashboard import serve

    roots = []
    if args.run:
        if not Path(args.run).is_dir():
            what = "is a file, not a run folder" if Path(args.run).exists() else "does not exist"
            raise ConfigError(f"{args.run} {what}; give a run folder or a folder of runs")
        roots = [Path(args.run).resolve()]
    serve(roots)


def cmd_demo(args: argparse.Namespace) -> int:
    from mneme_core import demo

    for flag, given in (("--runs", args.runs), ("--no-serve", args.no_serve)):
        if given and not (args.rebuild or args.refresh):
            raise ConfigError(
                f"{flag} goes with a rebuild or a refresh; add --rebuild or --refresh "
                "(`mneme demo` alone opens every committed run)"
            )
    if args.rebuild and args.refresh:
        raise ConfigError("--rebuild and --refresh are two ways to build the demo; give one")
    if args.precision is not None and not args.rebuild:
        raise ConfigError(
            "--precision goes with --rebuild (it sets the precision the runs' dictionaries are trained and read in)"
        )
    result = demo.main(
        rebuild=args.rebuild,
        refresh=args.refresh,
        runs=args.runs,
        serve_after=not args.no_serve,
        precision=args.precision,
    )
    return int(result) if isinstance(result, int) else 0


def _hub(args: argparse.Namespace) -> Hub:
    from mneme_core.common.hub import Hub

    return Hub(endpoint=args.endpoint)


def cmd_import_crosscoder(args: argparse.Namespace) -> int:
    from mneme_core.dictionary.interop import import_crosscoder

    path = import_crosscoder(args.src, args.target, revision=args.revision, force=args.force, hub=_hub(args))
    metrics = open_run(path).stage_metrics("train")
    print(
        f"imported {metrics['format']} cross-coder ({metrics['n_latents']} latents, k {metrics['k']}) into {path}; "
        "`mneme run STUDY.yaml` goes on from the diff stage"
    )
    if not metrics["threshold_calibrated"]:
        print("note: its threshold is not calibrated, so encoding keeps the top k·batch latents of each batch")
    return 0


def cmd_export_crosscoder(args: argparse.Namespace) -> int:
    from mneme_core.dictionary.interop import export_crosscoder

    dest = export_crosscoder(args.run, args.dest, legacy=args.legacy)
    print(f"dictionary_learning cross-coder written: {dest}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    if args.crosscoder:
        from mneme_core.dictionary.interop import read_crosscoder

        model, _ = read_crosscoder(Path(args.run) / "crosscoder")
        url = model.push_to_hub(args.repo_id, private=args.private or None, hub=_hub(args))
    else:
        url = open_run(args.run).push_to_hub(args.repo_id, private=args.private or None, hub=_hub(args))
    print(f"pushed: {url}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from mneme_core.run.sharing import pull_run

    path = pull_run(args.repo_id, args.dest, revision=args.revision, hub=_hub(args))
    print(f"run ready: {path}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mneme", description="Find the side effects of fine-tuning by sparse model diffing."
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # the same two options after the command too (`mneme info RUN --traceback`); SUPPRESS keeps
    # a value given before the command when they are not repeated after it
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    anywhere.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, parents: Sequence[argparse.ArgumentParser] = (), **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[anywhere, *parents], **kwargs)

    p = command("run", help="run or resume a study (all stages)")
    p.add_argument("study", help="study YAML file")
    p.add_argument("--stages", type=_stage_list, default=None, help=f"comma-separated subset of: {','.join(STAGES)}")
    p.add_argument(
        "--force",
        type=_stage_list,
        default=None,
        metavar="STAGE",
        help="re-run these stages (and every later one) even if complete",
    )
    p.set_defaults(fn=cmd_run)

    for stage in PER_STAGE_COMMANDS:
        p = command(stage, help=f"run only the {stage} stage (earlier stages must be complete)")
        p.add_argument("study", help="study YAML file")
        p.add_argument("--force", action="store_true", help="re-run even if complete")
        p.set_defaults(fn=cmd_stage)

    p = command("info", help="what a run holds: stages, metrics, tables")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_info)

    p = command(
        "layers",
        help="how much the two models' activations differ at every layer, on the study's corpus (reads no benchmark)",
    )
    p.add_argument("study", help="study YAML file")
    p.add_argument(
        "--tokens",
        type=int,
        default=20_000,
        help="corpus tokens to scan, in whole contexts and at most the study's corpus.n_tokens (default 20,000)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_layers)

    p = command("interpret", help="(re)describe latents of a run, then categorise them")
    p.add_argument("run", help="run directory")
    p.add_argument("--explainer", choices=("offline", "openai", "transformers"), default=None)
    p.add_argument(
        "--latents", type=_latents_spec, default=None, help="attributed | all | amplified,suppressed | ids like 3,17,42"
    )
    p.add_argument("--max-latents", type=int, default=None, help="explain at most this many (0 = no limit)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="model name (openai) or path (transformers)")
    p.set_defaults(fn=cmd_interpret)

    p = command("evaluate", help="compare predicted side effects with a benchmark")
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--benchmark", required=True, help="CSV/JSON file, 'lm_eval:BEFORE.json,AFTER.json' or 'runner:FILE'"
    )
    p.add_argument("--description", default=None, help="one-line description of the intervention (naive baseline)")
    p.set_defaults(fn=cmd_evaluate)

    p = command(
        "confirm",
        help="test predicted side effects by ablating their latents at layer L",
        description="Ablate each tested category's latents in the base model (and restore them in the "
        "fine-tuned one) with a hook at the study's layer, re-score its benchmark questions, "
        "and compare with random latent sets of the same activation mass. Resumable; writes "
        "confirmation.parquet in the run.",
    )
    p.add_argument("run", help="run directory (with an evaluation)")
    p.add_argument(
        "--categories",
        type=_name_list,
        default=None,
        help="comma-separated benchmark categories (default: predicted ones plus contrasts)",
    )
    p.add_argument(
        "--max-latents", type=_count, default=32, help="test at most this many latents per category (0 = all listed)"
    )
    p.add_argument(
        "--controls", type=_count, default=5, help="random mass-matched latent sets per category (>= 2 to decide)"
    )
    p.add_argument("--others", type=_count, default=2, help="unchanged categories also scored under each ablation")
    p.add_argument(
        "--questions",
        default=None,
        help="multiple-choice question file(s) (default: the run's 'runner:FILE' benchmark)",
    )
    p.add_argument(
        "--limit-per-category", type=_count, default=None, help="score at most this many questions per category"
    )
    p.add_argument("--z", type=float, default=2.0, help="control SDs the effect must clear (default 2)")
    p.add_argument(
        "--min-effect",
        type=float,
        default=None,
        help="smallest score change that counts (default: the evaluation's degrade_threshold)",
    )
    p.add_argument(
        "--batch-size", type=_count, default=None, help="questions per forward (default: the run's runner_batch_size)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the run's models.device)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="let this call's table replace one that holds categories it does not test (refused otherwise)",
    )
    p.set_defaults(fn=cmd_confirm)

    p = command(
        "seeds",
        help="retrain a run's dictionary with other seeds and show which predictions recur",
        description="Copy the run once per seed (its activation store hard-linked, not recomputed), retrain "
        "the cross-coder with that seed and re-run every later stage with the run's own settings, then "
        "write seed_agreement.json in the run: each seed's quality and predicted categories. Costs one "
        "training and reading per seed; resumable.",
    )
    p.add_argument("run", help="run directory (evaluated, with its activation store)")
    p.add_argument("--seeds", type=_seed_list, default=None, help="comma-separated training seeds (default 1,2)")
    p.add_argument("--work", default=None, help="where the copies go (default: RUN/seeds)")
    p.set_defaults(fn=cmd_seeds)

    p = command("dashboard", help="open the dashboard (streamlit)")
    p.add_argument("run", nargs="?", default=None, help="a run directory or a folder of runs")
    p.set_defaults(fn=cmd_dashboard)

    p = command("demo", help="open the bundled demo study; --rebuild reproduces it")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo study from nothing (CPU, ~1 h)")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="re-run only the categories and evaluation stages of the committed runs with the current "
        "demo settings (minutes, no model)",
    )
    p.add_argument(
        "--runs",
        type=_name_list,
        default=None,
        help="with --rebuild or --refresh: only these runs, comma-separated (e.g. lora-people); "
        "the others and their record in build.json stay as they are",
    )
    p.add_argument(
        "--no-serve", action="store_true", help="with --rebuild or --refresh: stop after it, do not open the dashboard"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="with --rebuild: the cross-coder's encoder and the sentence embedder in float32 or bfloat16 "
        "(about 1.2x / 1.6x faster where the CPU has native bf16, very slow where it has not); "
        "auto (the default) takes bfloat16 where this CPU has native bf16, measured by a short matmul. "
        "Collection, the interventions and the benchmark stay float32",
    )
    p.set_defaults(fn=cmd_demo)

    endpoint = argparse.ArgumentParser(add_help=False)
    endpoint.add_argument("--endpoint", default=None, help="hub endpoint (default: HF_ENDPOINT or huggingface.co)")

    p = command(
        "import-crosscoder",
        parents=[endpoint],
        help="use a trained cross-coder (MNEME or dictionary_learning) instead of training one",
    )
    p.add_argument("src", help="folder, .safetensors file or hub repo id (owner/name)")
    p.add_argument("target", help="run directory or study YAML (its run is created)")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit")
    p.add_argument("--force", action="store_true", help="replace the run's cross-coder")
    p.set_defaults(fn=cmd_import_crosscoder)

    p = command("export-crosscoder", help="write a run's cross-coder in dictionary_learning's layout")
    p.add_argument("run", help="run directory (or a cross-coder folder)")
    p.add_argument("dest", help="folder to write model.safetensors + config.json into")
    p.add_argument(
        "--legacy",
        action="store_true",
        help="fold the activation scale into the weights (releases without an activation normaliser)",
    )
    p.set_defaults(fn=cmd_export_crosscoder)

    p = command(
        "push", parents=[endpoint], help="share a run (dataset repo) or its cross-coder (model repo) on the hub"
    )
    p.add_argument("run", help="run directory")
    p.add_argument("repo_id", help="owner/name")
    p.add_argument("--crosscoder", action="store_true", help="push only the cross-coder, to a model repo")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(fn=cmd_push)

    p = command("pull", parents=[endpoint], help="download a run shared on the hub into a folder")
    p.add_argument("repo_id", help="owner/name of the dataset repo")
    p.add_argument("dest", help="folder for the run")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit")
    p.set_defaults(fn=cmd_pull)
    return parser


# the commands every torchrun rank takes part in (the stages decide which ranks run what); any
# other command runs on rank 0 alone
TORCHRUN_COMMANDS = frozenset({"run", *PER_STAGE_COMMANDS})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in TORCHRUN_COMMANDS and "RANK" in os.environ:  # torch is imported only then
        from mneme_core.common.distributed import is_main_process

        if not is_main_process():
            return 0  # a second torchrun rank would redo a one-process command into the same files
    try:
        return args.fn(args)
    except BrokenPipeError:  # `mneme info RUN | head`: the reader left, nothing went wrong (before OSError)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — stops the flush-at-exit error
        return 0
    except USER_ERRORS as exc:
        if args.traceback:
            raise
        print(f"mneme: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mneme: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
