"""Cross-coder training speed on this machine, against the matmul FLOP limit (docs/DIFFING.md).

Prints, for d=576, k=100, batch 2,048 and F = 4,608 and 18,432:
- the fp32 (and bf16) matmul rate measured now, at the encoder's shape;
- training tokens/s of the real trainer (``train_crosscoder``) with the sparse path and
  with the dense-autograd baseline, and each as a fraction of its FLOP limit:
  sparse ≈ 4·d·F FLOPs/token (the encoder matmul; everything else is O(B·k·d)),
  dense ≈ 20·d·F (encoder and decoder, forward and both gradients);
- held-out FVE of both paths after the same tokens (the maths is the same, so they
  should agree to noise).

Timings on a shared CPU are noisy: run it on a quiet machine for figures to quote.

    python bench/bench_training.py [--steps 8] [--shapes 4608,18432] [--threads N]
    python bench/bench_training.py --device cuda --d 4096 --shapes 32768,131072 --steps 30

On a GPU the first steps include CUDA's start-up: give it more steps than on the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

from mneme_core.common.config import CrossCoderConfig, TrainingConfig
from mneme_core.dictionary.synthetic import planted_activations
from mneme_core.dictionary.training import train_crosscoder

K, B = 100, 2048
TARGETS = {4608: 3000, 18432: 900}  # tokens/s asked for on the 2-core CPU
REFERENCE = {4608: 2064, 18432: 361}  # a public reference trainer, measured on this CPU


def matmul_gflops(D: int, F: int, dtype: torch.dtype, device: str, repeats: int = 3, rows: int = B) -> float:
    """Best-of-N rate of the encoder-shaped matmul (rows × 2d) @ (2d × F)."""
    x = torch.randn(rows, 2 * D, device=device).to(dtype)
    w = (torch.randn(2 * D, F, device=device) * 0.03).to(dtype)
    x @ w
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        x @ w
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * 2 * D * F / best / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(x: torch.Tensor, F: int, steps: int, sparse: bool, dtype: str, device: str) -> dict:
    cfg = TrainingConfig(
        batch_size=B,
        n_tokens=B * steps,
        warmup_steps=2,
        val_fraction=0.1,
        dead_tokens=10_000_000,
        sparse=sparse,
        dtype=dtype,
    )
    _, metrics = train_crosscoder(x, cfg, CrossCoderConfig(n_latents=F, k=K), progress=False, device=device)
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="training steps per run (batch 2,048)")
    ap.add_argument("--shapes", default="4608,18432", help="comma-separated numbers of latents")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave the default)")
    ap.add_argument("--d", type=int, default=576, help="model width (576: SmolLM2-135M; 4096: a 7B model)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    D = args.d
    if args.threads:
        torch.set_num_threads(args.threads)
    n_val = int(B * args.steps / 9) + 1
    x, _ = planted_activations(B * args.steps + n_val, D, 1024, seed=0, mean_active=48)
    x = x.to(args.device)  # on a GPU, batches gathered on the CPU would time the CPU
    print(
        f"torch {torch.__version__} on {_device_name(args.device)}, {torch.get_num_threads()} threads; d={D} k={K} batch={B}, "
        f"{args.steps} steps per run on planted activations (1,024 features)"
    )
    if args.device == "cpu":
        print("timings are from a shared CPU unless you made sure it was quiet")
    print()
    for F in (int(s) for s in args.shapes.split(",")):
        fp32 = matmul_gflops(D, F, torch.float32, args.device)
        # fewer rows on a CPU: bf16 can be very slow there
        bf16 = matmul_gflops(D, F, torch.bfloat16, args.device, rows=256 if args.device == "cpu" else B)
        sparse = train(x, F, args.steps, sparse=True, dtype="float32", device=args.device)
        dense = train(x, F, args.steps, sparse=False, dtype="float32", device=args.device)
        lim_sparse = fp32 * 1e9 / (4 * D * F)
        lim_dense = fp32 * 1e9 / (20 * D * F)
        print(f"F = {F:,}")
        print(f"  matmul fp32 {fp32:7.1f} GFLOP/s   bf16 {bf16:7.1f} GFLOP/s (encoder shape)")
        print(
            f"  sparse path {sparse['tokens_per_s']:8,.0f} tokens/s = {sparse['tokens_per_s'] / lim_sparse:5.1%} of its "
            f"limit {lim_sparse:,.0f} (4dF){_against(F, D, args.device)}"
        )
        print(
            f"  dense path  {dense['tokens_per_s']:8,.0f} tokens/s = {dense['tokens_per_s'] / lim_dense:5.1%} of its "
            f"limit {lim_dense:,.0f} (20dF)   speed-up sparse/dense {sparse['tokens_per_s'] / dense['tokens_per_s']:.2f}x"
        )
        print(
            f"  FVE after {sparse['tokens_seen']:,} tokens: sparse base {sparse['fve_base']:.4f} ft {sparse['fve_ft']:.4f}"
            f" | dense base {dense['fve_base']:.4f} ft {dense['fve_ft']:.4f}"
        )
        if bf16 > 1.2 * fp32:
            low = train(x, F, args.steps, sparse=True, dtype="bfloat16", device=args.device)
            print(
                f"  bf16 encoder {low['tokens_per_s']:8,.0f} tokens/s, FVE base {low['fve_base']:.4f} ft {low['fve_ft']:.4f}"
            )
        else:
            print(f"  bf16 not used: its matmul is {bf16 / fp32:.2f}x fp32 here (no native bf16 on this processor)")
        print()


def _against(F: int, D: int, device: str) -> str:
    """The 2-core CPU's target and reference, where this run measures the same case."""
    if device != "cpu" or D != 576 or F not in TARGETS:
        return ""
    return f"   target {TARGETS[F]:,}  reference {REFERENCE[F]:,}"


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "the CPU"


if __name__ == "__main__":
    main()
