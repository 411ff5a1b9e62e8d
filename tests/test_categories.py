"""Categories: taxonomy labels, category → benchmark-subject mapping, UMAP, LanceDB."""

from __future__ import annotations

import numpy as np
import pytest
from _planted import build_planted_run

from mneme_core import interp
from mneme_core.common.embeddings import get_embedder
from mneme_core.interp import categories
from mneme_core.interp.categories import (
    load_taxonomies,
    load_taxonomy,
    map_categories,
    umap_coords,
)
from mneme_core.run.reader import open_run

BIO = [
    "viruses infecting host cells",
    "gene expression and DNA replication",
    "cell membranes and mitochondria",
    "bacteria and the immune response",
]
LAW = [
    "statutes passed by the legislature",
    "court rulings and judges",
    "lawsuits, attorneys and legal liability",
    "constitutional rights and case law",
]


def test_builtin_taxonomies_and_label_files(tmp_path):
    mmlu = load_taxonomy("mmlu")
    assert len(mmlu) == 57 and ("high_school_biology", "high school biology") in mmlu
    safety = dict(load_taxonomy("safety"))
    assert {"toxicity", "deception", "harmful compliance", "refusal"} <= set(safety)
    f = tmp_path / "mine.txt"
    f.write_text("# my labels\nchemistry: molecules and reactions\npoetry\n")
    assert load_taxonomy(str(f)) == [("chemistry", "chemistry: molecules and reactions"), ("poetry", "poetry")]
    j = tmp_path / "mine.json"
    j.write_text('["a_b", "c"]')
    assert [lab for lab, _ in load_taxonomies([str(j), str(f)])] == ["a_b", "c", "chemistry", "poetry"]
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        load_taxonomy("no-such-taxonomy")


def test_map_categories_puts_biology_and_law_under_the_right_subjects():
    subjects = [lab for lab, _ in load_taxonomy("mmlu")]
    mapping = map_categories(BIO + LAW, subjects, get_embedder())
    bio_like = {
        "virology",
        "high_school_biology",
        "college_biology",
        "medical_genetics",
        "anatomy",
        "clinical_knowledge",
        "college_medicine",
        "professional_medicine",
        "nutrition",
    }
    law_like = {"professional_law", "jurisprudence", "international_law", "high_school_government_and_politics"}
    assert all(mapping[d] in bio_like for d in BIO), mapping
    assert all(mapping[d] in law_like for d in LAW), mapping
    assert map_categories([], subjects, get_embedder()) == {}


def test_umap_coords_handle_tiny_and_small_n():
    rng = np.random.default_rng(0)
    assert umap_coords(np.zeros((0, 8), np.float32)).shape == (0, 2)
    assert np.all(umap_coords(rng.normal(size=(1, 8)).astype(np.float32)) == 0)
    few = umap_coords(rng.normal(size=(3, 8)).astype(np.float32))
    assert few.shape == (3, 2) and np.isfinite(few).all() and np.ptp(few[:, 0]) > 0


def test_categories_stage_labels_maps_and_indexes(tmp_path):
    run_path = tmp_path / "run"
    cfg, _, (tok, x, src, cc, names) = build_planted_run(run_path)
    interp.run_stage(cfg, run_path, progress=False)
    metrics = categories.run_stage(cfg, run_path, progress=False)
    assert metrics["n_categorised"] == len(names)
    lat = open_run(run_path).latents.set_index("latent")
    labels = {lab for lab, _ in load_taxonomies(cfg.categories.taxonomies)}
    described = lat[lat["description"].notna()]
    assert set(described["category"]) <= labels
    assert lat.loc[names.index("law"), "category"] == "law"  # the default taxonomy is MNEME's own topics
    assert lat.loc[names.index("astronomy"), "category"] == "astronomy"
    assert np.isfinite(described[["umap_x", "umap_y"]].to_numpy()).all()
    assert lat.loc[[10, 11], "category"].isna().all()  # dead latents: no description, no category
    table = categories.import_lancedb().connect(str(run_path / "lancedb")).open_table("descriptions").to_pandas()
    assert sorted(table["latent"]) == sorted(described.index)
    assert set(table.columns) >= {"latent", "description", "category", "vector"}
    # a re-run replaces the index instead of keeping every earlier version beside it
    data = run_path / "lancedb" / "descriptions.lance" / "data"
    categories.run_stage(cfg, run_path, progress=False)
    categories.run_stage(cfg, run_path, progress=False)
    assert len(list(data.iterdir())) == 1
    again = categories.import_lancedb().connect(str(run_path / "lancedb")).open_table("descriptions").to_pandas()
    assert sorted(again["latent"]) == sorted(table["latent"])
