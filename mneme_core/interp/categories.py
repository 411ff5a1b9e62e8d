"""The categories stage: a short semantic label per described latent, a 2-D map, search.

- Label: an LLM labeler when ``categories.labeler = llm`` (the interpret section's
  backend), otherwise the nearest label of the configured taxonomies by embedding
  similarity (built-ins ``topics``, ``mmlu`` — the 57 MMLU subjects — and ``safety``; or
  label files). What is embedded (``categories.source``): by default the text of each
  latent's top-activating windows (``window_vectors``: activation-weighted mean of the
  window embeddings), because what a latent fires on says more than an offline,
  token-list description; or the description itself.
- Map: UMAP 2-D coordinates of the description embeddings (small n handled without UMAP).
- Search: description embeddings into LanceDB (``lancedb/``, table ``descriptions``).

``map_categories`` maps final category names to benchmark subjects by embedding
similarity; the evaluation stage calls it only after categories are fixed, so nothing
about the benchmark leaks into the labels.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mneme_core.common.config import StudyConfig
from mneme_core.common.embeddings import Embedder, get_embedder
from mneme_core.common.lance import LANCE_TABLE, drop_old_versions, import_lancedb
from mneme_core.run.reader import open_run
from mneme_core.run.store import drop_latent_columns, merge_latent_columns

BUILTIN_TAXONOMIES = {
    "topics": "topics.txt",
    "safety": "safety_behaviours.txt",
    "mmlu": "mmlu_subjects.txt",
}
UMAP_MIN_POINTS = 12


# --------------------------------------------------------------------------- taxonomies


def _parse_labels(text: str) -> list[tuple[str, str]]:
    """(label, text to embed) from a label file: one label per line, optional ': gloss',
    '#' comments; underscores read as spaces."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        label, _, gloss = line.partition(":")
        label = label.strip()
        readable = label.replace("_", " ")
        out.append((label, f"{readable}: {gloss.strip()}" if gloss.strip() else readable))
    return out


def load_taxonomy(name_or_path: str) -> list[tuple[str, str]]:
    """Labels of a built-in taxonomy (``topics``, ``safety``, ``mmlu``) or of a file (.txt as above,
    or .json: a list of labels or a {label: gloss} mapping)."""
    if name_or_path in BUILTIN_TAXONOMIES:
        text = resources.files("mneme_core.data").joinpath(BUILTIN_TAXONOMIES[name_or_path]).read_text()
        return _parse_labels(text)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"taxonomy {name_or_path!r} is neither a built-in ({', '.join(BUILTIN_TAXONOMIES)}) nor a file; "
            f"fix categories.taxonomies"
        )
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return [
                (str(k), f"{str(k).replace('_', ' ')}: {v}" if v else str(k).replace("_", " ")) for k, v in data.items()
            ]
        return [(str(x), str(x).replace("_", " ")) for x in data]
    return _parse_labels(path.read_text())


def load_taxonomies(names: Sequence[str]) -> list[tuple[str, str]]:
    seen, out = set(), []
    for name in names:
        for label, text in load_taxonomy(name):
            if label not in seen:
                seen.add(label)
                out.append((label, text))
    if not out:
        raise ValueError(f"the taxonomies {list(names)} hold no labels")
    return out


# --------------------------------------------------------------------------- labelling


def nearest_labels(
    vecs: np.ndarray, labels: Sequence[tuple[str, str]], embedder: Embedder
) -> tuple[list[str], np.ndarray]:
    """Nearest taxonomy label for each (L2-normalised) vector, and its cosine similarity."""
    if len(vecs) == 0:
        return [], np.zeros(0, np.float32)
    lab = embedder.encode([text for _, text in labels])
    sims = vecs @ lab.T
    best = sims.argmax(1)
    return [labels[i][0] for i in best], sims[np.arange(len(vecs)), best]


def category_subject_similarity(
    categories: Sequence[str], subjects: Sequence[str], embedder: Embedder | None = None
) -> pd.DataFrame:
    """Cosine similarity of every category (rows) to every subject (columns)."""
    embedder = embedder or get_embedder()
    cat = embedder.encode([c.replace("_", " ") for c in categories])
    sub = embedder.encode([s.replace("_", " ") for s in subjects])
    return pd.DataFrame(cat @ sub.T, index=list(categories), columns=list(subjects))


def map_categories(
    categories: Sequence[str], subjects: Sequence[str], embedder: Embedder | None = None
) -> dict[str, str]:
    """Each category name → the benchmark subject nearest to it by embedding similarity.

    Call it only once categories are final (no leakage from the benchmark
    into the labels). Subject names may use underscores (``high_school_biology``).
    """
    if not len(subjects):
        raise ValueError("map_categories needs at least one benchmark subject")
    uniq = list(dict.fromkeys(categories))
    if not uniq:
        return {}
    sims = category_subject_similarity(uniq, subjects, embedder)
    return {c: str(sims.columns[int(np.argmax(sims.loc[c].to_numpy()))]) for c in uniq}


def window_vectors(
    contexts: pd.DataFrame, latents: Sequence[int], n_windows: int, embedder: Embedder, progress: bool = False
) -> np.ndarray:
    """One unit vector per latent: the mean of its top ``n_windows`` window embeddings,
    weighted by each window's peak activation (zeros for a latent without windows).

    Identical windows (several latents firing on one passage) are embedded once.
    """
    top = contexts[(contexts["kind"] == "top") & (contexts["rank"] < n_windows)]
    top = top[top["latent"].isin(set(int(x) for x in latents))]
    texts = ["".join(map(str, toks)).strip() for toks in top["tokens"]]
    unique = list(dict.fromkeys(texts))
    vecs = embedder.encode(unique, progress=progress, desc="categories: embed windows")
    row_of = {t: i for i, t in enumerate(unique)}
    out = np.zeros((len(latents), embedder.dim), np.float64)
    index = {int(lat): i for i, lat in enumerate(latents)}
    weights = np.maximum(top["max_act"].to_numpy(np.float64), 0.0)
    for lat, text, w in zip(top["latent"].to_numpy(), texts, weights):
        out[index[int(lat)]] += w * vecs[row_of[text]]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _llm_labels(
    cfg: StudyConfig, run_path: Path, latents: Sequence[int], descriptions: Sequence[str], progress: bool
) -> list[str]:
    from mneme_core.interp.cache import AnswerCache, prompt_hash
    from mneme_core.interp.clients import FatalLLMError, LLMError, make_backend
    from mneme_core.interp.prompts import label_messages, parse_description
    from mneme_core.interp.runner import Meter, run_jobs

    backend = make_backend(cfg.interpret)
    if backend is None:  # the offline explainer
        raise ValueError(
            "categories.labeler = llm needs an LLM: set interpret.explainer to openai or transformers "
            "(with base_url / model), or use labeler: taxonomy"
        )
    cache = AnswerCache(run_path / "interp_cache")
    namespace = f"label-{backend.name}"

    def label(job: tuple[int, str]) -> str:
        latent, description = job
        messages = label_messages(description)
        key = prompt_hash([messages, backend.name])
        hit = cache.get(namespace, latent, key)
        if hit is not None:
            return hit["label"]
        text = parse_description(backend.chat(messages, max_tokens=16).text)
        text = re.sub(r"[.\s]+$", "", text).lower()
        words = text.split()
        if not words:
            raise LLMError(f"latent {latent}: the labeler gave no label")
        text = " ".join(words[:3])
        cache.put(namespace, latent, key, {"label": text})
        return text

    done, failed = run_jobs(
        list(zip(latents, descriptions)),
        label,
        concurrency=backend.concurrency,
        meter=Meter(),
        desc="categories (llm)",
        progress=progress,
        abort_on=(FatalLLMError,),
    )
    if failed:
        raise LLMError(
            f"{len(failed)} latents got no label (first error: {failed[0][1]}); answers so far are cached, re-run"
        )
    got = {job[0]: lab for job, lab in done}
    return [got[lat] for lat in latents]


# --------------------------------------------------------------------------- map + search index


def umap_coords(vecs: np.ndarray, n_neighbors: int = 15, seed: int = 0, progress: bool = False) -> np.ndarray:
    """2-D coordinates. UMAP's neighbour graph means little on a dozen points (and its
    JIT warm-up costs tens of seconds), so below ``UMAP_MIN_POINTS`` the top principal
    axes (or zeros) give a map that is still honest about the geometry."""
    n = len(vecs)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < UMAP_MIN_POINTS:
        centred = vecs - vecs.mean(0, keepdims=True)
        if n == 1 or not np.any(centred):
            return np.zeros((n, 2), np.float32)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        out = np.zeros((n, 2), np.float32)
        k = min(2, len(s))
        out[:, :k] = u[:, :k] * s[:k]
        return out
    import umap

    # its epochs are the slow part on a big study; UMAP's own bar, with rate and ETA added
    bar = {"desc": "categories: umap", "disable": not progress, "bar_format": "{l_bar}{bar}{r_bar}"}
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, n - 1)),
        metric="cosine",
        random_state=seed,
        n_jobs=1,
        tqdm_kwds=bar,
    )
    return reducer.fit_transform(vecs).astype(np.float32)


def write_lancedb(run_path: Path, df: pd.DataFrame, vecs: np.ndarray) -> None:
    """Replace the ``descriptions`` table (overwrite is atomic in LanceDB: a new version; the
    old ones are then dropped, so a re-run does not grow the run folder)."""
    import pyarrow as pa

    lancedb = import_lancedb()
    db = lancedb.connect(str(run_path / "lancedb"))
    dim = vecs.shape[1]
    table = pa.table(
        {
            "latent": pa.array(df["latent"].astype("int64").to_numpy()),
            "description": pa.array(df["description"].astype(str).tolist(), pa.string()),
            "category": pa.array(df["category"].astype(str).tolist(), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1).astype(np.float32)), dim),
        }
    )
    drop_old_versions(db.create_table(LANCE_TABLE, table, mode="overwrite"))


def _label_context_diffs(
    cfg: StudyConfig, run_path: Path, embedder: Embedder, progress: bool
) -> tuple[pd.DataFrame | None, bool]:
    """The dictionary-free baseline's input: per-context activation differences, each
    context labelled from its text with the study's taxonomies (the same vocabulary and
    embedder the latents get, so the two predictions are compared on equal terms).
    The differences come from the activation store; a run published without it relabels
    the texts its earlier file kept (so a new taxonomy reaches the baseline too).

    Returns the labelled contexts (None when there are none) and whether their labels are
    those the earlier file held (a relabelling that changed nothing)."""
    from mneme_core.analysis.actdiff import CONTEXT_DIFFS_FILE, context_diffs
    from mneme_core.collect.activations import INDEX, ActivationStore
    from mneme_core.collect.models import load_tokenizer
    from mneme_core.common.atomic import write_parquet

    try:  # the earlier labels: what a store-less run relabels, and what tells if labels changed
        earlier = pd.read_parquet(run_path / CONTEXT_DIFFS_FILE) if (run_path / CONTEXT_DIFFS_FILE).is_file() else None
    except (OSError, ValueError):  # a damaged earlier file is rewritten below where the store allows
        earlier = None
    if (run_path / "activations" / INDEX).is_file():
        diffs = context_diffs(
            ActivationStore(run_path / "activations"), load_tokenizer(cfg.models.base), progress=progress
        )
    elif earlier is not None:
        diffs = earlier.drop(columns=["category", "category_similarity"], errors="ignore")
    else:
        return None, False
    vecs = embedder.encode(diffs["text"].tolist(), progress=progress, desc="categories: embed contexts")
    labels, sims = nearest_labels(vecs, load_taxonomies(cfg.categories.taxonomies), embedder)
    diffs["category"], diffs["category_similarity"] = labels, sims.astype(np.float64)
    write_parquet(run_path / CONTEXT_DIFFS_FILE, diffs)
    same = (
        earlier is not None
        and "category" in earlier.columns
        and earlier["context_id"].tolist() == diffs["context_id"].tolist()
        and earlier["category"].astype(str).tolist() == diffs["category"].astype(str).tolist()
    )
    return diffs, same


def _topic_profile(cfg: StudyConfig, run_path: Path, contexts: pd.DataFrame | None, same: bool, progress: bool) -> str:
    """Each latent's share of activation per topic (``analysis.topics``), from the
    activation store and the contexts just labelled. A run without its store keeps its
    earlier profile while the contexts' labels are unchanged (the profile is a function
    of the two), and loses it when they changed. It is a view: if it cannot be measured
    here (no GPU for a run that names one, too little memory), the stage goes on without
    it and says why. Returns what happened."""
    from mneme_core.analysis.topics import TOPIC_COLUMNS, TOPICS_FILE
    from mneme_core.collect.activations import INDEX

    path = run_path / TOPICS_FILE
    if contexts is None or not (run_path / "activations" / INDEX).is_file():
        if contexts is not None and same and _readable(path):
            return "kept (contexts' labels unchanged)"
        why = "it needs the activation store"
    else:
        try:
            _measure_topic_profile(cfg, run_path, contexts, progress)
            return "measured"
        except (RuntimeError, OSError, MemoryError, ValueError) as exc:  # torch's out-of-memory is a RuntimeError
            why = f"{type(exc).__name__}: {exc}"
    path.unlink(missing_ok=True)  # an earlier profile is not of these labels, or not of this dictionary
    drop_latent_columns(run_path, TOPIC_COLUMNS)
    return f"not measured: {why}"


def _readable(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path)
    except (OSError, ValueError):
        return False
    return True


def _measure_topic_profile(cfg: StudyConfig, run_path: Path, contexts: pd.DataFrame, progress: bool) -> None:
    import torch

    from mneme_core.analysis.contexts import default_batch_size, special_token_ids
    from mneme_core.analysis.topics import TOPICS_FILE, fires_most_in, topic_mass, topic_shares
    from mneme_core.collect.activations import ActivationStore
    from mneme_core.collect.models import load_tokenizer, resolve_device
    from mneme_core.common.atomic import write_parquet
    from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

    store = ActivationStore(run_path / "activations")
    model = BatchTopKCrossCoder.from_pretrained(run_path / "crosscoder")
    device = resolve_device(cfg.models.device)
    model = model.to(device).eval()
    names, topic_of_label = np.unique(contexts["category"].astype(str).to_numpy(), return_inverse=True)
    # the contexts were read from this store, so its ids cover theirs
    topic_of_context = np.full(int(store.context_ids.max()) + 1, -1, dtype=np.int64)
    topic_of_context[contexts["context_id"].to_numpy(np.int64)] = topic_of_label

    def encode(x_B2d: Any) -> Any:
        return model.encode(x_B2d.to(device, torch.float32), use_threshold=True)

    mass_KF, tokens_K = topic_mass(
        store,
        encode,
        topic_of_context,
        len(names),
        special_token_ids(load_tokenizer(cfg.models.base)),
        batch_size=default_batch_size(model.n_latents, cfg.contexts.window),
        progress=progress,
    )
    shares = topic_shares(mass_KF, names, tokens_K)
    write_parquet(run_path / TOPICS_FILE, shares)
    merge_latent_columns(run_path, fires_most_in(shares, model.n_latents))


def run_stage(cfg: StudyConfig, run_path: Path, *, progress: bool = True) -> dict[str, Any]:
    run_path = Path(run_path)
    t0 = time.perf_counter()
    ccfg = cfg.categories
    latents = open_run(run_path).latents
    if "description" not in latents.columns:
        raise ValueError(f"{run_path}: latents have no descriptions yet; run the interpret stage first")
    described = latents[latents["description"].notna() & (latents["description"].astype(str) != "")]
    described = described[["latent", "description"]].reset_index(drop=True)
    embedder = get_embedder(cfg.interpret.embedding_model, cfg.interpret.embedding_dtype)
    vecs = embedder.encode(
        described["description"].astype(str).tolist(), progress=progress, desc="categories: embed descriptions"
    )
    if ccfg.labeler == "llm":
        cats = _llm_labels(cfg, run_path, described["latent"].tolist(), described["description"].tolist(), progress)
        sims = np.full(len(cats), np.nan)
    elif ccfg.source == "contexts":
        contexts = open_run(run_path).contexts()
        if contexts.empty:
            raise ValueError(
                f"{run_path}: no contexts.parquet; run the contexts stage (or set categories.source: description)"
            )
        win = window_vectors(contexts, described["latent"].tolist(), ccfg.context_windows, embedder, progress)
        has = np.linalg.norm(win, axis=1) > 0
        cats, sims = nearest_labels(win[has], load_taxonomies(ccfg.taxonomies), embedder)
        described = described[has].reset_index(drop=True)
        vecs = vecs[has]
    else:
        cats, sims = nearest_labels(vecs, load_taxonomies(ccfg.taxonomies), embedder)
    xy = umap_coords(vecs, ccfg.umap_neighbors, ccfg.seed, progress)
    described["category"] = pd.Series(cats, dtype="string")
    described["category_similarity"] = sims.astype(np.float64)
    described["umap_x"], described["umap_y"] = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    merge_latent_columns(run_path, described[["latent", "category", "category_similarity", "umap_x", "umap_y"]])
    write_lancedb(run_path, described, vecs)
    contexts, same = _label_context_diffs(cfg, run_path, embedder, progress)
    topics = _topic_profile(cfg, run_path, contexts, same, progress)
    counts = described["category"].value_counts()
    return {
        "n_context_diffs": None if contexts is None else int(len(contexts)),
        "topic_profile": topics,
        "labeler": ccfg.labeler,
        "n_categorised": int(len(described)),
        "n_categories": int(len(counts)),
        "top_categories": {str(k): int(v) for k, v in counts.head(10).items()},
        "embedding_model": embedder.name,
        "embedding_dtype": embedder.dtype,
        "seconds": round(time.perf_counter() - t0, 2),
    }
