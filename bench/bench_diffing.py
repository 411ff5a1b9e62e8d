"""Latent scaling for all latents vs one encode pass over the same tokens.

Closed-form latent scaling needs no per-latent pass — per batch it is the
encode, a sparse decode, and one sparse scatter of f_ij·y_i (O(N·k·d)). Target: the whole
of latent scaling (which includes its own encode) costs ≤ 2× one encode pass.

    python bench/bench_diffing.py                       # d=576, F=4608, k=100, 16k tokens
    python bench/bench_diffing.py --latents 18432 --tokens 8192

The cross-coder is untrained (random encoder, decoder = encoder transposed) with its
threshold set so ~k latents fire per token, which is all the cost depends on.
"""

from __future__ import annotations

import argparse
import time

import torch

from mneme_core.analysis.diffing import latent_table
from mneme_core.common.config import DiffingConfig
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder


def _model(d: int, n_latents: int, k: int, x_N2d: torch.Tensor) -> BatchTopKCrossCoder:
    """An untrained cross-coder whose inference threshold keeps ~k latents per token."""
    model = BatchTopKCrossCoder(d, n_latents, k, seed=0).eval()
    with torch.no_grad():
        sample = x_N2d[:512]
        model.fit_normalization(sample)
        f = model.encode(sample, use_threshold=False)  # BatchTopK: k per token on average
        kept = (f * model.selection_weights())[f > 0]
        model.threshold.fill_(float(kept.min()))
    return model


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--latents", type=int, default=4608)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    x = torch.randn(args.tokens, 2, args.d)
    model = _model(args.d, args.latents, args.k, x)
    cfg = DiffingConfig(batch_size=args.batch)

    @torch.no_grad()
    def encode_pass() -> None:
        for s in range(0, args.tokens, args.batch):
            model.encode(x[s : s + args.batch], use_threshold=True)

    encode_pass()  # warm-up
    t_encode = _time(encode_pass, args.repeats)
    t_scaling = _time(lambda: latent_table(model, x, cfg), args.repeats)
    with torch.no_grad():
        l0 = float((model.encode(x[: args.batch], use_threshold=True) > 0).sum(1).float().mean())

    print(
        f"latent scaling bench: d={args.d} latents={args.latents} k={args.k} (measured L0 {l0:.0f}) "
        f"tokens={args.tokens} batch={args.batch} threads={torch.get_num_threads()}"
    )
    print(f"  one encode pass          {t_encode:8.3f} s  ({args.tokens / t_encode:,.0f} tok/s)")
    print(
        f"  latent scaling, all {args.latents} latents, 8 betas "
        f"{t_scaling:8.3f} s  ({args.tokens / t_scaling:,.0f} tok/s)"
    )
    print(f"  ratio scaling / encode   {t_scaling / t_encode:8.2f}x   (target <= 2x)")


if __name__ == "__main__":
    main()
