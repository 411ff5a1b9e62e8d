"""What an explainer or scorer sees of one latent: its contexts, read from the run.

The contexts stage wrote ``contexts.parquet`` (top windows and quantile samples with
per-token activations) and ``random_contexts.parquet`` (a pool of random windows with the
latents active anywhere in them). Here they become plain objects, so explainers and
scorers never touch Parquet and can be tested on hand-made examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Example:
    """One window of text: decoded tokens and the latent's activation on each."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)


@dataclass
class LatentRecord:
    """Everything known about one latent's behaviour on the corpus."""

    latent: int
    top: list[Example] = field(default_factory=list)
    quantile: list[Example] = field(default_factory=list)
    negatives: list[Example] = field(default_factory=list)

    @property
    def activating(self) -> list[Example]:
        return self.top + self.quantile


def _examples(df: pd.DataFrame) -> list[Example]:
    return [Example(tuple(t), tuple(float(a) for a in acts)) for t, acts in zip(df["tokens"], df["acts"])]


def load_records(
    run_path: str | Path, latents: Sequence[int], n_negatives: int = 10, seed: int = 0, progress: bool = False
) -> dict[int, LatentRecord]:
    """Records for ``latents`` (those with no contexts are left out).

    Negatives are random windows in which the latent never fired, drawn from the pool
    the contexts stage kept; the same pool serves every latent, so a scorer embeds it once.
    ``progress`` shows a bar: a study's 131k latents take minutes to gather.
    """
    run_path = Path(run_path)
    path = run_path / "contexts.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the contexts stage first (`mneme contexts {run_path}`)")
    wanted = [int(x) for x in latents]
    table = pads.dataset(path).to_table(
        columns=["latent", "kind", "rank", "tokens", "acts"], filter=pads.field("latent").isin(wanted)
    )
    df = table.to_pandas().sort_values(["latent", "kind", "rank"], kind="stable")
    records: dict[int, LatentRecord] = {}
    groups = df.groupby("latent", sort=False)
    for latent, group in tqdm(
        groups,
        total=groups.ngroups,
        desc="interpret: read contexts",
        unit="latent",
        disable=not progress,
        dynamic_ncols=True,
    ):
        rec = LatentRecord(int(latent))
        rec.top = _examples(group[group["kind"] == "top"])
        rec.quantile = _examples(group[group["kind"] == "quantile"])
        records[int(latent)] = rec
    pool_path = run_path / "random_contexts.parquet"
    if n_negatives > 0 and pool_path.is_file():
        pool = pd.read_parquet(pool_path)
        pool_examples = [Example(tuple(t), tuple(0.0 for _ in t)) for t in pool["tokens"]]
        active = [set(np.asarray(a).tolist()) for a in pool["active_latents"]]
        rng = np.random.default_rng(seed)
        for rec in tqdm(
            records.values(), desc="interpret: draw negatives", unit="latent", disable=not progress, dynamic_ncols=True
        ):
            for i in rng.permutation(len(pool_examples)):
                if rec.latent not in active[i]:
                    rec.negatives.append(pool_examples[i])
                    if len(rec.negatives) == n_negatives:
                        break
    return {lat: records[lat] for lat in wanted if lat in records}
