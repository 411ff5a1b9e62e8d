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


def test_share_of_activation_by_topic_equals_a_per_token_sum_and_follows_the_store(tmp_path):
    """Each latent's share per topic is its activation summed token by token over the
    contexts of that topic (BOS never counting), over its whole activation; without the
    store the profile stays only while the contexts' labels stay."""
    import shutil

    import pandas as pd
    import torch
    from _planted import BOS_LATENT, write_planted_store_run

    from mneme_core.analysis import contexts as contexts_stage
    from mneme_core.analysis.topics import MAX_TOPICS, MIN_SHARE, TOPICS_FILE
    from mneme_core.common.config import load_config

    run_path = tmp_path / "run"
    cfg, (tok, x, src, cc, names) = write_planted_store_run(run_path)
    contexts_stage.run_stage(cfg, run_path, progress=False)
    interp.run_stage(cfg, run_path, progress=False)
    assert categories.run_stage(cfg, run_path, progress=False)["topic_profile"] == "measured"

    labelled = pd.read_parquet(run_path / "context_diffs.parquet").set_index("context_id")["category"]
    with torch.no_grad():
        f = cc.encode(x, use_threshold=True).double().numpy()
    want: dict[tuple[int, str], float] = {}
    counted: dict[str, int] = {}
    for i in range(len(x)):
        if src.token_ids[i] == tok.bos_token_id:
            continue
        topic = labelled[int(src.doc_ids[i])]  # the planted store's packed contexts are its documents
        counted[topic] = counted.get(topic, 0) + 1
        for j in np.flatnonzero(f[i]):
            want[(int(j), topic)] = want.get((int(j), topic), 0.0) + f[i, j]
    got = pd.read_parquet(run_path / TOPICS_FILE)
    assert sorted(got["latent"].unique()) == list(range(len(names)))  # the two silent latents have no row
    for j, rows in got.groupby("latent"):
        total = sum(v for (lat, _), v in want.items() if lat == j)
        expected = sorted(((v / total, t) for (lat, t), v in want.items() if lat == j), reverse=True)
        expected = [(s, t) for s, t in expected if s >= MIN_SHARE][:MAX_TOPICS]
        assert rows["category"].tolist() == [t for _, t in expected]
        np.testing.assert_allclose(rows["share"], [s for s, _ in expected], rtol=1e-9)
    # BOS carries most of the BOS latent's raw activation; counted, it would move its shares
    assert (f[src.token_ids == tok.bos_token_id, BOS_LATENT] > 0).all()
    lat = open_run(run_path).latents.set_index("latent")
    firsts = got.drop_duplicates("latent").set_index("latent")
    assert lat.loc[firsts.index, "fires_most_in"].tolist() == firsts["category"].tolist()
    assert lat.loc[[10, 11], "fires_most_in"].isna().all()
    total = sum(counted.values())  # the topic's share of the counted (non-BOS) tokens
    np.testing.assert_allclose(got["corpus_share"], [counted[t] / total for t in got["category"]], rtol=1e-12)

    if not torch.cuda.is_available():  # a view that cannot be measured here does not fail the stage
        gpu = load_config({**cfg.to_dict(), "models": {**cfg.to_dict()["models"], "device": "cuda"}})
        assert categories.run_stage(gpu, run_path, progress=False)["topic_profile"].startswith("not measured")
        assert not (run_path / TOPICS_FILE).exists() and "fires_most_in" not in open_run(run_path).latents
        assert categories.run_stage(cfg, run_path, progress=False)["topic_profile"] == "measured"

    # a published run has no store: the same labels keep the profile, other labels drop it
    shutil.move(run_path / "activations", tmp_path / "store-away")
    assert categories.run_stage(cfg, run_path, progress=False)["topic_profile"].startswith("kept")
    assert pd.read_parquet(run_path / TOPICS_FILE).equals(got)
    other = load_config({**cfg.to_dict(), "categories": {**cfg.to_dict()["categories"], "taxonomies": ["safety"]}})
    assert categories.run_stage(other, run_path, progress=False)["topic_profile"].startswith("not measured")
    assert not (run_path / TOPICS_FILE).exists()
    assert "fires_most_in" not in open_run(run_path).latents.columns
    assert open_run(run_path).topics(0).empty
