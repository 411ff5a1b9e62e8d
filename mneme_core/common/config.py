"""Typed study configuration, read from YAML and validated before any heavy work.

One YAML file describes a whole study. Every section is a frozen dataclass; loading
checks key names (an unknown key is an error naming its full path, e.g.
``training.lr_warmup``), types and ranges, so a typo fails in a second instead of after an
hour of activation collection.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

MANIFEST = "run.json"  # a run directory's manifest; here because a run's own config.yaml resolves against it
NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")  # a number YAML may have left as text


class ConfigError(ValueError):
    """A study configuration is invalid; the message names the key and the fix."""


# --------------------------------------------------------------------------- sections


# a build's compute precision (the demo's ``DemoSizes.precision``): "auto" = bfloat16 where
# the processor runs it natively (``common.hardware``), else float32
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)

# how a category's latents become a prediction (``evaluation.predict_score``)
PredictScore = Literal["enrichment", "shift", "count", "rank"]


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    ``source`` is one of:
    - ``hf``: a hub id or a local transformers folder in ``path``;
    - ``gguf``: a GGUF file in ``path`` (converted once to safetensors in the cache);
    - ``named``: a name MNEME knows how to resolve offline (e.g. ``smollm2-135m-instruct``);
    - ``delta``: ``base`` model plus a safetensors file ``path`` holding only changed tensors;
    - ``adapter``: ``base`` model plus a PEFT (LoRA) adapter folder ``path``
      (``adapter_config.json`` + ``adapter_model.safetensors``), merged into the weights at
      load, so every stage sees an ordinary model.
    """

    source: Literal["hf", "gguf", "named", "delta", "adapter"] = "hf"
    path: str = ""
    gguf_file: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str = ""

    def validate(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}.path is empty: give a hub id, a folder, a file or a name")


@dataclass(frozen=True)
class ModelsConfig:
    base: ModelSpec = field(default_factory=ModelSpec)
    ft: ModelSpec = field(default_factory=ModelSpec)
    layer: int = -1  # residual stream after this decoder layer; -1 = middle layer
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class CorpusConfig:
    """Neutral text the models are compared on (never the fine-tuning data)."""

    dataset: str = ""  # hub dataset name (users online) ...
    files: tuple[str, ...] = ()  # ... or local text/json/jsonl/parquet files (offline)
    split: str = "train"
    subset: str = ""
    text_field: str = "text"
    messages_field: str = ""  # set to use chat messages with the model's chat template
    n_tokens: int = 100_000
    context_length: int = 128
    exclude_control_tokens: bool = True
    shuffle_seed: int = 0

    def validate(self, where: str) -> None:
        if bool(self.dataset) == bool(self.files):
            raise ConfigError(f"{where}: give exactly one of 'dataset' (hub name) or 'files' (local paths)")
        _positive(self.n_tokens, f"{where}.n_tokens")
        _positive(self.context_length, f"{where}.context_length")


@dataclass(frozen=True)
class ActivationsConfig:
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    shard_tokens: int = 65_536
    batch_size: int = 8  # contexts per forward pass
    # another run's activations/ folder collected with the same base model, corpus, layer
    # and settings: its base halves are reused, so only the fine-tuned model runs
    reuse_base_from: str = ""
    # Massive-activation tokens (attention sinks) are not text signal: in SmolLM2's layer 15
    # the first token after BOS reaches ~150x the median norm and would dominate every sum.
    # Dropped: the first ``skip_first_tokens`` text positions of each context, and tokens
    # whose *base* norm exceeds ``massive_norm_multiple`` x the batch median (0 = off). The
    # rule reads the base model only, so a fine-tune's own growth of the norm (which may be
    # the diff) is never filtered out.
    skip_first_tokens: int = 1
    massive_norm_multiple: float = 10.0
    # The precision of the models' forward pass while collecting ("" = the models' own
    # dtype). bfloat16 ran collection 1.8x faster on a CPU with native bf16 (AVX512-BF16)
    # and moved SmolLM2's layer-15 activations by 1.4% (relative error, docs/DIFFING.md,
    # development scenario 9); on a CPU without native bf16 it is many times slower than
    # float32. Later stages (the prompt lab, confirmation) keep the models' own dtype.
    forward_dtype: Literal["", "float32", "bfloat16", "float16"] = ""

    def validate(self, where: str) -> None:
        _positive(self.shard_tokens, f"{where}.shard_tokens")
        _positive(self.batch_size, f"{where}.batch_size")
        if self.skip_first_tokens < 0:
            raise ConfigError(f"{where}.skip_first_tokens must be >= 0")
        if self.massive_norm_multiple != 0 and self.massive_norm_multiple <= 1:
            raise ConfigError(f"{where}.massive_norm_multiple must be 0 (off) or > 1 (a multiple of the median norm)")


@dataclass(frozen=True)
class CrossCoderConfig:
    expansion: int = 8  # n_latents = expansion * d_model, unless n_latents is set
    n_latents: int = 0
    k: int = 32
    selection_norm: Literal["l2", "l2_squared"] = "l2"

    def validate(self, where: str) -> None:
        _positive(self.k, f"{where}.k")
        if self.n_latents < 0 or self.expansion <= 0:
            raise ConfigError(f"{where}: expansion must be > 0 and n_latents >= 0")


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 2048
    n_tokens: int = 0  # tokens to train on; 0 = one pass over the store
    lr: float = 0.0  # 0 = 1e-4 scaled by sqrt(16384 / n_latents)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    aux_alpha: float = 1.0 / 32
    k_aux: int = 0  # 0 = d_model // 2
    dead_tokens: int = 1_000_000  # a latent not firing for this many tokens is dead
    val_fraction: float = 0.05
    checkpoint_every: int = 500
    seed: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"  # encoder matmul precision (bf16 pays on GPUs)
    sparse: bool = True  # False = dense-autograd reference path (same maths, slower; for checks)
    # weight each model's reconstruction error by its inverse variance (BatchTopKCrossCoder.model_weights_for),
    # so a fine-tune that grows the stream does not take the dictionary from the base; off by default: it
    # helped planted pairs whose stream grew but failed its pre-written rules (docs/DIFFING.md, scenario 4)
    balance_models: bool = False

    def validate(self, where: str) -> None:
        _positive(self.batch_size, f"{where}.batch_size")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"{where}.val_fraction must be in (0, 0.5)")


@dataclass(frozen=True)
class DiffingConfig:
    """Attribution settings (diffing.py).

    ``tau`` = 0.5 means a latent must be at least 2**0.5 ≈ 1.41× stronger (or weaker) in
    the fine-tuned model to count as amplified (suppressed): midway between "unchanged"
    (ratio 1) and the doubling / 0.3× effects a real intervention leaves.
    """

    tau: float = 0.5  # |log2(beta_ft / beta_base)| above this is amplified / suppressed
    base_only_below: float = 0.1
    ft_only_above: float = 0.9
    shared_band: tuple[float, float] = (0.4, 0.6)
    n_tokens: int = 0  # analysis tokens for latent scaling; 0 = every stored token
    batch_size: int = 4096  # tokens per latent-scaling batch (bounds memory)
    max_shift: float = 10.0  # |shift| is capped here when one model's beta is tiny but positive
    eps: float = 1e-8
    # When to believe a shift (see docs/DIFFING.md for how these defaults were chosen):
    min_fires: int = 50  # evidence floor: analysis tokens a latent must fire on to get a label
    z: float = 3.0  # a label needs |shift| > tau and |shift| > z standard errors (an absent model: beta > z se)
    align_min_cos: float = 0.5  # probe both models along the dominant row only when the rows are this aligned

    def validate(self, where: str) -> None:
        lo, hi = self.shared_band
        if not 0.0 <= self.base_only_below < lo <= hi < self.ft_only_above <= 1.0:
            raise ConfigError(
                f"{where}: need 0 <= base_only_below < shared_band[0] <= shared_band[1] < ft_only_above <= 1"
            )
        if self.tau < 0:
            raise ConfigError(f"{where}.tau must be >= 0")
        _positive(self.batch_size, f"{where}.batch_size")
        _positive(self.max_shift, f"{where}.max_shift")
        if self.n_tokens < 0:
            raise ConfigError(f"{where}.n_tokens must be >= 0 (0 = every stored token)")
        if self.min_fires < 1:
            raise ConfigError(f"{where}.min_fires must be >= 1")
        if self.z < 0:
            raise ConfigError(f"{where}.z must be >= 0")
        if not -1.0 <= self.align_min_cos <= 1.0:
            raise ConfigError(f"{where}.align_min_cos must be in [-1, 1]")


@dataclass(frozen=True)
class ContextsConfig:
    n_tokens: int = 0  # tokens streamed for contexts; 0 = the activation store's tokens
    top_n: int = 20
    window: int = 32
    n_quantiles: int = 5
    per_quantile: int = 2
    hist_bins: int = 30
    batch_size: int = 0  # tokens per encode batch; 0 = sized so a dense (B, F) code stays ~64 MB
    n_random: int = 256  # random windows kept as non-activating examples for scorers
    seed: int = 0

    def validate(self, where: str) -> None:
        for name in ("top_n", "window", "n_quantiles", "per_quantile", "hist_bins"):
            _positive(getattr(self, name), f"{where}.{name}")
        if self.n_tokens < 0 or self.batch_size < 0 or self.n_random < 0:
            raise ConfigError(f"{where}: n_tokens, batch_size and n_random must be >= 0 (0 = default)")


@dataclass(frozen=True)
class InterpretConfig:
    explainer: Literal["offline", "openai", "transformers"] = "offline"
    latents: str = "attributed"  # attributed | all | amplified,suppressed | comma-separated ids
    max_latents: int = 0  # 0 = no limit
    base_url: str = ""  # openai: e.g. http://127.0.0.1:8000/v1
    model: str = ""  # openai model name, or transformers model path
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 5
    n_examples: int = 10
    scorer: Literal["embedding", "detection", "fuzzing", "none"] = "embedding"
    embedding_model: str = ""  # "" = the offline all-MiniLM-L6-v2 package
    # the embedder's weights and activations: bfloat16 is ~1.9x faster on a CPU with native
    # bf16 (unit vectors within cosine 0.996 of float32's; development scenario 12)
    embedding_dtype: Literal["float32", "bfloat16"] = "float32"
    retry_backoff_s: float = 1.0  # an answer without text is retried after ~this, doubling (HTTP: the client's backoff)
    device: str = "cpu"  # transformers explainer device
    max_new_tokens: int = 120  # LLM answer budget per call
    n_score_examples: int = 10  # activating (and as many non-activating) examples per score

    def validate(self, where: str) -> None:
        if self.explainer == "openai" and not (self.base_url and self.model):
            raise ConfigError(f"{where}: explainer 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1) and model")
        if self.explainer == "transformers" and not self.model:
            raise ConfigError(
                f"{where}: explainer 'transformers' needs model (a folder, hub id or 'smollm2-135m-instruct')"
            )
        if self.scorer in ("detection", "fuzzing") and self.explainer == "offline":
            raise ConfigError(
                f"{where}.scorer {self.scorer!r} needs an LLM: set explainer to openai or transformers, or use scorer 'embedding'"
            )
        for name in ("concurrency", "n_examples", "max_new_tokens", "n_score_examples"):
            _positive(getattr(self, name), f"{where}.{name}")
        if self.max_latents < 0 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ConfigError(f"{where}: max_latents and max_retries must be >= 0 and timeout_s > 0")


@dataclass(frozen=True)
class CategoriesConfig:
    labeler: Literal["taxonomy", "llm"] = "taxonomy"
    # Built-in names or label files. The default vocabulary is MNEME's own (topics) plus
    # safety behaviours: a study evaluated on MMLU must not discover its categories from
    # MMLU's subject list ("mmlu" stays available for other benchmarks).
    taxonomies: tuple[str, ...] = ("topics", "safety")
    # What the taxonomy labeler embeds: "contexts" = the text of each latent's top
    # activating windows (what it fires on; a token-list description says little), or
    # "description" (worth it with an LLM explainer's descriptions).
    source: Literal["contexts", "description"] = "contexts"
    context_windows: int = 5  # top windows per latent embedded (activation-weighted mean)
    umap_neighbors: int = 15
    seed: int = 0

    def validate(self, where: str) -> None:
        if not self.taxonomies and self.labeler == "taxonomy":
            raise ConfigError(f"{where}.taxonomies is empty: name built-ins (mmlu, safety) or label files")
        _positive(self.context_windows, f"{where}.context_windows")
        if self.umap_neighbors < 2:
            raise ConfigError(f"{where}.umap_neighbors must be >= 2")


@dataclass(frozen=True)
class EvaluationConfig:
    benchmark: str = ""  # path to CSV/JSON, "lm_eval:BEFORE.json,AFTER.json", or "runner:FILE"
    direction: Literal["drop", "rise"] = "drop"
    latent_direction: Literal["suppressed", "amplified", "both"] = "suppressed"
    # the other direction: categories that improved, predicted from these latents
    improved_latent_direction: Literal["amplified", "suppressed", "both"] = "amplified"
    degrade_threshold: float = 0.05
    significance: float = 0.05
    predict_threshold: float = 0.0  # 0 = choose by the rule documented in evaluation.py
    intervention_description: str = ""  # one line, used only by the naive baseline
    random_draws: int = 1000
    seed: int = 0
    # auto = exact McNemar when paired counts exist (our runner), else two-proportion z-test
    significance_test: Literal["auto", "ztest", "bootstrap", "mcnemar"] = "auto"
    bootstrap_draws: int = 10_000
    # enrichment = hypergeometric test of each category's attributed latents against its
    # share of the eligible pool; shift / count = share of total |shift| or of latent count;
    # rank = Mann-Whitney test of every eligible latent's shift, the category against the rest
    predict_score: PredictScore = "enrichment"
    # a predicted category needs at least this many latents of support (attributed ones; for
    # rank, ranked ones), so no single latent decides one
    predict_min_latents: int = 2
    # the dictionary-free baseline predicts a category only where its contexts' mean change
    # is at least this many times the other contexts' (0 = the rank test alone); √2, the
    # factor of the diffing band τ = 0.5, won on development scenario 7 (docs/DIFFING.md)
    baseline_min_ratio: float = 2**0.5
    runner_style: Literal["cloze", "letters"] = "cloze"  # for benchmark "runner:FILE"
    runner_batch_size: int = 8
    runner_limit_per_category: int = 0  # 0 = all questions

    def validate(self, where: str) -> None:
        if self.degrade_threshold < 0:
            raise ConfigError(f"{where}.degrade_threshold must be >= 0 (a change in score, e.g. 0.05)")
        if not 0.0 < self.significance <= 1.0:
            raise ConfigError(f"{where}.significance must be in (0, 1]; 1 disables the significance test")
        if self.predict_threshold < 0:
            raise ConfigError(f"{where}.predict_threshold must be >= 0 (0 = the default rule)")
        _positive(self.random_draws, f"{where}.random_draws")
        _positive(self.predict_min_latents, f"{where}.predict_min_latents")
        if not 0.0 <= self.baseline_min_ratio < float("inf"):
            raise ConfigError(
                f"{where}.baseline_min_ratio must be a finite number >= 0 (how many times the other contexts' mean "
                "change a predicted category needs, e.g. 1.41; 0 = no floor)"
            )
        _positive(self.bootstrap_draws, f"{where}.bootstrap_draws")
        _positive(self.runner_batch_size, f"{where}.runner_batch_size")


@dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    run_dir: str = ""  # "" = runs/<name>
    seed: int = 0
    models: ModelsConfig = field(default_factory=ModelsConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    activations: ActivationsConfig = field(default_factory=ActivationsConfig)
    crosscoder: CrossCoderConfig = field(default_factory=CrossCoderConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    diffing: DiffingConfig = field(default_factory=DiffingConfig)
    contexts: ContextsConfig = field(default_factory=ContextsConfig)
    interpret: InterpretConfig = field(default_factory=InterpretConfig)
    categories: CategoriesConfig = field(default_factory=CategoriesConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    def validate(self) -> None:
        self.models.base.validate("models.base")
        self.models.ft.validate("models.ft")
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate") and f.name != "models":
                section.validate(f.name)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


# --------------------------------------------------------------------------- loading


def _positive(value: int | float, where: str) -> None:
    if value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return build(tp, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} has an invalid value {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, str) and tp in (int, float) and NUMBER_TEXT.fullmatch(value.strip()):
        value = float(value)  # YAML reads `1e-3` and `3e6` (no dot) as text; they are numbers
        if tp is int and value.is_integer():
            value = int(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by full path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        path = f"{where}." if where else ""
        raise ConfigError(f"unknown config key '{path}{unknown[0]}'; allowed keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


# Where a config names files or folders (``corpus.files`` is a list of them).
PATH_KEYS = (
    ("run_dir",),
    ("models", "base", "path"),
    ("models", "ft", "path"),
    ("corpus", "files"),
    ("activations", "reuse_base_from"),
    ("evaluation", "benchmark"),
)
# ``evaluation.benchmark`` may name its files after one of these (see EvaluationConfig).
RUNNER_PREFIX, LM_EVAL_PREFIX = "runner:", "lm_eval:"


def map_benchmark_files(spec: str, fn: Callable[[str], str]) -> str:
    """``evaluation.benchmark`` with ``fn`` applied to each file it names (after a
    ``runner:`` / ``lm_eval:`` prefix, comma-separated; empty parts stay empty)."""
    prefix = next((p for p in (RUNNER_PREFIX, LM_EVAL_PREFIX) if spec.startswith(p)), "")
    return prefix + ",".join(fn(part.strip()) if part.strip() else "" for part in spec[len(prefix) :].split(","))


def resolve_run_relative(data: dict[str, Any], run_path: str | Path) -> dict[str, Any]:
    """A copy of the config mapping ``data`` with each relative path that names something
    from ``run_path`` resolved against it.

    A study config's relative paths start at the working folder, as the user typed them.
    A published run (the demo in ``data/demo``) names the files it ships with from its own
    folder instead (``.`` is the run itself, ``../deltas/rmu.safetensors`` the delta beside
    it), so it opens from any working folder and after a move. A path that names nothing
    from the run folder is left as written: a hub id, a model name, a path from the
    working folder.
    """
    run_path = Path(run_path)

    def resolve(path: str) -> str:
        if not path or Path(path).is_absolute() or not (run_path / path).exists():
            return path
        return str((run_path / path).resolve())

    out = copy.deepcopy(data)
    for keys in PATH_KEYS:
        holder = out
        for key in keys[:-1]:
            inner = holder.get(key)
            holder = inner if isinstance(inner, dict) else {}
        value = holder.get(keys[-1])
        if isinstance(value, str):
            is_benchmark = keys == ("evaluation", "benchmark")
            holder[keys[-1]] = map_benchmark_files(value, resolve) if is_benchmark else resolve(value)
        elif isinstance(value, list):
            holder[keys[-1]] = [resolve(v) if isinstance(v, str) else v for v in value]
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where, and what (its own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load_config(source: str | Path | dict[str, Any]) -> StudyConfig:
    """Read and validate a study config from a YAML path or a mapping.

    A run's own ``config.yaml`` (a run manifest beside it) may name files from the run's
    folder: see :func:`resolve_run_relative`.
    """
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if path.is_dir():
            run_hint = (
                f" (a run folder: its settings are {path / 'config.yaml'})" if (path / MANIFEST).is_file() else ""
            )
            raise ConfigError(f"{path} is a folder, not a study YAML file{run_hint}")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        if (path.parent / MANIFEST).is_file():
            data = resolve_run_relative(data, path.parent)
    cfg = build(StudyConfig, data)
    cfg.validate()
    return cfg


def dump_config(cfg: StudyConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
