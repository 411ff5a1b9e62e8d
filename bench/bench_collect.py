"""Activation collection speed: the truncated forward (layers 0..L only) vs a full forward.

SmolLM2-135M-Instruct (resolved offline; converted once from the packaged GGUF), layer 16
of 30, fp32 and bf16, batches of 8 contexts x 128 tokens. "full" is what a naive collector
does: the whole model with the LM head and ``output_hidden_states=True``. Tokens/s are per
model; a paired collection runs two models, so its rate is about half.

    python bench/bench_collect.py [--layer 16] [--batch 8] [--ctx 128] [--reps 5]

Timings on a shared CPU are noisy: the script prints the median and the spread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mneme_core.collect.models import load_model, truncated_forward
from mneme_core.common.config import ModelSpec


def _rate(fn, n_tokens: int, reps: int) -> tuple[float, float, float]:
    fn()  # warm-up (allocations, kernels)
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        rates.append(n_tokens / (time.perf_counter() - t))
    return statistics.median(rates), min(rates), max(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layer", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} layer {args.layer}; "
        f"batch {args.batch} x {args.ctx} tokens; median of {args.reps} (min-max)"
    )
    for dtype in args.dtypes.split(","):
        model, tok = load_model(ModelSpec(source="named", path=args.model, dtype=dtype))
        ids = torch.randint(0, len(tok), (args.batch, args.ctx), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        n = ids.numel()
        with torch.inference_mode():
            trunc = _rate(lambda: truncated_forward(model, ids, mask, args.layer), n, args.reps)
            full = _rate(
                lambda: model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False),
                n,
                args.reps,
            )
        print(
            f"{dtype:>9}: truncated {trunc[0]:8.0f} tok/s ({trunc[1]:.0f}-{trunc[2]:.0f})   "
            f"full {full[0]:8.0f} tok/s ({full[1]:.0f}-{full[2]:.0f})   ratio {trunc[0] / full[0]:.2f}x"
        )


if __name__ == "__main__":
    main()
