"""What this machine's processor does fast, measured rather than read from a CPU-flag list.

bfloat16 is the precision to collect and train in on a GPU and on a CPU with native bf16
(AVX512-BF16 or AMX: a bf16 matmul runs ~3x float32 there). On a CPU without it, PyTorch
emulates bf16 and the same matmul runs at a few percent of float32, so the choice has to be
made per machine.
"""

from __future__ import annotations

import functools
import time

import torch

# a slice of the demo cross-coder's encoder matmul (batch x 2d) @ (2d x F) at d = 576: small,
# because on a CPU without native bf16 the probe itself runs at that slow rate
_ROWS, _INNER, _COLS = 256, 1152, 1152


def _matmul_seconds(dtype: torch.dtype, repeats: int = 3) -> float:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(_ROWS, _INNER, generator=gen).to(dtype)
    b = torch.randn(_INNER, _COLS, generator=gen).to(dtype)
    a @ b  # warm-up: kernel selection and page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster a bfloat16 matmul runs than a float32 one on this CPU (about
    3 with native bf16, well under 1 without). Measured once per process: ~0.05 s, or ~2 s without native bf16."""
    return _matmul_seconds(torch.float32) / _matmul_seconds(torch.bfloat16)
