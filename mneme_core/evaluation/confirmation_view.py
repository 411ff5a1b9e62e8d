"""Reading ``confirmation.parquet`` for the dashboard and the report (no torch here).

``mneme confirm`` (``mneme_core.evaluation.confirmation``, where the rule is stated) writes one row
per (category, intervention, latent set, scored category). The dashboard and the report
need less: one verdict per category, a short summary table, and a figure of the target
set's ablation effect against the spread of its mass-matched random controls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

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


def not_run_note(run: Any, record: dict[str, Any] | None) -> str:
    """What the page says where ``mneme confirm`` has not run: the command and what it tests.
    With no prediction it still tests the degraded categories MNEME missed; only where
    nothing was predicted and nothing degraded (a null control, say) is there nothing to
    test, and then the page says so rather than suggesting a command."""
    record = record or {}
    if record.get("P"):
        return (
            f"Not run yet. `{command(run)}` ablates each predicted category's latents at the study's layer and "
            "compares the score change with random latents of the same activation mass."
        )
    if record.get("T"):
        return (
            f"Not run yet. MNEME predicted no category; `{command(run)}` tests the degraded categories it missed "
            "(do their latents, ablated, move the score more than random latents of the same activation mass?)."
        )
    return "Nothing to confirm: MNEME predicted no category (P = ∅) and no category degraded (T = ∅)."


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
