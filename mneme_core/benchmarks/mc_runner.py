"""Multiple-choice benchmark runner: log-likelihood of each answer option, per category.

For each question the model reads a prompt and we sum the log-probabilities of each
option's tokens (only the option tokens are scored); the highest-scoring option is the
model's answer. Per category we report accuracy with a 95% Wilson interval.

Why it is fast on a CPU: the question prefix is shared. Instead of running
``prefix + option`` once per option, every question is *packed* into one sequence
``prefix, option_1, ..., option_n`` with a 4D attention mask in which each option sees the
prefix and its own earlier tokens only, and position ids that restart after the prefix
for every option. One forward pass scores all options, with the prefix computed once.
Sequences are left-padded, so all option tokens sit at the end and the LM head runs only
on the last few positions (``logits_to_keep``), not on the whole prompt.
``packing="auto"`` checks on the first question that packing reproduces the plain
per-option computation for this model and falls back to plain rows if it does not (an
architecture that ignores custom masks or position ids).

Resumable: per-question log-likelihoods of each finished category are cached atomically in
``cache_dir/<model fingerprint>/<category>.json``, keyed by a hash of the token ids, so a
killed run restarts at the first unfinished category and a changed dataset, tokenizer or
prompt style never reuses stale results.

Data: MMLU-style rows from `datasets` — a hub name (``cais/mmlu`` with subset ``all``,
``TIGER-Lab/MMLU-Pro``) for users online, or local csv/json/jsonl/parquet files — with a
question, the choices (a list; a JSON string in CSV; or columns A, B, C, ...), the answer
(an index or a letter) and a subject/category.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mneme_core.benchmarks.loaders import BenchmarkError, validate_benchmark
from mneme_core.common.atomic import atomic_write_json

Style = Literal["cloze", "letters"]
Packing = Literal["auto", "tree", "plain"]
LETTERS = "ABCDEFGHIJKLMNOP"
_LOCAL_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question; ``answer`` indexes ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    category: str


# --------------------------------------------------------------------------- data


def _choices(row: dict[str, Any]) -> list[str]:
    raw = row.get("choices", row.get("options"))
    if raw is None:
        raw = [row[c] for c in LETTERS if c in row and row[c] is not None]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BenchmarkError('choices given as a string must be a JSON list, e.g. ["a", "b"]') from exc
    return [str(c) for c in raw]


def _answer(row: dict[str, Any], n: int) -> int:
    raw = row.get("answer_index", row.get("answer"))
    if isinstance(raw, str):
        raw = raw.strip()
        if raw.isdigit():
            raw = int(raw)
        elif len(raw) == 1 and raw.upper() in LETTERS[:n]:
            raw = LETTERS.index(raw.upper())
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool) and 0 <= int(raw) < n:
        return int(raw)
    raise BenchmarkError(f"answer {raw!r} is not an option index (0..{n - 1}) or letter (A..{LETTERS[n - 1]})")


def item_from_row(row: dict[str, Any], default_category: str = "all") -> MCItem:
    """Convert one MMLU / MMLU-Pro style row to an MCItem (errors name the field to fix)."""
    if not str(row.get("question", "")).strip():
        raise BenchmarkError("a question row has no 'question' text")
    choices = _choices(row)
    if len(choices) < 2:
        raise BenchmarkError(f"question {row['question'][:60]!r} has {len(choices)} choice(s); need at least 2")
    category = str(row.get("subject") or row.get("category") or default_category)
    return MCItem(str(row["question"]), tuple(choices), _answer(row, len(choices)), category)


def load_mc_items(
    source: str | Path | Sequence[str | Path],
    *,
    subset: str = "",
    split: str = "test",
    categories: Sequence[str] | None = None,
    limit_per_category: int = 0,
) -> list[MCItem]:
    """MC questions from local files or a hub dataset, optionally filtered and capped.

    ``source`` is one or more local csv/json/jsonl/parquet paths (offline), or a hub
    dataset name such as ``cais/mmlu`` (``subset="all"``) for users with hub access.
    """
    import datasets

    paths = [Path(s) for s in ([source] if isinstance(source, (str, Path)) else source)]
    if all(p.exists() for p in paths):
        kinds = {p.suffix.lower() for p in paths}
        if len(kinds) != 1 or next(iter(kinds)) not in _LOCAL_BUILDERS:
            raise BenchmarkError(
                f"question files must share one type of {sorted(_LOCAL_BUILDERS)}; got {sorted(kinds)}"
            )
        ds = datasets.load_dataset(_LOCAL_BUILDERS[kinds.pop()], data_files=[str(p) for p in paths], split="train")
    elif len(paths) == 1 and not paths[0].suffix:
        ds = datasets.load_dataset(str(source), subset or None, split=split)
    else:
        missing = [str(p) for p in paths if not p.exists()]
        raise BenchmarkError(f"question file(s) not found: {missing}")
    wanted = set(categories) if categories else None
    items: list[MCItem] = []
    per_cat: dict[str, int] = {}
    for i, row in enumerate(ds):
        try:
            item = item_from_row(row)
        except BenchmarkError as exc:
            raise BenchmarkError(f"{source} row {i}: {exc}") from exc
        if wanted is not None and item.category not in wanted:
            continue
        if limit_per_category and per_cat.get(item.category, 0) >= limit_per_category:
            continue
        per_cat[item.category] = per_cat.get(item.category, 0) + 1
        items.append(item)
    if not items:
        raise BenchmarkError(f"{source} gave no questions (check the split and the category filter)")
    return items


def build_prompt(item: MCItem, style: Style = "cloze") -> tuple[str, list[str]]:
    """Prompt and the continuations scored after it.

    ``cloze`` scores each option's text (works for small models that cannot follow the
    lettered format); ``letters`` lists the options and scores " A", " B", ... (MMLU's
    original format; one token per option).
    """
    if style == "cloze":
        return f"Question: {item.question}\nAnswer:", [f" {c}" for c in item.choices]
    if style == "letters":
        lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        return f"{item.question}\n{lines}\nAnswer:", [f" {LETTERS[i]}" for i in range(len(item.choices))]
    raise ValueError(f"unknown prompt style {style!r}; use 'cloze' or 'letters'")


def encode_item(tokenizer: Any, item: MCItem, style: Style = "cloze") -> tuple[list[int], list[list[int]]]:
    """Prefix token ids and each option's token ids.

    Options are tokenised in context (``prefix + option``, keeping the tokens after the
    prefix) so word-boundary merges match what the model sees in running text; where the
    tokenizer merges across the boundary we fall back to the option alone.
    """
    prefix, conts = build_prompt(item, style)
    prefix_ids = list(tokenizer(prefix)["input_ids"])
    if not prefix_ids:
        raise BenchmarkError("the tokenizer gave no tokens for a prompt; nothing predicts the first option token")
    options = []
    for cont in conts:
        full = list(tokenizer(prefix + cont)["input_ids"])
        if full[: len(prefix_ids)] == prefix_ids and len(full) > len(prefix_ids):
            options.append(full[len(prefix_ids) :])
        else:
            options.append(list(tokenizer(cont, add_special_tokens=False)["input_ids"]))
        if not options[-1]:
            raise BenchmarkError(f"option {cont!r} tokenises to nothing")
    return prefix_ids, options


# --------------------------------------------------------------------------- scoring


Row = tuple[list[int], list[list[int]]]  # (prefix ids, option ids per option)


def _pack(
    rows: Sequence[Row], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[tuple[int, int]]], int]:
    """Left-padded packed batch: ids_BT, pos_BT, seg_BT (-1 pad, 0 prefix, i+1 option i),
    option spans (start, length) per row, and the number of trailing positions to score."""
    lengths = [len(p) + sum(len(o) for o in opts) for p, opts in rows]
    T = max(lengths)
    keep = max(sum(len(o) for o in opts) for _, opts in rows) + 1
    ids_BT = torch.full((len(rows), T), pad_id, dtype=torch.long)
    pos_BT = torch.zeros((len(rows), T), dtype=torch.long)
    seg_BT = torch.full((len(rows), T), -1, dtype=torch.long)
    spans: list[list[tuple[int, int]]] = []
    for b, ((prefix, opts), n) in enumerate(zip(rows, lengths)):
        at = T - n
        P = len(prefix)
        ids_BT[b, at : at + P] = torch.tensor(prefix)
        pos_BT[b, at : at + P] = torch.arange(P)
        seg_BT[b, at : at + P] = 0
        at += P
        row_spans = []
        for i, opt in enumerate(opts):
            L = len(opt)
            ids_BT[b, at : at + L] = torch.tensor(opt)
            pos_BT[b, at : at + L] = torch.arange(P, P + L)
            seg_BT[b, at : at + L] = i + 1
            row_spans.append((at, L))
            at += L
        spans.append(row_spans)
    return ids_BT, pos_BT, seg_BT, spans, keep


def _tree_mask(seg_BT: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B,1,T,T) mask: causal, and an option token sees the prefix + its own option."""
    T = seg_BT.shape[1]
    causal_TT = torch.ones(T, T, dtype=torch.bool).tril()
    same_BTT = seg_BT[:, :, None] == seg_BT[:, None, :]
    key_prefix_BTT = (seg_BT == 0)[:, None, :]
    allowed = causal_TT & (same_BTT | key_prefix_BTT)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class _Scorer:
    """Runs packed batches through one model; remembers whether it takes logits_to_keep."""

    def __init__(self, model: Any, pad_id: int):
        self.model = model.eval()
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.trim = True

    @torch.no_grad()
    def logliks(self, rows: Sequence[Row]) -> list[list[float]]:
        """Summed log-probability of every option of every row."""
        ids_BT, pos_BT, seg_BT, spans, keep = _pack(rows, self.pad_id)
        T = ids_BT.shape[1]
        tree = any(len(opts) > 1 for _, opts in rows)
        mask = _tree_mask(seg_BT, self.dtype) if tree else (seg_BT >= 0).long()
        kwargs = dict(
            input_ids=ids_BT.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos_BT.to(self.device),
            use_cache=False,
        )
        logits = None
        if self.trim:
            try:
                logits = self.model(**kwargs, logits_to_keep=keep).logits
            except TypeError:  # an architecture without logits_to_keep: score all positions
                self.trim = False
        if logits is None:
            logits = self.model(**kwargs).logits
        logits_BKV = logits[:, -keep:]
        logp_BKV = torch.log_softmax(logits_BKV.float(), dim=-1)
        offset = T - keep
        out = []
        for b, ((_prefix, opts), row_spans) in enumerate(zip(rows, spans)):
            last_prefix = row_spans[0][0] - 1
            scores = []
            for (start, L), opt in zip(row_spans, opts):
                pred_pos = torch.tensor([last_prefix] + list(range(start, start + L - 1)), device=self.device) - offset
                scores.append(float(logp_BKV[b, pred_pos, torch.tensor(opt, device=self.device)].sum()))
            out.append(scores)
        return out


def _plain_rows(rows: Sequence[Row]) -> tuple[list[Row], list[int]]:
    flat = [(p, [o]) for p, opts in rows for o in opts]
    return flat, [len(opts) for _, opts in rows]


def _score_rows(scorer: _Scorer, rows: Sequence[Row], tree: bool) -> list[list[float]]:
    if tree:
        return scorer.logliks(rows)
    flat, counts = _plain_rows(rows)
    lls = [s[0] for s in scorer.logliks(flat)]
    out, at = [], 0
    for n in counts:
        out.append(lls[at : at + n])
        at += n
    return out


def _tree_agrees(scorer: _Scorer, row: Row) -> bool:
    """Does packed scoring reproduce plain per-option scoring on this model?"""
    try:
        tree = _score_rows(scorer, [row], True)[0]
    except Exception as exc:  # noqa: BLE001 - any failure means: use plain rows
        warnings.warn(f"packed option scoring failed on this model ({exc}); scoring options one by one", stacklevel=2)
        return False
    plain = _score_rows(scorer, [row], False)[0]
    tol = 1e-3 if scorer.dtype == torch.float32 else 5e-2
    ok = all(abs(a - b) <= tol * max(1.0, abs(b)) for a, b in zip(tree, plain))
    if not ok:
        warnings.warn(
            "packed option scoring disagrees with plain scoring on this model; scoring options one by one", stacklevel=2
        )
    return ok


# --------------------------------------------------------------------------- caching


def model_fingerprint(model: Any) -> str:
    """Cheap identity of a model's weights: config plus per-tensor sums and a strided sample.

    Why not a full hash: hashing an 8B model would cost longer than scoring a category.
    Any real weight change (fine-tuning, unlearning) moves the float64 sums.
    """
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 1024)
            h.update(f"{name}{tuple(t.shape)}{float(torch.sum(flat, dtype=torch.float64)):.10e}".encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_file(cache_dir: Path, fingerprint: str, category: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", category)[:60]
    return cache_dir / fingerprint / f"{slug}-{hashlib.sha1(category.encode()).hexdigest()[:8]}.json"


def _tokens_hash(encoded: Sequence[Row]) -> str:
    return hashlib.sha256(json.dumps(encoded).encode()).hexdigest()


# --------------------------------------------------------------------------- public API


def score_questions(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    *,
    batch_size: int = 8,
    style: Style = "cloze",
    length_normalize: bool = False,
    packing: Packing = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    desc: str = "mc",
) -> pd.DataFrame:
    """Per-question results: ``category, index, answer, pred, correct, logliks``.

    ``index`` numbers questions within their category in input order. ``pred`` is the
    argmax of the summed option log-likelihood (divided by the option's character length
    when ``length_normalize``, lm-eval's ``acc_norm``); ties go to the lowest option index.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be > 0")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    scorer = _Scorer(model, pad_id)
    by_cat: dict[str, list[MCItem]] = {}
    for item in items:
        by_cat.setdefault(item.category, []).append(item)
    cache = Path(cache_dir) if cache_dir is not None else None
    fingerprint = model_fingerprint(model) if cache is not None else ""
    tree: bool | None = {"tree": True, "plain": False}.get(packing)
    if packing not in ("auto", "tree", "plain"):
        raise ValueError(f"packing must be 'auto', 'tree' or 'plain', got {packing!r}")

    records = []
    bar = tqdm(total=len(items), desc=desc, unit="q", disable=not progress, dynamic_ncols=True)
    for category in sorted(by_cat):
        cat_items = by_cat[category]
        encoded = [encode_item(tokenizer, it, style) for it in cat_items]
        key = _tokens_hash(encoded)
        file = _cache_file(cache, fingerprint, category) if cache is not None else None
        lls: list[list[float]] | None = None
        if file is not None and file.is_file():
            saved = json.loads(file.read_text())
            if saved.get("tokens_hash") == key:
                lls = saved["logliks"]
        if lls is None:
            if tree is None:
                tree = _tree_agrees(scorer, encoded[0])
            order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + sum(map(len, encoded[i][1]))))
            lls = [[] for _ in encoded]
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                for i, ll in zip(idx, _score_rows(scorer, [encoded[i] for i in idx], tree)):
                    lls[i] = ll
                bar.update(len(idx))
            if file is not None:
                atomic_write_json(file, {"category": category, "tokens_hash": key, "style": style, "logliks": lls})
        else:
            bar.update(len(cat_items))
        for i, (item, ll) in enumerate(zip(cat_items, lls)):
            score = np.asarray(ll, dtype=np.float64)
            if length_normalize:
                score = score / np.array([max(1, len(c)) for c in build_prompt(item, style)[1]])
            pred = int(np.argmax(score))
            records.append(
                {
                    "category": category,
                    "index": i,
                    "answer": item.answer,
                    "pred": pred,
                    "correct": pred == item.answer,
                    "logliks": list(ll),
                }
            )
    bar.close()
    return pd.DataFrame.from_records(records, columns=["category", "index", "answer", "pred", "correct", "logliks"])


def wilson_interval(k: int | np.ndarray, n: int | np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes in n; unlike Wald it stays inside [0, 1] and is
    sensible at 0 or n successes (common for small categories)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def accuracy_table(per_question: pd.DataFrame) -> pd.DataFrame:
    """Per-category ``accuracy, n_questions, ci_low, ci_high`` from per-question results."""
    g = per_question.groupby("category", sort=True)["correct"].agg(["sum", "count"]).reset_index()
    low, high = wilson_interval(g["sum"].to_numpy(), g["count"].to_numpy())
    return pd.DataFrame(
        {
            "category": g["category"],
            "accuracy": g["sum"] / g["count"],
            "n_questions": g["count"].astype("int64"),
            "ci_low": low,
            "ci_high": high,
        }
    )


def run_mc_benchmark(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Per-category accuracy with a 95% Wilson interval:
    ``category, accuracy, n_questions, ci_low, ci_high``. kwargs go to ``score_questions``."""
    return accuracy_table(
        score_questions(model, tokenizer, items, batch_size=batch_size, cache_dir=cache_dir, **kwargs)
    )


def score_pair(
    base: tuple[Any, Any],
    ft: tuple[Any, Any],
    items: Sequence[MCItem],
    *,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """Benchmark table for a (model, tokenizer) pair before and after the intervention.

    Besides ``category, score_before, score_after, n_questions`` it carries the paired
    counts ``n_lost`` (right before, wrong after) and ``n_gained`` so the degraded-set test
    can use exact McNemar on the same questions, and Wilson intervals for both scores.
    """
    before = score_questions(
        *base, items, batch_size=batch_size, cache_dir=cache_dir, progress=progress, desc="base", **kwargs
    )
    after = score_questions(
        *ft, items, batch_size=batch_size, cache_dir=cache_dir, progress=progress, desc="changed", **kwargs
    )
    both = before.merge(after, on=["category", "index"], suffixes=("_b", "_a"))
    both["lost"] = both["correct_b"] & ~both["correct_a"]
    both["gained"] = ~both["correct_b"] & both["correct_a"]
    g = (
        both.groupby("category", sort=True)
        .agg(
            k_before=("correct_b", "sum"),
            k_after=("correct_a", "sum"),
            n_questions=("index", "count"),
            n_lost=("lost", "sum"),
            n_gained=("gained", "sum"),
        )
        .reset_index()
    )
    table = pd.DataFrame(
        {
            "category": g["category"],
            "score_before": g["k_before"] / g["n_questions"],
            "score_after": g["k_after"] / g["n_questions"],
            "n_questions": g["n_questions"],
            "n_lost": g["n_lost"],
            "n_gained": g["n_gained"],
        }
    )
    for name, k in (("before", g["k_before"]), ("after", g["k_after"])):
        low, high = wilson_interval(k.to_numpy(), g["n_questions"].to_numpy())
        table[f"ci_{name}_low"], table[f"ci_{name}_high"] = low, high
    return validate_benchmark(table, "runner results")
