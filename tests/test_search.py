"""Semantic search over descriptions: `run.search` finds the planted latent."""

from __future__ import annotations

import shutil

import pytest
from _planted import build_planted_run

from mneme_core import interp
from mneme_core.common.errors import RunError
from mneme_core.interp import categories
from mneme_core.run.pipeline import override_section
from mneme_core.run.reader import open_run
from mneme_core.run.store import set_stage


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory):
    run_path = tmp_path_factory.mktemp("search") / "run"
    cfg, _, (tok, x, src, cc, names) = build_planted_run(run_path)
    with pytest.raises(RunError, match="no description index"):
        open_run(run_path).search("anything")
    interp.run_stage(cfg, run_path, progress=False)
    categories.run_stage(cfg, run_path, progress=False)
    return run_path, names


@pytest.mark.parametrize(
    "query, concept",
    [
        ("viruses and infection", "virus"),
        ("courts, judges and laws", "law"),
        ("baking bread in the kitchen", "cooking"),
        ("stars and planets in space", "astronomy"),
    ],
)
def test_search_returns_the_planted_latent_first(searched_run, query, concept):
    run_path, names = searched_run
    hits = open_run(run_path).search(query, k=5)
    assert list(hits.columns) == ["latent", "description", "category", "distance"]
    assert hits["latent"].iloc[0] == names.index(concept), hits
    assert hits["distance"].is_monotonic_increasing and len(hits) == 5


def test_search_rejects_bad_queries(searched_run):
    run_path, _ = searched_run
    with pytest.raises(ValueError, match="non-empty query"):
        open_run(run_path).search("  ")
    assert len(open_run(run_path).search("music", k=50)) == 10  # only described latents exist


def test_search_refuses_a_stale_index(searched_run, tmp_path):
    """After an earlier stage re-ran, the index holds the previous descriptions: search
    says so and names the command, instead of answering with them."""
    run_path = shutil.copytree(searched_run[0], tmp_path / "stale")
    set_stage(run_path, "categories", "stale")
    with pytest.raises(RunError, match="stale.*mneme run"):
        open_run(run_path).search("music")


def test_a_bfloat16_run_is_searched_in_bfloat16_and_still_finds_the_planted_latent(tmp_path):
    """``interpret.embedding_dtype: bfloat16``: descriptions, categories and the index are
    embedded in bf16, and the query in the precision the run recorded (a float32 query
    against a bf16 index would compare vectors of two embedders)."""
    run_path = tmp_path / "run"
    cfg, _, (_, _, _, _, names) = build_planted_run(run_path, interpret={"embedding_dtype": "bfloat16"})
    assert cfg.interpret.embedding_dtype == "bfloat16"
    interp.run_stage(cfg, run_path, progress=False)
    set_stage(run_path, "categories", "complete", categories.run_stage(cfg, run_path, progress=False))  # as `mneme run`
    query = "viruses and infection"
    hits = open_run(run_path).search(query, k=3)
    assert hits["latent"].iloc[0] == names.index("virus")
    from mneme_core.common.embeddings import get_embedder

    def distance(dtype: str) -> float:
        emb = get_embedder("", dtype)
        return 1.0 - float(emb.encode([query])[0] @ get_embedder("", "bfloat16").encode([hits["description"][0]])[0])

    assert hits["distance"].iloc[0] == pytest.approx(distance("bfloat16"), abs=1e-6)
    assert abs(distance("float32") - distance("bfloat16")) > 1e-5  # so the line above tells them apart
    # the config edited afterwards (the index not rebuilt): the query follows the index
    override_section(run_path, "interpret", {"embedding_dtype": "float32"})
    again = open_run(run_path).search(query, k=3)
    assert again["distance"].iloc[0] == pytest.approx(distance("bfloat16"), abs=1e-6)
