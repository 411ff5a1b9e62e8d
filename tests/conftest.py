"""Shared test fixtures: tiny real models and a tiny run built by the real pipeline.

``--run-slow`` enables tests marked ``slow`` (skipped by default).

Session fixtures:
- ``tiny_model_dirs``: (base_dir, ft_dir) — two tiny Llama causal LMs saved as
  safetensors folders with one shared tiny tokenizer; the fine-tuned one is a copy with
  perturbed MLP weights (``tests/tiny.py``).
- ``tiny_corpus``: a jsonl corpus of tiny sentences.
- ``tiny_study``: the validated ``StudyConfig`` of the tiny study (run_dir in a temp folder).
- ``tiny_run``: the run directory built by ``pipeline.run_study`` on it — every stage,
  with a small benchmark CSV for the evaluate stage. Treat it as read-only; copy it
  (``shutil.copytree``) before changing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny import (  # tests/ is on sys.path (rootdir conftest)
    save_tiny_pair,
    write_tiny_corpus,
)

REPO = Path(__file__).resolve().parents[1]


def torchrun_cli(
    args: list[str], nproc: int = 2, entry: list[str] | None = None, log_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node N -m mneme_core.cli ARGS`` as the README runs it (``entry``
    replaces ``-m mneme_core.cli``), on CPU ranks (gloo) even on a GPU machine, where one GPU
    cannot host two NCCL ranks. With ``log_dir`` each rank's output goes to its own files
    there (``rank_logs``)."""
    logs = ["--log-dir", str(log_dir), "--redirects", "3"] if log_dir is not None else []
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *logs]
        + (entry or ["-m", "mneme_core.cli"])
        + args,
        env=os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=600,
        capture_output=True,
        text=True,
    )


def rank_logs(log_dir: Path, rank: int) -> tuple[str, str]:
    """(stdout, stderr) of one rank of a ``torchrun_cli(..., log_dir=...)`` call."""
    (folder,) = log_dir.glob(f"*/attempt_0/{rank}")
    return (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()


# Per-subject before/after scores for the tiny study's evaluate stage (MMLU subject
# names, like the categories taxonomy); the numbers only need to be well-formed.
TINY_BENCHMARK = """category,score_before,score_after,n_questions
virology,0.62,0.31,200
college_biology,0.70,0.52,200
professional_law,0.55,0.54,200
high_school_mathematics,0.40,0.41,200
nutrition,0.66,0.50,200
world_religions,0.71,0.70,200
"""


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """The tests use tiny tensors: on a 2-core box OpenMP hand-offs cost more than the maths
    (up to 40x under load), so the suite runs torch on one thread. Benches do not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def tiny_study_dict(base: Path, ft: Path, corpus: Path, run_dir: Path, benchmark: Path | None = None) -> dict:
    """The tiny study as a mapping (tests tweak it before ``load_config``)."""
    return {
        "name": "tiny",
        "run_dir": str(run_dir),
        "models": {
            "base": {"source": "hf", "path": str(base)},
            "ft": {"source": "hf", "path": str(ft)},
            "layer": 2,
            "device": "cpu",
        },
        "corpus": {"files": [str(corpus)], "n_tokens": 1024, "context_length": 32},
        "activations": {"dtype": "float32", "shard_tokens": 512, "batch_size": 8},
        "crosscoder": {"n_latents": 64, "k": 4},
        "training": {
            "batch_size": 128,
            "n_tokens": 4096,
            "warmup_steps": 5,
            "checkpoint_every": 16,
            "dead_tokens": 2048,
            "val_fraction": 0.1,
        },
        "contexts": {"top_n": 4, "window": 8, "n_quantiles": 2, "per_quantile": 1, "hist_bins": 8, "n_random": 16},
        "interpret": {"latents": "all", "max_latents": 10, "n_examples": 4, "n_score_examples": 4},
        "categories": {"umap_neighbors": 5},
        "evaluation": {
            "benchmark": str(benchmark) if benchmark else "",
            "random_draws": 200,
            "intervention_description": "unlearned biology knowledge",
        },
    }


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_tiny_pair(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus") / "corpus.jsonl", n_docs=80)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny_bench") / "benchmark.csv"
    path.write_text(TINY_BENCHMARK)
    return path


@pytest.fixture(scope="session")
def tiny_study(tiny_model_dirs, tiny_corpus, tiny_benchmark, tmp_path_factory):
    from mneme_core.common.config import load_config

    base, ft = tiny_model_dirs
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    return load_config(tiny_study_dict(base, ft, tiny_corpus, run_dir, tiny_benchmark))


@pytest.fixture(scope="session")
def tiny_run(tiny_study) -> Path:
    from mneme_core.run.pipeline import run_study

    return run_study(tiny_study, progress=False)
