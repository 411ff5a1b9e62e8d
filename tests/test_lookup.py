"""Per-latent reads by row-group pruning give exactly what a full read and filter gives."""

from __future__ import annotations

import pandas as pd
import pytest

from mneme_core import open_run
from mneme_core.common.atomic import write_parquet
from mneme_core.common.lookup import LatentLookup, order_contexts
from mneme_core.run.store import init_run


@pytest.fixture
def run_path(tmp_path):
    init_run(tmp_path, {"name": "l", "models": {"layer": 1}})
    rows = [
        {"latent": lat, "kind": kind, "rank": r, "tokens": [f"t{lat}", "b"], "acts": [float(r), 1.0], "max_act": 1.0}
        for lat in range(0, 60, 2)
        for kind in ("quantile", "top")
        for r in (2, 0, 1)
    ]
    write_parquet(tmp_path / "contexts.parquet", pd.DataFrame(rows), row_group_size=16)
    write_parquet(
        tmp_path / "histograms.parquet",
        pd.DataFrame({"latent": [0, 3, 5], "edges": [[0.0, 1.0]] * 3, "counts": [[1], [2], [3]]}),
    )
    return tmp_path


@pytest.mark.parametrize("latent", [0, 2, 10, 30, 58, 1, 59, 1000])
def test_contexts_match_store(run_path, latent):
    mine = open_run(run_path).contexts(latent)
    full = pd.read_parquet(run_path / "contexts.parquet")
    ref = order_contexts(full[full["latent"] == latent])
    assert len(mine) == len(ref) == (6 if latent % 2 == 0 and latent < 60 else 0)
    if len(ref):
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), ref.reset_index(drop=True))
        assert mine["kind"].tolist() == ["top"] * 3 + ["quantile"] * 3 and mine["rank"].tolist()[:3] == [0, 1, 2]


def test_single_row_group_table_is_sliced(run_path):
    lookup = LatentLookup(run_path / "histograms.parquet")
    assert lookup.frame(3)["counts"].iloc[0].tolist() == [2]
    assert lookup.frame(4).empty
