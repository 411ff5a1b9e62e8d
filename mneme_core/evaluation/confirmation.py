"""Causal confirmation (``mneme confirm``): do the latents behind a prediction cause the side effect?

A prediction reads "benchmark category c degraded because its latents S_c were
suppressed". S_c is the attributed latents mapped to c, as ``evaluation.json`` lists them
(``category_scores``, largest |shift| first), at most ``max_latents``. Interventions at the
study's layer L, each one forward hook (``mneme_core.analysis.latent_edit``), test it:

* **ablate**: in the base model remove S_c's contribution,
  ``x_base ← x_base − Σ_{j∈S_c} f_j d_base,j / s`` (``s`` the cross-coder's activation
  scale), then re-score c's questions and those of ``others`` unchanged categories (is the
  effect specific to c?).
* **restore**: in the fine-tuned model put the base's contribution back,
  ``x_ft ← x_ft + Σ_j f_j (β_base,j u_base,j / s − β_ft,j u_ft,j / s)``, with the diff
  stage's primary β and probe rows u (``diffing.primary_probes``). Latent scaling is what
  labelled the latents suppressed (their decoder rows are often nearly equal), so it is what
  says how much of each the fine-tune lost. A latent without both β (too few fires) falls
  back to its decoder rows, ``(d_base,j − d_ft,j) / s``. Then re-score c.
* **control**: both again with random latent sets matched in activation mass
  (``controls`` draws), so that "removing anything this size hurts" is not read as
  confirmation.

**Encoder input.** f is the cross-coder's code of the *paired clean* activations: during a
hooked forward the partner model (the fine-tuned one when ablating in the base, the base
when restoring in the fine-tuned one) runs the same tokens up to layer L and the pair is
encoded as in training. Not zeros or a copy for the missing half: those change f itself
(``latent_edit`` says how). Tokens the activation store excludes (the first positions,
attention sinks) are never edited.

**Matched controls.** The activation mass of latent j for an intervention on c's questions
is ``m_j = Σ_t f_tj ‖r_j‖`` (r_j the vector the intervention adds per unit of f_j), over the
tokens the hook edits on each question's prompt followed by its options. A draw pairs each
target latent (largest mass first) with one drawn uniformly from the ``pool_width``
non-target latents nearest to it in log mass and not yet in the draw: the draw has the
target set's size and, latent by latent, its mass. A draw equal to an earlier one is drawn
again (a few tries), so the controls are distinct sets where the pool allows. Draws are
seeded by (seed, category, intervention), so a resumed run draws the same sets.

**Effect.** Scores are accuracies on a category's questions (the MC runner, in the
evaluation's prompt style). ``drop = before − after``; ``effect`` is the change in the
direction the hypothesis predicts: for ablation towards the side effect (``drop`` when the
evaluation's direction is "drop", ``−drop`` for "rise"), for restore away from it.

**The rule** (per category and intervention; a category's verdict is its ablation's). With
target effect e, control effects e_1..e_N with mean μ and sample SD σ, n questions and
σ* = max(σ, 1/n) (one question's worth, so N identical controls cannot make a tiny effect
infinitely significant)::

    confirmed  ⇔  N ≥ 2  and  e ≥ min_effect  and  e > μ + z·σ*

with z = 2 and min_effect = the evaluation's ``degrade_threshold`` (0.05) by default.
Not testable (``confirmed`` missing): S_c empty ("no latents"), fewer than 2 controls
("too few controls"), or the controls' median mass not within a factor 2 of the target's
("controls unmatched": no fair control exists). A target set of zero mass (it never fires
on c's questions, or the intervention moves nothing, as restoring a latent the fine-tune
left unchanged) is "not confirmed" with status "zero mass".

**Which categories.** ``--categories`` names them. Otherwise the predicted set P, and for
contrast the degraded categories P missed and the ``n_unchanged`` (2) not-degraded
categories with the most attributed latents; when P is empty, the degraded ones and the
three with the most attributed latents, so the command still says something.

**Files.** ``confirmation.parquet``: one row per category × intervention × latent set ×
scored category; the rule's columns sit on the target rows scored on their own category.
``confirmation_parts/``: each category's finished table, named by a hash of everything it
was computed from; a rerun skips it, and since the rule is applied when the parts are
joined, changing z or min_effect re-scores nothing. ``confirmation_cache/<edit>/``: the MC
runner's per-question cache of each intervened model, keyed by a hash of the edit (kind,
latents, rows, layer, cross-coder, partner), so an intervened model never shares an entry
with the plain one. The plain scores share ``benchmark_cache/`` with the evaluate stage's
runner. A killed run continues at the first (category, latent set) not cached.

**Cost.** Every edited scoring of a batch after its first replays both models' clean
layer-L streams from memory (``latent_edit.PrefixCache``): the target, its controls, the
restore and the off-target categories (the same for every target) run only the layers after
L. Where a model cannot replay its stream, the edits run every layer (same results, slower).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mneme_core.analysis.latent_edit import LatentEdit, PrefixCache, code_mass, intervene
from mneme_core.benchmarks.mc_runner import (
    MCItem,
    encode_item,
    load_mc_items,
    model_fingerprint,
    score_questions,
)
from mneme_core.common.atomic import write_parquet
from mneme_core.common.config import (
    RUNNER_PREFIX,
    StudyConfig,
    load_config,
    resolve_run_relative,
)
from mneme_core.common.errors import RunError
from mneme_core.evaluation.confirmation_view import (
    CONFIRMATION_FILE,
    CONFIRMED,
    NOT_CONFIRMED,
)
from mneme_core.run.model_files import changed_message, changed_models, model_prints
from mneme_core.run.reader import open_run
from mneme_core.run.store import add_provenance

PARTS_DIR = "confirmation_parts"
CACHE_DIR = "confirmation_cache"
PLAIN_CACHE_DIR = "benchmark_cache"  # the evaluate stage's runner cache (evaluation._runner_benchmark)
INTERVENTIONS = ("ablate", "restore")
MATCH_FACTOR = 2.0  # controls' median mass must lie within this factor of the target's
FORMAT = 1  # bump when a part's columns or meaning change: old parts are then recomputed


class ConfirmationError(RunError):
    """The run lacks what confirmation needs (evaluation, questions, models, a category); the
    message says what to do. A RunError, so the CLI reports it as one line."""


class NothingToConfirm(ConfirmationError):
    """The evaluation leaves nothing to test: no prediction, nothing degraded, no attributed
    latents. An outcome of the study rather than a broken input, so a build that confirms
    every run can skip this one and go on."""


@dataclass(frozen=True)
class ConfirmSettings:
    """What ``mneme confirm`` tests and how; ``None`` takes the run's evaluation settings."""

    categories: tuple[str, ...] = ()
    max_latents: int = 32
    controls: int = 5
    others: int = 2
    questions: str = ""
    limit_per_category: int | None = None
    z: float = 2.0
    min_effect: float | None = None
    pool_width: int = 10
    seed: int = 0
    batch_size: int | None = None
    device: str | None = None
    replace: bool = False  # a table holding categories this call does not test may be replaced

    def validate(self) -> None:
        for name in ("max_latents", "controls", "others", "pool_width"):
            if getattr(self, name) < 0:
                raise ConfirmationError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.pool_width < 1:
            raise ConfirmationError("pool-width must be at least 1")


@dataclass(frozen=True)
class Target:
    """A category to test, why it was chosen, and its latent set S_c."""

    category: str
    role: str
    latents: tuple[int, ...]


# --------------------------------------------------------------------------- which categories


def category_latents(record: Mapping[str, Any], max_latents: int = 0) -> dict[str, tuple[int, ...]]:
    """Benchmark category -> its attributed latents as the evaluation lists them (capped)."""
    out = {}
    for row in record.get("category_scores", []):
        ids = tuple(int(j) for j in (row.get("latents") or []))
        out[str(row["category"])] = ids[:max_latents] if max_latents else ids
    return out


def plan_targets(
    record: Mapping[str, Any], categories: Sequence[str] = (), max_latents: int = 0, n_unchanged: int = 2
) -> list[Target]:
    """The categories to test (see the module docstring), with their roles and latent sets."""
    universe = [str(c) for c in record.get("universe", [])]
    latents = category_latents(record, max_latents)
    if categories:
        unknown = [c for c in categories if c not in universe]
        if unknown:
            raise ConfirmationError(
                f"unknown category {unknown[0]!r}; the run's benchmark categories are: "
                f"{', '.join(universe[:12])}{' ...' if len(universe) > 12 else ''}"
            )
        return [Target(c, "chosen", latents.get(c, ())) for c in dict.fromkeys(categories)]
    P, T = set(record.get("P", [])), set(record.get("T", []))
    chosen = [(c, "predicted") for c in sorted(P)] + [(c, "degraded, not predicted") for c in sorted(T - P)]
    count = {c: len(ids) for c, ids in category_latents(record).items()}  # ranked before the cap
    rest = sorted((c for c in universe if c not in P | T and count.get(c)), key=lambda c: (-count[c], c))
    role, k = ("unchanged", n_unchanged) if P else ("most attributed", n_unchanged + 1)
    chosen += [(c, role) for c in rest[:k]]
    return [Target(c, r, latents.get(c, ())) for c, r in chosen]


def off_target_categories(record: Mapping[str, Any], benchmark: pd.DataFrame | None, n: int) -> list[str]:
    """``n + 1`` not-degraded categories, the least changed first, to score ablations on
    besides their own category (one more than needed, since a target may be among them)."""
    T = set(record.get("T", []))
    pool = [str(c) for c in record.get("universe", []) if c not in T]
    change: dict[str, float] = {}
    if benchmark is not None and {"category", "drop"} <= set(benchmark.columns):
        change = dict(zip(benchmark["category"].astype(str), benchmark["drop"].abs()))
    return sorted(pool, key=lambda c: (change.get(c, 0.0), c))[: n + 1]


# --------------------------------------------------------------------------- controls


def matched_controls(
    mass_F: np.ndarray, target: Sequence[int], n_draws: int, pool_width: int, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """``n_draws`` random latent sets, each matched latent by latent to ``target`` in mass.

    Each target latent (largest mass first) gets one latent drawn uniformly from the
    ``pool_width`` non-target latents nearest to it in log mass, not already in the draw.
    """
    mass = np.asarray(mass_F, np.float64)
    floor = max(float(mass.max(initial=0.0)), 1.0) * 1e-12
    log_mass = np.log(mass + floor)
    pool = np.setdiff1d(np.arange(len(mass)), np.asarray(target, np.int64))
    order = sorted(target, key=lambda j: -mass[j])
    draws: list[tuple[int, ...]] = []
    for _ in range(n_draws):
        draw = _one_draw(log_mass, pool, order, pool_width, rng)
        for _retry in range(_DISTINCT_TRIES):
            if frozenset(draw) not in {frozenset(d) for d in draws}:
                break
            draw = _one_draw(log_mass, pool, order, pool_width, rng)
        draws.append(draw)
    return draws


_DISTINCT_TRIES = 20


def _one_draw(
    log_mass: np.ndarray, pool: np.ndarray, order: Sequence[int], pool_width: int, rng: np.random.Generator
) -> tuple[int, ...]:
    free, draw = pool.copy(), []
    for j in order:
        if not len(free):
            break
        near = free[np.argsort(np.abs(log_mass[free] - log_mass[j]), kind="stable")[:pool_width]]
        pick = int(rng.choice(near))
        draw.append(pick)
        free = free[free != pick]
    return tuple(draw)


def _rng(seed: int, *names: str) -> np.random.Generator:
    digest = hashlib.sha256(json.dumps([seed, *names]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------- the rule


def rule_verdict(
    effect: float,
    control_effects: Sequence[float],
    n_questions: int,
    target_mass: float,
    control_masses: Sequence[float],
    n_latents: int,
    z: float,
    min_effect: float,
) -> dict[str, Any]:
    """The rule of the module docstring for one (category, intervention): the columns it adds."""
    ctrl = np.asarray(control_effects, np.float64)
    mean = float(ctrl.mean()) if len(ctrl) else math.nan
    sd = float(ctrl.std(ddof=1)) if len(ctrl) >= 2 else math.nan
    sd_used = max(sd, 1.0 / max(n_questions, 1)) if len(ctrl) >= 2 else math.nan
    ratio = (
        float(np.median(np.asarray(control_masses, np.float64) / target_mass))
        if target_mass > 0 and len(ctrl)
        else math.nan
    )
    out = {
        "control_mean": mean,
        "control_sd": sd,
        "control_sd_used": sd_used,
        "control_mass_ratio": ratio,
        "z_score": (effect - mean) / sd_used if sd_used == sd_used else math.nan,
        "rule_z": z,
        "min_effect": min_effect,
        "confirmed": pd.NA,
    }
    if n_latents == 0:
        return out | {"status": "no latents"}
    if len(ctrl) < 2:
        return out | {"status": "too few controls"}
    if target_mass <= 0:
        return out | {"confirmed": False, "status": "zero mass"}
    if not 1 / MATCH_FACTOR <= ratio <= MATCH_FACTOR:
        return out | {"status": "controls unmatched"}
    # both sides rounded as the evaluate stage rounds drops: 0.57 − 0.52 is 0.0499999… in
    # floating point, and a tie with the control bar must not depend on which scores made it
    effect_r = round(effect, 12)
    confirmed = bool(effect_r >= round(min_effect, 12) and effect_r > round(mean + z * sd_used, 12))
    return out | {"confirmed": confirmed, "status": CONFIRMED if confirmed else NOT_CONFIRMED}


RULE_COLUMNS = (
    "control_mean",
    "control_sd",
    "control_sd_used",
    "control_mass_ratio",
    "z_score",
    "rule_z",
    "min_effect",
    "confirmed",
    "status",
)


def apply_rule(table: pd.DataFrame, z: float, min_effect: float) -> pd.DataFrame:
    """``table`` with the rule's columns filled on each target row scored on its own category."""
    out = table.reset_index(drop=True).copy()
    for col in RULE_COLUMNS:
        out[col] = "" if col == "status" else np.nan  # "": no verdict on this row (a control, an off-target score)
    out["confirmed"] = pd.array([pd.NA] * len(out), dtype="boolean")
    own = out[out["scored_category"] == out["category"]]
    for _, group in own.groupby(["category", "intervention"], sort=False):
        target = group[group["set"] == "target"]
        if len(target) != 1:
            continue
        t = target.iloc[0]
        ctrl = group[group["set"] == "control"]
        verdict = rule_verdict(
            float(t["effect"]),
            ctrl["effect"].to_numpy(np.float64),
            int(t["n_questions"]),
            float(t["mass"]),
            ctrl["mass"].to_numpy(np.float64),
            int(t["n_latents"]),
            z,
            min_effect,
        )
        for col, value in verdict.items():
            out.at[target.index[0], col] = value
    return out


# --------------------------------------------------------------------------- inputs


@dataclass
class _Inputs:
    """Everything read from the run before any model is loaded."""

    run_path: Path
    cfg: StudyConfig
    written: dict[str, Any]  # the config as the manifest holds it (a published run names its files portably)
    record: dict[str, Any]
    questions: str
    items: dict[str, list[MCItem]]
    benchmark: pd.DataFrame | None
    latents_table: pd.DataFrame


def _questions_source(cfg: StudyConfig, run_path: Path, given: str) -> str:
    if given:
        return given
    spec = cfg.evaluation.benchmark.strip()
    if spec.startswith(RUNNER_PREFIX):
        return spec[len(RUNNER_PREFIX) :]
    raise ConfirmationError(
        f"confirmation re-scores benchmark questions, and {run_path}'s benchmark ({spec or 'none'}) holds scores only; "
        "pass --questions FILE (the multiple-choice questions those scores came from)"
    )


def _read_inputs(run_path: Path, settings: ConfirmSettings) -> _Inputs:
    from mneme_core.benchmarks.loaders import BenchmarkError

    run = open_run(run_path)
    record = run.evaluation
    if record is None:
        raise ConfirmationError(
            f"{run_path} has no evaluation yet; run `mneme evaluate {run_path} --benchmark FILE` first"
        )
    written = run.manifest.get("config", {})
    cfg = load_config(resolve_run_relative(written, run_path))
    changed = changed_models(run.manifest.get("model_files") or {}, model_prints(cfg.models))
    if changed:
        raise ConfirmationError(
            f"{changed_message(run_path, changed)}: its cross-coder would edit a model it never saw. "
            "Re-run the study on these weights (another run_dir), or put the old weights back."
        )
    if not (run_path / "crosscoder" / "model.safetensors").is_file():
        raise ConfirmationError(f"no trained cross-coder in {run_path / 'crosscoder'} (the train stage writes it)")
    questions = _questions_source(cfg, run_path, settings.questions)
    limit = (
        cfg.evaluation.runner_limit_per_category if settings.limit_per_category is None else settings.limit_per_category
    )
    try:
        items = load_mc_items([p.strip() for p in questions.split(",")], limit_per_category=limit)
    except BenchmarkError as exc:
        raise ConfirmationError(str(exc)) from exc
    by_cat: dict[str, list[MCItem]] = {}
    for item in items:
        by_cat.setdefault(item.category, []).append(item)
    return _Inputs(run_path, cfg, written, record, questions, by_cat, run.benchmark, run.latents)


# --------------------------------------------------------------------------- models and edits


@dataclass
class _Lab:
    """The loaded pair, the cross-coder and each intervention's per-latent rows (F, d)."""

    base: torch.nn.Module
    ft: torch.nn.Module
    tokenizer: Any
    layer: int
    crosscoder: Any
    rows: dict[str, torch.Tensor]
    fingerprints: dict[str, str]
    skip_first: int
    massive_multiple: float
    prefix: PrefixCache  # both models' clean layer-L streams, shared by every edit of the run


def intervention_rows(crosscoder: Any, latents_table: pd.DataFrame, diffing_cfg: Any) -> dict[str, torch.Tensor]:
    """Raw-space vector each intervention adds per unit of f_j, per latent (module docstring)."""
    from mneme_core.analysis.diffing import primary_probes

    W = crosscoder.W_dec.detach().float()
    s = crosscoder.norm_scale.detach().float()
    probes = primary_probes(W, diffing_cfg)[0]
    F = W.shape[1]
    col = lambda name: torch.tensor(  # noqa: E731
        latents_table.set_index("latent")[name].reindex(range(F)).to_numpy(np.float64)
        if name in latents_table.columns
        else np.full(F, np.nan),
        dtype=torch.float32,
    )
    beta_b, beta_f = col("beta_base"), col("beta_ft")
    by_beta = beta_b[:, None] * probes[0] / s[0] - beta_f[:, None] * probes[1] / s[1]
    by_rows = W[0] / s[0] - W[1] / s[1]
    ok = (torch.isfinite(beta_b) & torch.isfinite(beta_f))[:, None]
    return {"ablate": -W[0] / s[0], "restore": torch.where(ok, by_beta, by_rows)}


def _load_lab(inputs: _Inputs, device: str | None) -> _Lab:
    from mneme_core.collect.models import load_model_pair
    from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

    try:
        pair = load_model_pair(inputs.cfg.models, device=device)
    except Exception as exc:  # any loader failure (missing folder, offline hub, bad delta) is one line
        raise ConfirmationError(f"the run's models cannot be loaded ({type(exc).__name__}: {exc})") from exc
    dev = next(pair.base.parameters()).device
    crosscoder = BatchTopKCrossCoder.from_pretrained(inputs.run_path / "crosscoder").to(dev).eval()
    rows = {k: v.to(dev) for k, v in intervention_rows(crosscoder, inputs.latents_table, inputs.cfg.diffing).items()}
    prints = {
        "base": model_fingerprint(pair.base),
        "ft": model_fingerprint(pair.ft),
        "crosscoder": _tensor_hash(*crosscoder.tensors().values()),
    }
    act = inputs.cfg.activations
    return _Lab(
        pair.base.eval(),
        pair.ft.eval(),
        pair.tokenizer,
        pair.layer,
        crosscoder,
        rows,
        prints,
        act.skip_first_tokens,
        act.massive_norm_multiple,
        PrefixCache(pair.base.eval(), pair.ft.eval(), pair.layer),
    )


def _tensor_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _edit(lab: _Lab, kind: str, latents: Sequence[int]) -> tuple[LatentEdit, torch.nn.Module, torch.nn.Module, str]:
    """The edit, the hooked model, its partner, and the cache key of this intervention."""
    model, partner, side = (lab.base, lab.ft, 0) if kind == "ablate" else (lab.ft, lab.base, 1)
    ids = tuple(int(j) for j in latents)
    rows = lab.rows[kind][list(ids)] if ids else lab.rows[kind][:0]
    edit = LatentEdit(lab.crosscoder, ids, rows, side, lab.skip_first, lab.massive_multiple)
    key = hashlib.sha256(
        json.dumps(
            {
                "kind": kind,
                "latents": ids,
                "rows": _tensor_hash(rows),
                "layer": lab.layer,
                "side": side,
                "skip_first": lab.skip_first,
                "massive": lab.massive_multiple,
                "crosscoder": lab.fingerprints["crosscoder"],
                "partner": lab.fingerprints["ft" if side == 0 else "base"],
            }
        ).encode()
    ).hexdigest()[:16]
    return edit, model, partner, key


# --------------------------------------------------------------------------- scoring


def _accuracy(
    model: torch.nn.Module, lab: _Lab, items: list[MCItem], cache_dir: Path, cfg: StudyConfig, batch_size: int | None
) -> float:
    per_q = score_questions(
        model,
        lab.tokenizer,
        items,
        batch_size=batch_size or cfg.evaluation.runner_batch_size,
        style=cfg.evaluation.runner_style,
        cache_dir=cache_dir,
        progress=False,
    )
    return float(per_q["correct"].mean())


def _edited_accuracy(
    lab: _Lab, inputs: _Inputs, kind: str, latents: Sequence[int], category: str, batch_size: int | None
) -> float:
    edit, model, partner, key = _edit(lab, kind, latents)
    with intervene(model, lab.layer, edit, partner, lab.prefix):
        return _accuracy(model, lab, inputs.items[category], inputs.run_path / CACHE_DIR / key, inputs.cfg, batch_size)


def _sequences(tokenizer: Any, items: list[MCItem], style: str) -> list[list[int]]:
    """Each question's prompt followed by all its options: the tokens activation mass is measured on."""
    out = []
    for item in items:
        prefix, options = encode_item(tokenizer, item, style)  # type: ignore[arg-type]
        out.append(prefix + [t for opt in options for t in opt])
    return out


def _category_mass(lab: _Lab, inputs: _Inputs, category: str, batch_size: int | None) -> torch.Tensor:
    pad = lab.tokenizer.pad_token_id if lab.tokenizer.pad_token_id is not None else (lab.tokenizer.eos_token_id or 0)
    seqs = _sequences(lab.tokenizer, inputs.items[category], inputs.cfg.evaluation.runner_style)
    return code_mass(
        lab.crosscoder,
        lab.base,
        lab.ft,
        lab.layer,
        seqs,
        skip_first=lab.skip_first,
        massive_multiple=lab.massive_multiple,
        batch_size=batch_size or inputs.cfg.evaluation.runner_batch_size,
        pad_id=pad,
    )


def _effect(drop: float, kind: str, direction: str) -> float:
    """The score change in the direction the hypothesis predicts (module docstring)."""
    return (drop if (kind == "ablate") == (direction == "drop") else -drop) + 0.0  # + 0.0: no "-0.0" in tables


def _untested(target: Target) -> pd.DataFrame:
    """Rows for a category without latents: nothing to intervene on, nothing scored."""
    return pd.DataFrame(
        [
            {
                **_row_head(target, kind, "target", 0, target.category),
                "mass": 0.0,
                "n_questions": 0,
                "score_before": np.nan,
                "score_after": np.nan,
                "drop": np.nan,
                "effect": np.nan,
            }
            for kind in INTERVENTIONS
        ]
    )


def _row_head(
    target: Target, kind: str, which: str, draw: int, scored: str, latents: Sequence[int] | None = None
) -> dict:
    ids = list(target.latents if latents is None else latents)
    return {
        "category": target.category,
        "role": target.role,
        "intervention": kind,
        "set": which,
        "draw": draw,
        "control": which == "control",
        "scored_category": scored,
        "n_latents": len(ids),
        "latents": ids,
    }


def confirm_category(
    lab: _Lab | None,
    inputs: _Inputs,
    target: Target,
    others: Sequence[str],
    settings: ConfirmSettings,
    note: Callable[[str], None] = lambda _: None,
) -> pd.DataFrame:
    """All rows of one category: target and control sets, both interventions, before and after.
    ``note`` hears each step (the command's progress bar shows it)."""
    if not target.latents:
        return _untested(target)
    assert lab is not None
    note(f"{target.category}: activation mass")
    mass_F = _category_mass(lab, inputs, target.category, settings.batch_size)
    scored = [c for c in others if c != target.category][: settings.others]
    return pd.DataFrame(
        [
            row
            for kind in INTERVENTIONS
            for row in _intervention_rows(lab, inputs, target, kind, mass_F, scored, settings, note)
        ]
    )


def _intervention_rows(
    lab: _Lab,
    inputs: _Inputs,
    target: Target,
    kind: str,
    mass_F: torch.Tensor,
    off_target: Sequence[str],
    settings: ConfirmSettings,
    note: Callable[[str], None],
) -> list[dict]:
    """One intervention on one category: the target set (also scored on ``off_target`` when
    ablating) and its mass-matched control draws."""
    model = lab.base if kind == "ablate" else lab.ft
    per_latent = (mass_F * lab.rows[kind].norm(dim=-1).double().cpu()).numpy()
    draws = matched_controls(
        per_latent, target.latents, settings.controls, settings.pool_width, _rng(settings.seed, target.category, kind)
    )
    scored = [target.category, *(off_target if kind == "ablate" else [])]
    note(f"{target.category}: {kind}, plain scores")
    before = {
        c: _accuracy(model, lab, inputs.items[c], inputs.run_path / PLAIN_CACHE_DIR, inputs.cfg, settings.batch_size)
        for c in scored
    }
    direction = str(inputs.record.get("direction", "drop"))
    rows = []
    for draw, latents in enumerate([target.latents, *draws]):
        which = "target" if draw == 0 else "control"
        note(f"{target.category}: {kind}, {which}{f' {draw}/{len(draws)}' if draw else ''}")
        for cat in scored if draw == 0 else scored[:1]:
            after = _edited_accuracy(lab, inputs, kind, latents, cat, settings.batch_size)
            drop = before[cat] - after
            rows.append(
                {
                    **_row_head(target, kind, which, draw, cat, latents),
                    "mass": float(per_latent[list(latents)].sum()) if latents else 0.0,
                    "n_questions": len(inputs.items[cat]),
                    "score_before": before[cat],
                    "score_after": after,
                    "drop": drop,
                    "effect": _effect(drop, kind, direction),
                }
            )
    return rows


# --------------------------------------------------------------------------- the command


def _part_path(inputs: _Inputs, target: Target, others: Sequence[str], settings: ConfirmSettings) -> Path:
    """Where a category's finished table lives, named by everything it was computed from."""
    scored = [target.category, *others]
    questions = [[asdict(it) for it in inputs.items.get(c, [])] for c in scored]
    crosscoder = inputs.run_path / "crosscoder" / "model.safetensors"
    key = hashlib.sha256(
        json.dumps(
            {
                "format": FORMAT,
                "category": target.category,
                "latents": target.latents,
                "controls": settings.controls,
                "others": settings.others,
                "off_target": list(others),
                "pool_width": settings.pool_width,
                "seed": settings.seed,
                "questions": hashlib.sha256(json.dumps(questions).encode()).hexdigest(),
                "models": inputs.written.get("models"),
                "edited_tokens": [
                    inputs.cfg.activations.skip_first_tokens,
                    inputs.cfg.activations.massive_norm_multiple,
                ],
                "style": inputs.cfg.evaluation.runner_style,
                "direction": inputs.record.get("direction", "drop"),
                "crosscoder": hashlib.sha256(crosscoder.read_bytes()).hexdigest(),
                "latents_table": _beta_hash(inputs.latents_table, target.latents),
            },
            default=str,
        ).encode()
    ).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", target.category)[:60]
    return inputs.run_path / PARTS_DIR / f"{slug}-{key}.parquet"


def _beta_hash(latents_table: pd.DataFrame, ids: Sequence[int]) -> str:
    """The β columns restore reads, so a re-run diff stage recomputes the parts it changes."""
    cols = [c for c in ("latent", "beta_base", "beta_ft") if c in latents_table.columns]
    return hashlib.sha256(latents_table[cols].to_json().encode()).hexdigest()[:16] if ids else ""


def _check_questions(inputs: _Inputs, targets: Sequence[Target]) -> None:
    missing = [t.category for t in targets if t.latents and t.category not in inputs.items]
    if missing:
        raise ConfirmationError(
            f"no questions for category {missing[0]!r} in {inputs.questions}; "
            f"it has: {', '.join(sorted(inputs.items)[:12])}"
        )


def run_confirmation(
    run_path: str | Path, settings: ConfirmSettings = ConfirmSettings(), *, progress: bool = True
) -> pd.DataFrame:
    """Test the run's predictions by intervention; write and return ``confirmation.parquet``.

    Cheap checks (evaluation, categories, questions, cross-coder) come first; the models load
    only if some category's part is not on disk yet.
    """
    from tqdm.auto import tqdm

    settings.validate()
    run_path = Path(run_path)
    inputs = _read_inputs(run_path, settings)
    targets = plan_targets(inputs.record, settings.categories, settings.max_latents)
    if not targets:
        raise NothingToConfirm(
            "nothing to test: the evaluation predicted no category, none degraded and none has "
            "attributed latents; name categories with --categories"
        )
    _check_questions(inputs, targets)
    _check_nothing_lost(run_path, targets, settings.replace)
    others = [c for c in off_target_categories(inputs.record, inputs.benchmark, settings.others) if c in inputs.items]
    min_effect = (
        settings.min_effect
        if settings.min_effect is not None
        else float(inputs.record.get("thresholds", {}).get("degrade_threshold", 0.05))
    )
    lab: _Lab | None = None
    parts: list[pd.DataFrame] = []
    table = pd.DataFrame()
    bar = tqdm(targets, desc="confirm", unit="category", disable=not progress, dynamic_ncols=True)
    for target in bar:
        path = _part_path(inputs, target, others, settings)
        if path.is_file():
            part = pd.read_parquet(path)
        else:
            if lab is None and target.latents:
                bar.set_postfix_str("loading the models")
                lab = _load_lab(inputs, settings.device)
            part = confirm_category(lab, inputs, target, others, settings, note=bar.set_postfix_str)
            write_parquet(path, part)
        parts.append(part)
        table = apply_rule(pd.concat(parts, ignore_index=True), settings.z, min_effect)
        write_parquet(run_path / CONFIRMATION_FILE, table)
    add_provenance(run_path, [{"kind": "confirmation_questions", "source": _portable(inputs.questions, run_path)}])
    return table


def _check_nothing_lost(run_path: Path, targets: list[Target], replace: bool) -> None:
    """Refuse to overwrite a confirmation table with one that drops some of its categories
    (a narrower re-run would silently throw away tests that took minutes each, and a
    published run has no cached parts to rebuild them from), unless told to."""
    path = run_path / CONFIRMATION_FILE
    if replace or not path.is_file():
        return
    try:
        had = set(pd.read_parquet(path, columns=["category"])["category"].astype(str))
    except (OSError, ValueError, KeyError):
        return  # an unreadable table holds nothing to keep
    lost = sorted(had - {t.category for t in targets})
    if lost:
        raise ConfirmationError(
            f"{path} holds confirmations of {', '.join(lost)}, which this call does not test; its table would "
            "replace them. Name them too with --categories, or pass --replace to start the table afresh"
        )


def _portable(files: str, run_path: Path) -> str:
    """Question files named from the run folder, as a published run names its files (it may move)."""

    def one(part: str) -> str:
        try:
            return os.path.relpath(Path(part).resolve(), run_path.resolve())
        except ValueError:  # another drive: no relative path exists
            return part

    return ",".join(one(p.strip()) for p in files.split(","))
