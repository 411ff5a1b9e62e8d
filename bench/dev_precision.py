"""Does collecting and training in bfloat16 change what MNEME finds? Development scenario 2's
pair (RMU on the physical sciences, ``bench/dev_rmu.py``; not the demo) studied twice from
the same RMU delta, text and scores: once in float32 (the run ``dev_rmu.py`` builds) and once
with collection's forward pass and the cross-coder's encoder in bfloat16
(``activations.forward_dtype``, ``training.dtype``).

Why ask: on a CPU with native bf16 (AVX512-BF16, AMX) a bf16 forward of SmolLM2 runs ~1.9x
float32 and the encoder matmul ~3x, which is the difference between the demo's rebuild
fitting its hour on 2 cores or not. The rule, written before the first run of this bench:
the demo takes ``precision = "auto"`` (bf16 where native, ``demo.study.DemoSizes``) if the
bf16 study here

- meets every quality bound (FVE >= 0.8 on both halves, dead <= 20% on held-out tokens,
  L0/k in 0.8-1.25, median decoder cosine of shared latents >= 0.8),
- keeps the activations within 1% of float32's (relative error per half, same tokens), and
- gives a MNEME F1 and a dictionary-free baseline F1 no lower than the float32 study's;

otherwise the demo stays float32. Nothing else is chosen here.

    python bench/dev_precision.py [--work ~/.cache/mneme/dev-rmu]

About 25 minutes on 2 cores for the float32 build if it is not there yet, then ~8 for the
bf16 study (it needs a CPU with native bf16: elsewhere bf16 runs many times slower).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from dev_rmu import build_pair
from dev_seeds import summary

from mneme_core.collect.activations import ActivationStore
from mneme_core.collect.models import cache_root
from mneme_core.common.config import load_config
from mneme_core.common.hardware import cpu_bf16_speedup
from mneme_core.demo.study import DEV, FULL, study_config
from mneme_core.run.pipeline import run_study
from mneme_core.run.reader import open_run


def bf16_study(work: Path) -> Path:
    """The development pair's study with ``precision = "bfloat16"`` in its own run folder."""
    cfg = study_config(
        "rmu",
        run_dir=work / "runs" / "rmu-bf16",
        delta=work / "deltas" / "rmu.safetensors",
        corpus=work / "text" / "neutral.jsonl",
        benchmark=work / "scores" / "rmu.csv",
        sizes=replace(FULL, precision="bfloat16"),
        scenario=DEV,
    )
    # scenario 9 as it was measured: collection and encoder in bf16, the embedder float32
    # (the demo's precision now covers the encoder and the embedder only, scenario 12b)
    cfg["activations"]["forward_dtype"] = "bfloat16"
    cfg["interpret"]["embedding_dtype"] = "float32"
    return run_study(load_config(cfg))


def activation_error(a: Path, b: Path) -> dict:
    """‖a − b‖ / ‖b‖ per model half over the tokens both stores kept (matched by context and
    position: the massive-token rule reads the base's norm, which bf16 can move), and how
    many tokens only one of them kept."""
    sa, sb = ActivationStore(a / "activations"), ActivationStore(b / "activations")
    keys = [s.context_ids.astype(np.int64) * 1_000_000 + s.positions for s in (sa, sb)]
    common, ia, ib = np.intersect1d(keys[0], keys[1], assume_unique=True, return_indices=True)
    xa, xb = sa.read()[torch.from_numpy(ia)], sb.read()[torch.from_numpy(ib)]
    return {
        "relative_error": [round(float((xa[:, m] - xb[:, m]).norm() / xb[:, m].norm()), 5) for m in range(2)],
        "tokens_compared": int(len(common)),
        "kept_by_one_only": int(len(keys[0]) + len(keys[1]) - 2 * len(common)),
    }


def costs(run: Path) -> dict:
    """Seconds of the stages precision changes, and collection's and training's rates."""
    stages = open_run(run).manifest["stages"]
    return {
        "collect_s": stages["collect"]["seconds"],
        "collect_tokens_per_s": stages["collect"]["metrics"].get("tokens_per_s"),
        "train_s": stages["train"]["seconds"],
        "train_tokens_per_s": stages["train"]["metrics"].get("tokens_per_s"),
    }


def quality(run: Path) -> dict:
    """The bounds the rule reads, with the median shared-latent cosine from the latents table."""
    r = open_run(run)
    lat = r.latents
    shared = lat[(lat["label_by_norm"] == "shared") & (lat["n_fires"] > 0)]
    train = r.stage_metrics("train")
    ev = r.evaluation["metrics"]
    return {
        "median_shared_cos": round(float(shared["dec_cos"].median()), 3),
        "actdiff": {k: ev["activation_diff"][k] for k in ("accuracy", "precision", "f1")},
        "actdiff_set": ev["activation_diff"]["set"],
        "bounds_met": bool(
            min(train["fve_base"], train["fve_ft"]) >= 0.8
            and train["dead_fraction"] <= 0.2
            and 0.8 <= train["l0_over_k"] <= 1.25
            and float(shared["dec_cos"].median()) >= 0.8
        ),
    }


ROW_HEAD = "FVE base   ft | dead  L0/k  cos | amp sup | MNEME acc prec   F1 | act-diff F1"


def row(r: dict) -> str:
    """One study's columns under ``ROW_HEAD`` (from ``summary`` and ``quality``)."""
    m = {k: "   —" if v is None else f"{v:4.2f}" for k, v in r["mneme"].items()}
    ad = "   —" if r["actdiff"]["f1"] is None else f"{r['actdiff']['f1']:4.2f}"
    return (
        f"   {r['fve'][0]:.3f} {r['fve'][1]:.3f} | {r['dead_held_out']:4.1%} {r['l0_over_k']:4.2f} "
        f"{r['median_shared_cos']:.3f} | {r['amplified']:3d} {r['suppressed']:3d} | {m['accuracy']} "
        f"{m['precision']} {m['f1']} |        {ad}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=cache_root() / "dev-rmu")
    args = ap.parse_args()
    work = args.work.resolve()
    speedup = cpu_bf16_speedup()
    print(f"bf16 matmul on this CPU: {speedup:.2f}x float32")
    runs = {"float32": build_pair(work, precision="float32")[0], "bfloat16": bf16_study(work)}
    rows = {p: summary(run) | quality(run) | costs(run) for p, run in runs.items()}
    error = activation_error(runs["bfloat16"], runs["float32"])
    f32, b16 = rows["float32"], rows["bfloat16"]
    print(f"T = {f32['T']}")
    print(f"precision | {ROW_HEAD} | collect  train")
    for p, r in rows.items():
        print(f"{p:9s} | {row(r)} | {r['collect_s']:6.0f}s {r['train_s']:5.0f}s")
    for p, r in rows.items():
        print(f"{p}: P = {r['P']}; act-diff set {r['actdiff_set']}; attributed {r['attributed_categories']}")
    print(
        f"activations, bf16 vs float32: relative error (base, ft) {error['relative_error']} over "
        f"{error['tokens_compared']:,} tokens; {error['kept_by_one_only']} kept by one precision only"
    )
    f1 = lambda r, key: r[key]["f1"] or 0.0  # noqa: E731 - None (nothing predicted) counts as 0
    verdict = (
        b16["bounds_met"]
        and max(error["relative_error"]) <= 0.01
        and f1(b16, "mneme") >= f1(f32, "mneme")
        and f1(b16, "actdiff") >= f1(f32, "actdiff")
    )
    print(f"rule: {'bf16 where native (precision auto)' if verdict else 'stay float32'}")
    out = {"bf16_matmul_speedup": speedup, "runs": rows, "activation_error": error, "adopt_bf16": verdict}
    (work / "precision.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
