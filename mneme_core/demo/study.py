"""The demo study's settings: sizes for a 2-core CPU, the two RMU runs, the MNEME config.

Why these sizes (the rebuild must fit well inside an hour on 2 CPU cores, everything
under ``data/`` ≤ 110 MB for the four runs):

- **Layer 15** of 30 (the middle). RMU acts at layer 7 (early-middle, the paper's 7 of 32
  scaled to 30 layers), so MNEME looks downstream of the edit, as in the paper.
- **200k neutral tokens** in 128-token contexts (2–3.5 min per model to collect); the
  neutral corpus is drawn from all domains, ≈ 8% of it from the forget domain. The paper
  used ~200M tokens: this is the demo's main limitation.
- **Cross-coder expansion 4 (2,304 latents), k = 32**, trained on ``train_tokens`` (about
  sixteen passes over the stored tokens; the size was fixed on development scenarios 4 and 5,
  docs/DIFFING.md): a cross-coder is 4·d·F fp32 weights (21 MB at F = 2,304), and a wider
  dictionary would leave most latents seeing too few tokens to be described.
- **RMU**: 100 steps per intervention (``rmu_steps_scale`` 2/3 of the 150 in
  ``INTERVENTIONS``), the cost that dominates after the benchmark.
- **The fine-tuning study** (``FINETUNES``): a LoRA adapter over the same base, trained on
  one subject's retain-set glosses (disjoint from the neutral corpus and the questions),
  100 steps (the same scale); it reuses the first run's base activations.
- **Benchmark**: 100 questions per subject (the minimum the spec asks; a full forward of
  the 135M model per question is the cost); subjects where the base is not clearly above
  chance are dropped before anything else looks at the results.
- Contexts: top 10 windows of 32 tokens + 2 per quantile × 4 quantiles per latent.

``REDUCED`` is the same pipeline at toy sizes, for the slow end-to-end test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mneme_core.common.config import PRECISIONS, Precision
from mneme_core.demo.benchmark import BenchmarkSpec
from mneme_core.demo.split import SplitSpec
from mneme_core.demo.subjects import FORGET_SUBJECTS
from mneme_core.interventions.lora import LoRAConfig
from mneme_core.interventions.rmu import RMUConfig

# pinned to the packaged (GGUF-converted) weights: the committed RMU deltas are made
# against them, and a machine with a hub must not silently swap in the hub weights
BASE_MODEL = "smollm2-135m-instruct@package"
MNEME_LAYER = 15


@dataclass(frozen=True)
class Scenario:
    """What is unlearned: the forget subjects (WordNet subjects, ``subjects.py``) and the
    one-line description the naive baseline reads. The demo is one scenario; the
    development scenario (``DEV``) unlearns another domain with the same machinery, so
    settings can be chosen on it without looking at the demo's benchmark."""

    name: str
    forget_subjects: frozenset[str]
    description: str


DEMO = Scenario("demo", FORGET_SUBJECTS, "unlearned biology and medicine knowledge (RMU)")
DEV = Scenario(
    "dev-physical-science",
    frozenset({"chemistry", "physics", "materials", "weather"}),
    "unlearned chemistry and physical-science knowledge (RMU)",
)


@dataclass(frozen=True)
class DemoSizes:
    corpus_tokens: int = 200_000
    context_length: int = 128
    expansion: int = 4
    k: int = 32
    train_tokens: int = 3_000_000  # fixed on development scenarios 4 and 5 (docs/DIFFING.md)
    train_batch: int = 2048
    questions_per_subject: int = 100
    screen_questions: int = 100  # per subject, for the base-accuracy screen
    top_n: int = 10
    window: int = 32
    rmu_steps_scale: float = 2 / 3  # multiplies every intervention's steps
    collect_batch: int = 8
    subjects: tuple[str, ...] = ()  # benchmark subjects to screen; () = all
    # the cross-coder's encoder and the sentence embedder: "auto" = bfloat16 where this CPU
    # runs a bf16 matmul at least BF16_MIN_SPEEDUP x float32 (native bf16), else float32.
    # bf16 there predicted as float32 did over three dictionary seeds per arm, with the same
    # reconstruction, about 1.2x / 1.6x faster (development scenarios 12, 12b). Collection's
    # forward pass, the interventions, the benchmark scores and confirmation stay float32:
    # bf16 collection moved the activations by 1.4%, over the 1% its rule allowed
    # (development scenario 9, bench/dev_precision.py).
    precision: Precision = "auto"


BF16_MIN_SPEEDUP = 1.5


def resolve_precision(sizes: DemoSizes) -> DemoSizes:
    """``sizes`` with ``precision`` "auto" replaced by what this machine runs fast."""
    if sizes.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {sizes.precision!r}")
    if sizes.precision != "auto":
        return sizes
    from mneme_core.common.hardware import cpu_bf16_speedup

    return replace(sizes, precision="bfloat16" if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "float32")


FULL = DemoSizes()
REDUCED = DemoSizes(
    corpus_tokens=12_000,
    context_length=64,
    expansion=1,
    k=16,
    train_tokens=24_000,
    train_batch=512,
    questions_per_subject=16,
    screen_questions=16,
    top_n=5,
    window=16,
    rmu_steps_scale=0.1,
    subjects=("animals", "human body", "food", "time", "people"),
    precision="float32",  # the tests' build: the same on every CPU, with or without native bf16
)

BENCHMARK = BenchmarkSpec(n_per_subject=120, min_questions=100, seed=0)
SPLIT = SplitSpec(forget_fraction=0.5, retain_fraction=0.25, seed=0)

# The two interventions committed side by side: the second forgets more (twice the
# steering coefficient, twice the learning rate), so the dashboard can show the
# decoder-norm distribution move as forgetting grows. Measured on held-out text at layer 7
# (SmolLM2, this split; 100 / 150 steps): forget activations moved by 1.75× / 5.3× their
# norm, retain activations by 0.10× / 0.18×. 150 steps of 4 = the reference's 150 batches.
INTERVENTIONS: dict[str, RMUConfig] = {
    "rmu": RMUConfig(
        layer=7, steering_scale=4.0, alpha=100.0, lr=1e-3, steps=150, batch_size=4, max_tokens=128, seed=0
    ),
    "rmu-strong": RMUConfig(
        layer=7, steering_scale=8.0, alpha=100.0, lr=2e-3, steps=150, batch_size=4, max_tokens=128, seed=0
    ),
}


@dataclass(frozen=True)
class FineTune:
    """A domain fine-tune: LoRA on the retain-set glosses of one benchmark subject (text
    RMU keeps, so the neutral corpus and the questions never hold it), and the one-line
    description the naive baseline reads."""

    subject: str
    description: str
    lora: LoRAConfig


# The subject was fixed by a rule that reads no score: the benchmark subject outside the
# forget domain with the most retain-set glosses (people: 2,123 glosses; language 1,118,
# geography 1,096 next). LoRA at its own defaults (MLP projections of every layer, r = 8).
FINETUNES: dict[str, FineTune] = {
    "lora-people": FineTune(
        "people",
        "fine-tuned on dictionary definitions of kinds of people (LoRA)",
        LoRAConfig(steps=150, batch_size=4, max_tokens=128, seed=0),
    ),
}


def scaled(cfg: RMUConfig, sizes: DemoSizes) -> RMUConfig:
    return replace(cfg, steps=max(2, round(cfg.steps * sizes.rmu_steps_scale)))


def scaled_lora(cfg: LoRAConfig, sizes: DemoSizes) -> LoRAConfig:
    """The fine-tune at the build's scale (the same step scale as RMU's)."""
    steps = max(2, round(cfg.steps * sizes.rmu_steps_scale))
    return replace(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, steps // 5))


# The null control: the base model against itself, through the same pipeline. It must
# attribute (almost) nothing and predict no side effect; its activations cost nothing
# (both halves are the first run's base halves).
NULL_RUN = "null-control"


def study_config(
    name: str,
    *,
    run_dir: Path,
    delta: Path | None,
    corpus: Path,
    benchmark: Path,
    sizes: DemoSizes,
    reuse_base_from: Path | None = None,
    scenario: Scenario = DEMO,
    adapter: Path | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """The MNEME study for one intervention (``delta`` an RMU delta, ``adapter`` a LoRA
    adapter folder, neither: the null control), as a config mapping (``config.load_config``).

    The benchmark file holds scores already measured by the MC runner (base scored once
    for both interventions); categories come from MNEME's topic list + the safety
    behaviours, never from the benchmark's subject names, so no benchmark information
    reaches discovery.
    """
    precision = resolve_precision(sizes).precision
    config: dict[str, Any] = {
        "name": f"demo-{name}",
        "run_dir": str(run_dir),
        "seed": 0,
        "models": {
            "base": {"source": "named", "path": BASE_MODEL, "dtype": "float32"},
            "ft": (
                {"source": "delta", "path": str(delta), "dtype": "float32"}
                if delta is not None
                else {"source": "adapter", "path": str(adapter), "dtype": "float32"}
                if adapter is not None
                else {"source": "named", "path": BASE_MODEL, "dtype": "float32"}
            ),
            "layer": MNEME_LAYER,
            "device": "cpu",
        },
        "corpus": {
            "files": [str(corpus)],
            "text_field": "text",
            "n_tokens": sizes.corpus_tokens,
            "context_length": sizes.context_length,
            "exclude_control_tokens": True,
            "shuffle_seed": 0,
        },
        "activations": {
            "dtype": "float16",
            "batch_size": sizes.collect_batch,
            "reuse_base_from": str(reuse_base_from) if reuse_base_from else "",
            "forward_dtype": "",  # the models' own, float32 (development scenario 9)
        },
        "crosscoder": {"expansion": sizes.expansion, "k": sizes.k},
        # lr and the dead-latent window chosen for this budget on development scenario 3
        # (bench/dev_training.py, docs/DIFFING.md): the library's lr rule is meant for far
        # longer runs, and a window of 1/4 of the budget starts the aux loss too late
        "training": {
            "batch_size": sizes.train_batch,
            "n_tokens": sizes.train_tokens,
            "lr": 1e-3,
            "dead_tokens": max(sizes.train_tokens // 20, 1),
            "checkpoint_every": 100,
            "seed": 0,
            "dtype": precision,
        },
        "diffing": {},
        "contexts": {"top_n": sizes.top_n, "window": sizes.window, "n_quantiles": 4, "per_quantile": 2},
        "interpret": {"explainer": "offline", "latents": "all", "scorer": "embedding", "embedding_dtype": precision},
        **reading_settings(null=delta is None and adapter is None, scenario=scenario, description=description),
    }
    config["evaluation"]["benchmark"] = str(benchmark)
    return config


def reading_settings(
    *, null: bool, scenario: Scenario = DEMO, description: str | None = None
) -> dict[str, dict[str, Any]]:
    """The ``categories`` and ``evaluation`` sections (less the benchmark file): how a
    trained run is read. Kept apart because ``build.refresh`` re-applies exactly these to
    the published runs. ``description`` replaces the scenario's (a fine-tune's own)."""
    # chosen on the development scenario (bench/dev_rmu.py, docs/DIFFING.md), then fixed:
    # MNEME's own topics (not MMLU's subject list), latents of both directions (RMU shows
    # mostly as amplified latents on forget-domain text)
    return {
        "categories": {"labeler": "taxonomy", "taxonomies": ["topics", "safety"]},
        "evaluation": {
            "direction": "drop",
            "latent_direction": "both",
            "intervention_description": "no change: the base model compared with itself (null control)"
            if null
            else description or scenario.description,
        },
    }
