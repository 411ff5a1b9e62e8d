"""Reading ``confirmation.parquet`` for the dashboard and the report (no torch here).

``mneme confirm`` (``mneme_core.evaluation.confirmation``, where the rule is stated) writes one row
per (category, intervention, latent set, scored category). The dashboard and the report
need less: one verdict per category, a short summary table, and a figure of the target
set's ablation effect against the spread of its mass-matched random controls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

CONFIRMATION_FILE = "confirmation.parquet"
NOT_RUN = "not run"
CONFIRMED = "confirmed"
NOT_CONFIRMED = "not confirmed"
STALE = "stale"
RULE_TEXT = (
    "Confirmed: ablating the category's latents in the base model moves its score in the side effect's "
    "direction by at least the minimum effect and by more than z standard deviations above the mean of "
    "random latent sets matched in activation mass (SD at least one question's worth)."
)


class ConfirmationFileError(ValueError):
    """``confirmation.parquet`` exists but cannot be read; the message says what to do."""


def load(run_path: str | Path) -> pd.DataFrame | None:
    """The run's confirmation table, or None when ``mneme confirm`` has not written one."""
    path = Path(run_path) / CONFIRMATION_FILE
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # a damaged file: say so, never a traceback
        raise ConfirmationFileError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); run `mneme confirm` again"
        ) from exc


def command(run: Any) -> str:
    """The command that fills the confirmation of ``run`` (a ``Run``)."""
    benchmark = str(run.manifest.get("config", {}).get("evaluation", {}).get("benchmark", ""))
    questions = "" if benchmark.startswith("runner:") else " --questions QUESTIONS_FILE"
    return f"mneme confirm {run.path}{questions}"


def _own_rows(table: pd.DataFrame, intervention: str) -> pd.DataFrame:
    """Target-set rows scored on their own category for one intervention."""
    keep = (
        (table["set"] == "target")
        & (table["scored_category"] == table["category"])
        & (table["intervention"] == intervention)
    )
    return table[keep].set_index("category")


def stale_categories(table: pd.DataFrame | None, record: dict[str, Any] | None) -> list[str]:
    """Tested categories whose verdict no longer speaks for the run's evaluation.

    ``mneme confirm`` tested a category's latent set as ``evaluation.json`` listed it then (largest
    shift first, perhaps capped), for a role the prediction gave it. A later ``mneme evaluate``,
    a new taxonomy or a retrained cross-coder changes the list or the prediction: the verdict is
    then about latents or a claim the run no longer makes. Stale when the tested set is not the
    head of the category's current list, or the role no longer matches the current P and T.
    """
    if table is None or table.empty or record is None:
        return []
    current = {
        str(row["category"]): [int(j) for j in (row.get("latents") or [])] for row in record.get("category_scores", [])
    }
    P, T = {str(c) for c in record.get("P", [])}, {str(c) for c in record.get("T", [])}
    stale = []
    for category, row in _own_rows(table, "ablate").iterrows():
        c, tested = str(category), [int(j) for j in row["latents"]]
        if current.get(c, [])[: len(tested)] != tested or not _role_holds(str(row["role"]), c, P, T):
            stale.append(c)
    return stale


def _role_holds(role: str, category: str, P: set[str], T: set[str]) -> bool:
    """Whether the claim a role makes about a category is still the evaluation's."""
    if role == "predicted":
        return category in P
    if role == "degraded, not predicted":
        return category in T and category not in P
    return True  # chosen by name, or a contrast: no claim about P or T


def category_status(table: pd.DataFrame | None, record: dict[str, Any] | None = None) -> dict[str, str]:
    """Category -> the ablation verdict's status (``confirmed``, ``not confirmed``, ``no latents``, ...);
    ``stale`` where the evaluation changed after the test (``stale_categories``)."""
    if table is None or table.empty:
        return {}
    stale = set(stale_categories(table, record))
    return {str(c): STALE if str(c) in stale else str(s) for c, s in _own_rows(table, "ablate")["status"].items()}


def statuses(categories: pd.Series, table: pd.DataFrame | None, record: dict[str, Any] | None = None) -> list[str]:
    """The verdict beside each of ``categories``; ``not run`` where confirmation has not tested it."""
    known = category_status(table, record)
    return [known.get(str(c), NOT_RUN) for c in categories]


def stale_note(table: pd.DataFrame | None, record: dict[str, Any] | None, run: Any) -> str | None:
    """One sentence for the page and the report when some verdicts are stale, else None."""
    stale = stale_categories(table, record)
    if not stale:
        return None
    return (
        f"The evaluation changed after `mneme confirm` ran: the verdicts for {', '.join(stale)} tested latents "
        f"or a prediction the run no longer has and are marked {STALE}. Run `{command(run)}` again."
    )


def summary(table: pd.DataFrame, record: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per tested category: role, latents, ablation effect vs controls, restore effect, verdict
    (``stale`` where the evaluation changed since, given the run's ``record``)."""
    ablate, restore = _own_rows(table, "ablate"), _own_rows(table, "restore")
    verdict = category_status(table, record)
    out = pd.DataFrame(
        {
            "category": ablate.index,
            "role": ablate["role"].to_numpy(),
            "latents": ablate["n_latents"].to_numpy(),
            "score before": ablate["score_before"].to_numpy(),
            "ablated": ablate["score_after"].to_numpy(),
            "ablation effect": ablate["effect"].to_numpy(),
            "control mean": ablate["control_mean"].to_numpy(),
            "control SD": ablate["control_sd"].to_numpy(),
            "restore effect": restore["effect"].reindex(ablate.index).to_numpy(),
            "restore": restore["status"].reindex(ablate.index).to_numpy(),
            "confirmation": [verdict[str(c)] for c in ablate.index],
        }
    )
    return out.reset_index(drop=True)


def figure(table: pd.DataFrame) -> go.Figure:
    """Per category: the target set's ablation effect (diamond, green when confirmed) over its
    random controls (grey dots) and their mean ± z·SD (the bar the target must clear)."""
    own = table[(table["scored_category"] == table["category"]) & (table["intervention"] == "ablate")]
    target = own[own["set"] == "target"].dropna(subset=["effect"])
    controls = own[own["set"] == "control"]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=controls["category"],
            y=controls["effect"],
            mode="markers",
            name="random controls",
            marker=dict(color="#9e9e9e", size=7),
            hovertemplate="%{x}<br>control effect %{y:.3f}<extra></extra>",
        )
    )
    bar = target["rule_z"].to_numpy(np.float64) * target["control_sd_used"].to_numpy(np.float64)
    fig.add_trace(
        go.Scatter(
            x=target["category"],
            y=target["control_mean"],
            mode="markers",
            name="control mean ± z·SD",
            marker=dict(color="#555555", symbol="line-ew-open", size=18),
            error_y=dict(type="data", array=bar, visible=True, color="#555555"),
            hovertemplate="%{x}<br>control mean %{y:.3f}<extra></extra>",
        )
    )
    colour = np.where(target["status"] == CONFIRMED, "#2ca02c", "#d62728")
    fig.add_trace(
        go.Scatter(
            x=target["category"],
            y=target["effect"],
            mode="markers",
            name="the category's latents",
            marker=dict(color=colour, symbol="diamond", size=13),
            customdata=target["status"],
            hovertemplate="%{x}<br>ablation effect %{y:.3f}<br>%{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Ablation effect of the category's latents vs random latents of the same mass",
        yaxis_title="score change in the side effect's direction",
        margin=dict(l=50, r=20, t=50, b=45),
        legend=dict(orientation="h", y=-0.18),
    )
    return fig
