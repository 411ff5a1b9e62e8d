"""Does more neutral text raise recall? Development scenario 2's pair (RMU on the physical
sciences, ``bench/dev_rmu.py``; not the demo) studied on twice the demo's neutral corpus.

Scenarios 5, 6 and 8 found the demo's misses to be latents that are not there: the
categories RMU hurt but MNEME missed hold 0-3 attributed latents, and a larger dictionary
divided the change instead of finding more of it. The remaining suspect is the data: 200k
neutral tokens, of which ~2% (here) to ~8% (the demo) come from the forget domain, so a
latent of a small forget category fires on few tokens and rarely clears the evidence floor
and the significance test. This bench collects ``--tokens`` (default 400k) neutral tokens
from the same neutral split (the first 200k are the demo-size corpus) and runs the study at
every other setting the default, then prints it beside the 200k float32 study.

The rule, written before its first run: the larger corpus is recommended (README, for
users with the time) if it meets every quality bound (FVE >= 0.8 on both halves, dead <=
20% on held-out tokens, L0/k in 0.8-1.25, median shared cosine >= 0.8) and gives a MNEME
F1 above the 200k study's with precision >= 0.5. The demo would take it only if its rebuild
then still fit the hour on 2 cores, which at ~5.5 more minutes of collection per model it
cannot; so either way this is a finding, not a change of the demo.

    python bench/dev_corpus.py [--work ~/.cache/mneme/dev-rmu] [--tokens 400000]

About 20 minutes on 2 cores (after ``dev_rmu.py`` or ``dev_precision.py`` built the pair).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from dev_precision import ROW_HEAD, quality, row
from dev_seeds import summary

from mneme_core.collect.models import cache_root
from mneme_core.common.config import load_config
from mneme_core.demo.build import neutral_documents, text_split
from mneme_core.demo.split import write_jsonl
from mneme_core.demo.study import DEV, FULL, study_config
from mneme_core.run.pipeline import run_study


def larger_corpus_study(work: Path, tokens: int) -> Path:
    """The development pair's study on ``tokens`` neutral tokens, in its own run folder."""
    corpus = work / "text" / f"neutral-{tokens}.jsonl"
    if not corpus.is_file():
        _, split = text_split(DEV)
        write_jsonl(corpus, neutral_documents(split, tokens))
    cfg = study_config(
        "rmu",
        run_dir=work / "runs" / f"rmu-{tokens}",
        delta=work / "deltas" / "rmu.safetensors",
        corpus=corpus,
        benchmark=work / "scores" / "rmu.csv",
        sizes=replace(FULL, corpus_tokens=tokens),
        scenario=DEV,
    )
    return run_study(load_config(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=cache_root() / "dev-rmu")
    ap.add_argument("--tokens", type=int, default=400_000)
    args = ap.parse_args()
    work = args.work.resolve()
    base_run = work / "runs" / "rmu"
    if not (base_run / "run.json").is_file():
        raise SystemExit(f"no development run at {base_run}: run `python bench/dev_rmu.py --work {args.work}` first")
    runs = {FULL.corpus_tokens: base_run, args.tokens: larger_corpus_study(work, args.tokens)}
    rows = {n: summary(run) | quality(run) for n, run in runs.items()}
    print(f"T = {rows[FULL.corpus_tokens]['T']}")
    print(f"tokens  | {ROW_HEAD} | attributed")
    for n, r in rows.items():
        print(f"{n:7,d} | {row(r)} | {r['attributed_categories']}")
    for n, r in rows.items():
        print(f"{n:,} tokens: P = {r['P']}; act-diff set {r['actdiff_set']}")
    small, large = rows[FULL.corpus_tokens], rows[args.tokens]
    better = (
        large["bounds_met"]
        and (large["mneme"]["f1"] or 0.0) > (small["mneme"]["f1"] or 0.0)
        and (large["mneme"]["precision"] or 0.0) >= 0.5
    )
    print(f"rule: {'recommend the larger corpus' if better else 'no recommendation'}")
    out = {"runs": {str(n): r for n, r in rows.items()}, "recommend": better}
    (work / f"corpus-{args.tokens}.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
