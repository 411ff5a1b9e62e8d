"""Development scenario 12: bfloat16 for the cross-coder's encoder and the sentence embedder,
with the activations still collected in float32.

Scenario 9 (``bench/dev_precision.py``) ran collection *and* the encoder in bf16 and kept
the demo in float32 because bf16 collection moved the activations by 1.4%, over its 1% bar.
The two other bf16 savings never touch the activations: the encoder matmul of training
(``training.dtype``; 1.3x faster there) and the sentence embedder that scores descriptions
and places latents and contexts in categories (``interpret.embedding_dtype``; 1.9x on this
CPU's embedding of the pair's windows, unit vectors within cosine 0.996 of float32's). The
build is compute-bound at the float32 matmul rate, and these two stages are a third of it.

This copies the development pair's float32 run (``bench/dev_rmu.py``; not the demo), keeps
its activation store and benchmark scores, and re-runs every stage from ``train`` with both
settings at bfloat16. The rule, written into this script before its first run: the demo
build takes ``precision = "auto"`` with the meaning "the encoder and the embedder in bf16
where this CPU runs bf16 natively, collection always float32" if the bf16 run

- meets every quality bound (FVE >= 0.8 on both halves, dead <= 20% on held-out tokens,
  L0/k in 0.8-1.25, median decoder cosine of shared latents >= 0.8),
- has FVE within 0.005 of the float32 run's on both halves, and
- gives a MNEME F1 and a dictionary-free baseline F1 no lower than the float32 run's;

otherwise the demo stays float32. Nothing else is chosen here.

    python bench/dev_bf16_dictionary.py [--work ~/.cache/mneme/dev-rmu]

About 10 minutes on 2 cores once the float32 pair is built (it is built first if missing,
about 25 minutes). It needs a CPU with native bf16; elsewhere bf16 runs many times slower.
"""

from __future__ import annotations

import json
from pathlib import Path

from dev_precision import ROW_HEAD, quality, row
from dev_rmu import pair_from_command_line
from dev_seeds import summary

from mneme_core.common.hardware import cpu_bf16_speedup
from mneme_core.run.reader import open_run
from mneme_core.run.replica import replica

FVE_TOLERANCE = 0.005
TIMED = ("train", "interpret", "categories")  # the stages bf16 changes here


def bf16_copy(run: Path, work: Path) -> Path:
    """A copy of the float32 run with the encoder and the embedder in bf16, re-run from
    ``train`` (resumes a finished copy)."""
    bf16 = {"interpret": {"embedding_dtype": "bfloat16"}, "training": {"dtype": "bfloat16"}}
    return replica(run, work / "bf16-dictionary", bf16)


def seconds(run: Path) -> dict:
    stages = open_run(run).manifest["stages"]
    return {s: round(stages[s]["seconds"], 1) for s in TIMED}


def main() -> None:
    work, pair = pair_from_command_line(__doc__)
    print(f"bf16 matmul on this CPU: {cpu_bf16_speedup():.2f}x float32")
    runs = {"float32": pair, "bfloat16": bf16_copy(pair, work)}
    rows = {p: summary(run) | quality(run) | {"seconds": seconds(run)} for p, run in runs.items()}
    f32, b16 = rows["float32"], rows["bfloat16"]
    print(f"T = {f32['T']}")
    print(f"precision | {ROW_HEAD} | seconds {'/'.join(TIMED)}")
    for p, r in rows.items():
        print(f"{p:9s} | {row(r)} | {r['seconds']}")
    for p, r in rows.items():
        print(f"{p}: P = {r['P']}; act-diff set {r['actdiff_set']}; attributed {r['attributed_categories']}")
    f1 = lambda r, key: r[key]["f1"] or 0.0  # noqa: E731 - None (nothing predicted) counts as 0
    adopt = (
        b16["bounds_met"]
        and all(abs(a - b) <= FVE_TOLERANCE for a, b in zip(b16["fve"], f32["fve"]))
        and f1(b16, "mneme") >= f1(f32, "mneme")
        and f1(b16, "actdiff") >= f1(f32, "actdiff")
    )
    print(f"rule: {'auto: the encoder and the embedder in bf16 where native' if adopt else 'stay float32'}")
    (work / "bf16_dictionary.json").write_text(json.dumps({"runs": rows, "adopt": adopt}, indent=1, default=str))


if __name__ == "__main__":
    main()
